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

import io
import json
import os
import threading
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


class ClientError(ValueError):
    """The request could not be made or its answer not read (e.g. the server is down)."""


class ApiError(ClientError):
    """The server answered with an error: its HTTP status and its one-sentence ``detail``."""

    def __init__(self, status_code: int, detail: str, method: str = "", path: str = "") -> None:
        self.status_code = int(status_code)
        self.detail = detail
        self.method, self.path = method, path
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
            raise ApiError(response.status_code, detail, method, path)
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
