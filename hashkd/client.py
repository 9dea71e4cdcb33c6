"""A Python client of the search service's REST API (``hashkd serve``), on httpx.

It speaks HTTP only (no import of ``service`` or ``indexes``)::

    from hashkd.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        hits = client.search("cat.jpg", k=5, filter={"label": ["cat", "lynx"]})
        for hit in hits:
            print(hit.id, hit.distance, hit.metadata)
        more = client.similar(hits[0].id, k=5)

Images are given as a path, the file's bytes or a PIL image. In cluster mode every write
answers with a consistency token; the client keeps the newest one it received and sends it
with every later request (``X-Consistency-Token``), so its reads see its own writes through
any replica (read-your-writes). :attr:`Client.consistency_token` shows it; pass it to another
client (``consistency_token=``) to hand the guarantee on. Every error answer of the
server raises :class:`ApiError` with its HTTP ``status_code`` and the server's ``detail``;
a server that cannot be reached raises :class:`ClientError`. Both are ``ValueError``s, so the
``hashkd`` command line reports them in one line.
"""

from __future__ import annotations

import email.utils
import io
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ImageInput = str | os.PathLike[str] | bytes | Any  # a path, encoded bytes or a PIL image
#: The header a cluster-mode server puts its write timestamps in, and reads take them back from.
TOKEN_HEADER = "X-Consistency-Token"
CodesInput = str | Sequence[str] | bytes | np.ndarray
#: Paths per filtered search of :meth:`Client.stored_paths` (the server takes 1,024 values).
STORED_PATHS_CHUNK = 256
STORED_PATHS_BYTES = 48 * 1024  # the server reads filters of up to 64 KiB


class ClientError(ValueError):
    """The request could not be made or its answer not read (e.g. the server is down)."""


class ApiError(ClientError):
    """The server answered with an error: its HTTP status and its one-sentence ``detail``."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status_code = int(status_code)
        self.detail = detail
        self.method, self.path = method, path
        #: Seconds the server asked to wait before retrying (its ``Retry-After``), if it said.
        self.retry_after = retry_after
        where = f" on {method} {path}" if method else ""
        super().__init__(f"{detail} (HTTP {self.status_code}{where})")


@dataclass(frozen=True)
class Hit:
    """One search result: a stored item and its Hamming distance to the query."""

    id: int
    distance: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """The hits of one query, nearest first (ties by ascending id); iterable and sized."""

    hits: list[Hit]
    bits: int
    took_ms: float
    truncated: bool = False

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index: int) -> Hit:
        return self.hits[index]

    @property
    def ids(self) -> list[int]:
        return [h.id for h in self.hits]


@dataclass(frozen=True)
class Item:
    """A stored item: its code (hex, most significant bit first) and metadata."""

    id: int
    code: str
    metadata: dict[str, Any]
    has_thumbnail: bool
    bits: int | None = None

    @property
    def code_bytes(self) -> bytes:
        return bytes.fromhex(self.code)


@dataclass(frozen=True)
class ItemPage:
    """One page of :meth:`Client.list`; pass ``next_after`` as ``after`` for the next page."""

    items: list[Item]
    next_after: int | None


@dataclass
class AddReport:
    """What :meth:`Client.add_folder` did: files added (with their new ids), files skipped
    because an item with their ``path`` was already stored, and files the server refused."""

    added: dict[str, int] = field(default_factory=dict)  # recorded path -> new id
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # recorded path -> why

    def summary(self) -> str:
        text = f"added {len(self.added)} images, skipped {len(self.skipped)} already stored"
        return text + (f", {len(self.failed)} refused" if self.failed else "")


def image_sources(
    sources: Sequence[str | os.PathLike[str]],
) -> list[tuple[Path, str]]:
    """``(file, recorded path)`` of every image named by ``sources``, in order.

    A folder gives its image files (recursively, sorted, hidden files and folders skipped,
    the extensions of :data:`hashkd.runtime.images.IMG_EXTENSIONS`), each recorded relative to
    that folder (``cats/001.jpg``) -- as ``hashkd encode`` records the files of its data
    folder, so that a folder served from its code set and then added to is not added twice.
    A file is recorded as given (``/`` separators). A missing source raises ``ClientError``.
    """
    from hashkd.runtime.images import is_image_name

    out: list[tuple[Path, str]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if is_image_name(name):
                        file = Path(dirpath) / name
                        out.append((file, file.relative_to(path).as_posix()))
        elif path.is_file():
            out.append((path, path.as_posix()))
        else:
            raise ClientError(f"{str(source)!r} does not exist: expected an image file or a folder")
    return out


def _retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), None when absent."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _hits(rows: list[dict[str, Any]]) -> list[Hit]:
    return [Hit(int(r["id"]), int(r["distance"]), dict(r.get("metadata") or {})) for r in rows]


def _item(row: dict[str, Any]) -> Item:
    return Item(
        id=int(row["id"]),
        code=str(row["code"]),
        metadata=dict(row.get("metadata") or {}),
        has_thumbnail=bool(row.get("has_thumbnail", False)),
        bits=row.get("bits"),
    )


def image_file(image: ImageInput, index: int = 0) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of an image given as a path, bytes or a PIL image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"image{index}", bytes(image), "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes(), "application/octet-stream"
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image: sent as PNG
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return f"image{index}.png", buf.getvalue(), "image/png"
    raise ClientError(
        f"image {index} is a {type(image).__name__}: expected a path, the file's bytes or a PIL image"
    )


def hex_codes(codes: CodesInput) -> list[str]:
    """Codes as hex strings: from hex text, a list of it, packed bytes or a uint8 array."""
    if isinstance(codes, str):
        return [codes]
    if isinstance(codes, (bytes, bytearray)):
        return [bytes(codes).hex()]
    if isinstance(codes, np.ndarray):
        arr = np.atleast_2d(codes)
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise ClientError(
                f"codes must be packed uint8 (n x K/8), got {arr.dtype} of shape {arr.shape}"
            )
        return [row.tobytes().hex() for row in arr]
    return [str(c) for c in codes]


def _search_params(
    k: int | None, radius: int | None, filter: dict[str, Any] | None, offset: int
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if k is not None:
        params["k"] = k
    if radius is not None:
        params["radius"] = radius
    if offset:
        params["offset"] = offset
    if filter:
        params["filter"] = json.dumps(filter)
    return params


class Client:
    """The REST API of one server; a context manager (closes its connection pool)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        consistency_token: str | None = None,
    ) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._token = consistency_token
        self._token_lock = threading.Lock()
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def consistency_token(self) -> str | None:
        """The newest consistency token a write answered (cluster mode), sent with every request."""
        return self._token

    def _keep_token(self, token: str | None) -> None:
        if not token or not token.isdigit():
            return
        with self._token_lock:
            if self._token is None or not self._token.isdigit() or int(token) > int(self._token):
                self._token = token

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self._token
        if token is not None:
            kwargs["headers"] = {**kwargs.get("headers", {}), TOKEN_HEADER: token}
        try:
            response = self._http.request(method, path, **kwargs)
            self._keep_token(response.headers.get(TOKEN_HEADER))
        except httpx.HTTPError as exc:
            raise ClientError(
                f"cannot reach the hashkd server at {self.base_url}: {exc or type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = str(response.json()["detail"])
            except (ValueError, KeyError, TypeError):
                detail = response.text.strip()[:200] or response.reason_phrase
            raise ApiError(
                response.status_code, detail, method, path, retry_after=_retry_after(response)
            )
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path} did not answer JSON") from None

    @staticmethod
    def _result(body: dict[str, Any], rows: list[dict[str, Any]]) -> SearchResult:
        return SearchResult(
            _hits(rows), int(body["bits"]), float(body["took_ms"]), bool(body.get("truncated"))
        )

    def _results(self, body: dict[str, Any]) -> list[SearchResult]:
        return [self._result(body, rows) for rows in body["results"]]

    # -- search -----------------------------------------------------------------------------------
    def search(
        self,
        image: ImageInput,
        k: int | None = None,
        radius: int | None = None,
        filter: dict[str, Any] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """The ``k`` nearest items to an image (or all within ``radius`` bits)."""
        body = self._request(
            "POST",
            "/v1/search",
            files={"image": image_file(image)},
            params=_search_params(k, radius, filter, offset),
        )
        return self._result(body, body["results"])

    def search_batch(
        self,
        images: Sequence[ImageInput],
        k: int | None = None,
        radius: int | None = None,
        filter: dict[str, Any] | None = None,
        offset: int = 0,
    ) -> list[SearchResult]:
        """One result per image, in order (one request)."""
        files = [("images", image_file(img, n)) for n, img in enumerate(images)]
        body = self._request(
            "POST",
            "/v1/search/batch",
            files=files,
            params=_search_params(k, radius, filter, offset),
        )
        return self._results(body)

    def search_codes(
        self,
        codes: CodesInput,
        k: int | None = None,
        radius: int | None = None,
        filter: dict[str, Any] | None = None,
        offset: int = 0,
    ) -> list[SearchResult]:
        """One result per code (hex text, packed bytes or a uint8 n x K/8 array)."""
        payload: dict[str, Any] = {"codes": hex_codes(codes), "offset": offset}
        if k is not None:
            payload["k"] = k
        if radius is not None:
            payload["radius"] = radius
        if filter:
            payload["filter"] = filter
        return self._results(self._request("POST", "/v1/search/codes", json=payload))

    def similar(
        self,
        item_id: int,
        k: int | None = None,
        radius: int | None = None,
        filter: dict[str, Any] | None = None,
        offset: int = 0,
    ) -> SearchResult:
        """Items nearest to a stored item (the item itself excluded)."""
        body = self._request(
            "GET",
            f"/v1/items/{int(item_id)}/similar",
            params=_search_params(k, radius, filter, offset),
        )
        return self._result(body, body["results"])

    # -- items ------------------------------------------------------------------------------------
    def add(
        self,
        images: Sequence[ImageInput] | ImageInput,
        ids: Sequence[int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Add images (one or several); returns their ids once they are durable."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        files = [("images", image_file(img, n)) for n, img in enumerate(images)]
        data: dict[str, str] = {}
        if ids is not None:
            data["ids"] = ",".join(str(int(i)) for i in ids)
        if metadata is not None:
            data["metadata"] = json.dumps(list(metadata))
        return [int(i) for i in self._request("POST", "/v1/items", files=files, data=data)["ids"]]

    def upsert(
        self,
        item_id: int,
        image: ImageInput | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> bool:
        """Create or replace an item's image and/or metadata; returns whether it was created."""
        files = {"image": image_file(image)} if image is not None else None
        data = {"metadata": json.dumps(metadata)} if metadata is not None else None
        if files is None and data is None:
            raise ClientError("upsert needs an image, metadata or both")
        body = self._request("PUT", f"/v1/items/{int(item_id)}", files=files, data=data)
        return bool(body["created"])

    def get(self, item_id: int) -> Item:
        return _item(self._request("GET", f"/v1/items/{int(item_id)}"))

    def delete(self, item_id: int) -> None:
        self._request("DELETE", f"/v1/items/{int(item_id)}")

    def list(self, after: int | None = None, limit: int = 100) -> ItemPage:
        """One page of items in ascending id order (ids above ``after``)."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        body = self._request("GET", "/v1/items", params=params)
        return ItemPage([_item(r) for r in body["items"]], body.get("next_after"))

    def iter_items(self, page_size: int = 1000) -> Iterator[Item]:
        """Every stored item, page by page."""
        after: int | None = None
        while True:
            page = self.list(after=after, limit=page_size)
            yield from page.items
            if page.next_after is None:
                return
            after = page.next_after

    def info(self) -> dict[str, Any]:
        """Models, protocol, bits, index and limits (``GET /v1/info``)."""
        return self._request("GET", "/v1/info")

    # -- adding a folder --------------------------------------------------------------------------
    def stored_paths(self, paths: Sequence[str]) -> dict[str, int]:
        """Which of ``paths`` a stored item has as its metadata ``path``: path -> item id.

        Asked with filtered searches (``{"path": [...]}``, any code as the query), so the cost
        is that of the matching items, not of the collection.
        """
        if not paths:
            return {}
        info = self.info()
        code = "00" * (int(info["bits"]) // 8)
        max_k = int(info.get("limits", {}).get("max_k", 1000))
        found: dict[str, int] = {}
        chunks: list[list[str]] = [[]]
        size = 0
        for p in dict.fromkeys(str(p) for p in paths):
            cost = len(json.dumps(p)) + 2
            if len(chunks[-1]) >= STORED_PATHS_CHUNK or size + cost > STORED_PATHS_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(p)
            size += cost
        for chunk in chunks:
            flt = {"path": chunk}
            offset = 0
            while True:
                (result,) = self.search_codes(code, k=max_k, filter=flt, offset=offset)
                for hit in result:
                    found.setdefault(str(hit.metadata.get("path")), hit.id)
                if len(result) < max_k:
                    break
                offset += max_k
        return found

    def add_folder(
        self,
        sources: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        batch_size: int = 32,
        progress: bool = False,
        retries: int = 8,
        max_wait_s: float = 60.0,
    ) -> AddReport:
        """Add every image of folders and files (:func:`image_sources`) that is not stored yet.

        Each item gets metadata ``{"path": recorded path}``; a file whose path some stored item
        already has is skipped, so a second call (or one after an interruption) adds only
        what is missing. Images go in batches of ``batch_size`` (at most the server's
        ``max_images``); a batch answered 503, or cut off by a lost connection, is retried up
        to ``retries`` times after the server's ``Retry-After`` (else 1, 2, 4 ... s, at most
        ``max_wait_s``), re-checking first which of its files were stored meanwhile. A file
        the server refuses (not an image, too large) is reported in ``failed`` and the rest
        are added. ``progress`` shows a tqdm progress bar.
        """
        from tqdm.auto import tqdm

        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        files = image_sources(sources)
        limits = self.info().get("limits", {})
        batch = max(1, min(int(batch_size), int(limits.get("max_images", batch_size))))
        max_bytes = int(limits.get("max_upload_bytes", 0)) or None
        report = AddReport()
        unique: list[tuple[Path, str]] = []
        seen: set[str] = set()
        for file, rec in files:
            if rec in seen:
                report.skipped.append(rec)  # the same recorded path twice in this call
            else:
                seen.add(rec)
                unique.append((file, rec))
        with tqdm(total=len(unique), desc="adding", unit="img", disable=not progress) as bar:
            for start in range(0, len(unique), batch):
                part = unique[start : start + batch]
                self._add_batch(part, report, max_bytes, retries, max_wait_s)
                bar.update(len(part))
                bar.set_postfix(added=len(report.added), skipped=len(report.skipped))
        return report

    def _add_batch(
        self,
        part: list[tuple[Path, str]],
        report: AddReport,
        max_bytes: int | None,
        retries: int,
        max_wait_s: float,
    ) -> None:
        attempts = 0
        tried: set[str] = set()
        while True:
            stored = self.stored_paths([rec for _, rec in part])
            todo: list[tuple[Path, str]] = []
            for file, rec in part:
                if rec in stored:
                    if rec in tried:  # stored by an attempt whose answer was lost
                        report.added[rec] = stored[rec]
                    else:
                        report.skipped.append(rec)
                    continue
                try:
                    size = file.stat().st_size
                except OSError as exc:
                    report.failed[rec] = f"cannot be read: {exc.strerror or exc}"
                    continue
                if max_bytes is not None and size > max_bytes:
                    report.failed[rec] = (
                        f"is {size} bytes: over the server's limit of {max_bytes} bytes per image"
                    )
                    continue
                todo.append((file, rec))
            if not todo:
                return
            tried.update(rec for _, rec in todo)
            try:
                ids = self.add([file for file, _ in todo], metadata=[{"path": r} for _, r in todo])
            except ApiError as exc:
                if exc.status_code == 503 and attempts < retries:
                    attempts += 1
                    wait = exc.retry_after if exc.retry_after is not None else 2.0 ** (attempts - 1)
                    time.sleep(min(max_wait_s, wait))
                    continue
                if exc.status_code in (413, 415, 422):
                    if len(todo) == 1:
                        report.failed[todo[0][1]] = exc.detail
                    else:  # find the file(s) refused: one by one
                        for one in todo:
                            self._add_batch([one], report, max_bytes, retries, max_wait_s)
                    return
                raise
            except ClientError:
                if attempts >= retries:
                    raise
                attempts += 1
                time.sleep(min(max_wait_s, 2.0 ** (attempts - 1)))
                continue
            except OSError as exc:  # a file vanished or cannot be read: one by one
                if len(todo) == 1:
                    report.failed[todo[0][1]] = f"cannot be read: {exc.strerror or exc}"
                else:
                    for one in todo:
                        self._add_batch([one], report, max_bytes, retries, max_wait_s)
                return
            for (_, rec), item_id in zip(todo, ids, strict=True):
                report.added[rec] = item_id
            return


# -- helpers of ``hashkd query`` --------------------------------------------------------------------
def parse_filter_text(text: str | None) -> dict[str, Any] | None:
    """A filter given as JSON text on the command line (None when absent)."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"--filter {text!r} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ClientError(
            f'--filter {text!r} is not valid: expected a JSON object such as {{"label": "cat"}}'
        )
    return value


def query_images(
    base_url: str,
    images: Sequence[str | os.PathLike[str]],
    k: int | None = None,
    radius: int | None = None,
    filter: dict[str, Any] | None = None,
    offset: int = 0,
    api_key: str | None = None,
) -> list[tuple[str, SearchResult]]:
    """Search the server at ``base_url`` with each image file; (image, result) in order."""
    with Client(base_url, api_key=api_key) as client:
        return [
            (str(image), client.search(image, k=k, radius=radius, filter=filter, offset=offset))
            for image in images
        ]


def results_json(results: Sequence[tuple[str, SearchResult]]) -> str:
    """The results as one JSON document: a list of {image, results, bits, took_ms, truncated}."""
    return json.dumps(
        [
            {
                "image": image,
                "results": [
                    {"id": h.id, "distance": h.distance, "metadata": h.metadata} for h in result
                ],
                "bits": result.bits,
                "took_ms": round(result.took_ms, 3),
                "truncated": result.truncated,
            }
            for image, result in results
        ],
        indent=2,
    )


def results_text(results: Sequence[tuple[str, SearchResult]]) -> str:
    """The results as text: per image a header, then one ``rank id distance metadata`` line
    per hit."""
    lines: list[str] = []
    for image, result in results:
        more = " (truncated)" if result.truncated else ""
        lines.append(
            f"{image}: {len(result)} hits, {result.bits} bits, {result.took_ms:.1f} ms{more}"
        )
        lines.append(f"{'rank':>5} {'id':>12} {'dist':>5}  metadata")
        for rank, hit in enumerate(result, start=1):
            meta = json.dumps(hit.metadata, ensure_ascii=False) if hit.metadata else ""
            lines.append(f"{rank:>5} {hit.id:>12} {hit.distance:>5}  {meta}")
    return "\n".join(lines)
