"""Load an offline code set (``hashkd encode``) into the running service: ``hashkd serve --codes``.

At start-up, before the service answers, every code of the code set becomes an item: its id,
its code, metadata ``{"path": ..., "labels": [...]}`` (the file it came from, relative to the
data folder, and its class indices) and, when the files are readable under the data root
(``--data-root``, else the code set's recorded ``path_root``), a thumbnail made from the file
with the service's own decoder and thumbnail helper. Items are added in chunks through the
engine, never as one request.

Idempotent: the store folder keeps a marker of each code set loaded to the end (its digest);
a restart with the same code set adds nothing, so items deleted since stay deleted. A load cut
off half-way (or a changed code set) adds only what is missing: an id already stored with the
same code and path is kept, an id stored with another code or path is refused at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hashkd.codes import PATHS_NAME, CodeSet, CodeSetError, resolve_source
from hashkd.io import atomic_write_text
from hashkd.runtime.config import WEIGHTS_NAME
from hashkd.runtime.digest import artifact_digest
from hashkd.runtime.images import DEFAULT_MAX_PIXELS, load_image
from service.engine import Engine, make_thumbnail
from service.settings import Settings
from service.store import DuplicateItemError
from service.uploads import labels_metadata

log = logging.getLogger("service.codes")

#: Items per add (one store transaction, one index update).
CHUNK = 5000
#: The marker of the code sets loaded to the end, in the store folder.
MARKER_NAME = "codesets.json"
#: Unreadable files warned about one by one (the rest are only counted).
MAX_WARNINGS = 10
_FILES = ("codes.npy", "ids.npy", "labels.npy", PATHS_NAME)


class CodesetConflictError(ValueError):
    """The store holds an id of the code set for another image: nothing more is loaded."""


class CodesetLoadError(RuntimeError):
    """The start-up load of ``--codes`` failed; the message is one sentence saying why.

    Raised by the app's lifespan (after logging that sentence); ``hashkd serve`` keeps the
    traceback of this exception out of the server's log (:func:`quiet_load_errors`).
    """


def quiet_load_errors(record: logging.LogRecord) -> bool:
    """A logging filter: drop the traceback uvicorn logs for a :class:`CodesetLoadError`
    (the lifespan has already logged its one-line reason)."""
    return CodesetLoadError.__name__ not in record.getMessage()


@dataclass(frozen=True)
class CodesetLoad:
    """What loading a code set did (``/v1/info`` shows it as ``codes``)."""

    source: str
    digest: str
    count: int
    added: int
    already_stored: int
    thumbnails: int
    unreadable: int
    path_root: str | None
    skipped: bool  # the marker said this code set was loaded before: nothing was read

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=4)
def _weights_digest(model_dir: str, size: int, mtime_ns: int) -> str:
    return artifact_digest(model_dir)


def model_weights_digest(model_dir: str | os.PathLike[str]) -> str | None:
    """The weights digest of a model artifact (as code sets record it), or None when it cannot
    be computed here (no ``model.safetensors``, or no ``safetensors`` package)."""
    weights = Path(model_dir) / WEIGHTS_NAME
    try:
        stat = weights.stat()
        return _weights_digest(str(Path(model_dir).resolve()), stat.st_size, stat.st_mtime_ns)
    except (ImportError, OSError):
        return None


def read_codeset(
    directory: str | os.PathLike[str], bits: int, model_dir: str | os.PathLike[str] | None = None
) -> CodeSet:
    """The code set at ``directory``; refuses one whose codes are not ``bits`` long or, when
    both digests are known, were made by another model than ``model_dir`` (the database model)."""
    codeset = CodeSet.load(directory)
    if codeset.bits != bits:
        raise CodeSetError(
            f"code set {str(directory)!r} holds {codeset.bits}-bit codes but the database model "
            f"makes {bits}-bit codes: expected codes made by the database model"
        )
    made_by = codeset.meta.get("model_digest")
    if model_dir is not None and made_by:
        digest = model_weights_digest(model_dir)
        if digest is not None and digest != made_by:
            raise CodeSetError(
                f"code set {str(directory)!r} was made by another model (weights digest "
                f"{str(made_by)[:12]}) than the database model {str(model_dir)!r} ({digest[:12]}): "
                f"expected codes of the database model (hashkd encode {model_dir} ...)"
            )
    return codeset


def codeset_digest(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over the code set's files (codes, ids, labels, paths): its identity."""
    h = hashlib.sha256()
    for name in _FILES:
        path = Path(directory) / name
        if path.is_file():
            h.update(f"{name}|{path.stat().st_size}|".encode())
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def thumbnail_of(file: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The service's thumbnail of an image file; raises ``OSError``/``ValueError`` when the
    file cannot be read as an image.

    JPEGs are decoded at a reduced scale no smaller than the thumbnail (Pillow's ``draft``),
    which makes a photo's thumbnail several times cheaper than a full decode.
    """
    with Image.open(file) as img:
        img.draft("RGB", (2 * size, 2 * size))
        return make_thumbnail(load_image(img, max_pixels=max_pixels), size)


def _try_thumbnail(file: str | None, size: int, max_pixels: int) -> tuple[bytes | None, str]:
    """(thumbnail, "") or (None, why not); (None, "") when there is no local file."""
    if file is None:
        return None, ""
    try:
        return thumbnail_of(file, size, max_pixels), ""
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        text = str(exc).strip()
        return None, f"{file}: {text.splitlines()[0] if text else type(exc).__name__}"


def _metadata(codeset: CodeSet, start: int, stop: int) -> list[dict[str, Any]]:
    """The metadata of rows ``start:stop`` (built chunk by chunk: no object per item of the
    whole code set)."""
    meta: list[dict[str, Any]] = [{} for _ in range(stop - start)]
    if codeset.paths is not None:
        meta = [{"path": p} for p in codeset.paths[start:stop]]
    if codeset.labels is not None:
        labels = labels_metadata(codeset.labels[start:stop], stop - start)
        meta = [{**m, **lab} for m, lab in zip(meta, labels, strict=True)]
    return meta


def _read_marker(store: Path | None) -> dict[str, Any]:
    if store is None or not (store / MARKER_NAME).is_file():
        return {}
    try:
        value = json.loads((store / MARKER_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def _stored(engine: Engine, item_id: int) -> Any:
    try:
        return engine.get_item(item_id)
    except KeyError:  # UnknownItemError
        return None


def _check_stored(
    engine: Engine, ids: np.ndarray, codes: np.ndarray, meta: Sequence[dict[str, Any]], source: str
) -> np.ndarray:
    """Which rows are stored already (same code and path); raises for a conflicting one."""
    kept = np.zeros(len(ids), dtype=bool)
    index = getattr(engine.catalog, "index", None)
    if index is not None:  # embedded: one vectorised lookup, then only the stored rows
        present = np.isin(ids, index.get_known(ids)[0])
        candidates = np.flatnonzero(present).tolist()
    else:
        candidates = range(len(ids))
    for j in candidates:
        item_id = int(ids[j])
        item = _stored(engine, item_id)
        if item is None:
            continue
        want_path = meta[j].get("path")
        if bytes(item.code) != codes[j].tobytes() or item.metadata.get("path") != want_path:
            what = (
                f"path {item.metadata.get('path')!r}, not {want_path!r}"
                if item.metadata.get("path") != want_path
                else "another code"
            )
            raise CodesetConflictError(
                f"the store already holds item {item_id} for another image ({what}) than code "
                f"set {source!r} gives it: serve this code set with a new --store"
            )
        kept[j] = True
    return kept


def _add(
    engine: Engine,
    codes: np.ndarray,
    ids: list[int],
    metadata: list[dict[str, Any]],
    thumbnails: list[bytes | None] | None,
) -> None:
    if thumbnails is not None and not any(t is not None for t in thumbnails):
        thumbnails = None
    engine.add_codes(codes, ids, metadata, thumbnails=thumbnails)


def load_codeset(
    engine: Engine,
    directory: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    model_dir: str | os.PathLike[str] | None = None,
    thumbnail_px: int = 96,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk: int = CHUNK,
    threads: int | None = None,
) -> CodesetLoad:
    """Add the code set at ``directory`` to ``engine``'s items (see the module docstring).

    ``store`` is the folder that keeps the marker of loaded code sets (the embedded store;
    None in cluster mode, where the ids already stored are checked instead); ``model_dir``,
    the database model, is checked to have made the codes (:func:`read_codeset`).
    """
    source = str(directory)
    digest = codeset_digest(directory)
    marker_dir = Path(store) if store is not None else None
    marker = _read_marker(marker_dir)
    if digest in marker:
        done = marker[digest]
        log.info("code set %s was loaded before (%s codes): nothing to add", source, done["count"])
        return CodesetLoad(
            source,
            digest,
            int(done["count"]),
            0,
            int(done["count"]),
            0,
            0,
            done.get("path_root"),
            True,
        )
    codeset = read_codeset(directory, engine.bits, model_dir)
    root = str(data_root) if data_root is not None else codeset.path_root
    making_thumbnails = codeset.paths is not None and thumbnail_px > 0
    if making_thumbnails and root is not None and not Path(root).is_dir():
        log.warning(
            "the data root %s of code set %s is not a readable folder here: no thumbnails "
            "for its relative paths (--data-root names another)",
            root,
            source,
        )
        root = None
    if not making_thumbnails and chunk == CHUNK:  # bare codes: the engine's bulk chunk
        chunk = engine.IMPORT_CHUNK
    check = len(engine.catalog) > 0  # a fresh store cannot hold any of the ids
    added = already = thumbs = unreadable = 0
    n = len(codeset)
    with ThreadPoolExecutor(max_workers=threads or min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            ids, codes = codeset.ids[start:stop], codeset.codes[start:stop]
            rows = _metadata(codeset, start, stop)
            todo = np.ones(stop - start, dtype=bool)
            if check:
                todo = ~_check_stored(engine, ids, codes, rows, source)
            already += int((~todo).sum())
            sel = np.flatnonzero(todo)
            if not len(sel):
                continue
            chunk_thumbs: list[bytes | None] | None = None
            if making_thumbnails:
                wanted = [resolve_source(codeset.paths[start + int(j)], root) for j in sel]
                made = list(pool.map(lambda f: _try_thumbnail(f, thumbnail_px, max_pixels), wanted))
                chunk_thumbs = [thumb for thumb, _ in made]
                thumbs += sum(t is not None for t in chunk_thumbs)
                for _, why in made:
                    if why:
                        unreadable += 1
                        if unreadable <= MAX_WARNINGS:
                            log.warning("no thumbnail for %s", why)
            try:
                _add(engine, codes[sel], ids[sel].tolist(), [rows[j] for j in sel], chunk_thumbs)
            except DuplicateItemError as exc:  # another writer stored them meanwhile
                raise CodesetConflictError(
                    f"ids of code set {source!r} were stored while it was loading ({exc})"
                ) from None
            added += len(sel)
            log.info("code set %s: %d of %d codes loaded", source, stop, n)
    result = CodesetLoad(source, digest, n, added, already, thumbs, unreadable, root, False)
    if marker_dir is not None:
        marker[digest] = {"source": str(Path(source).resolve()), "count": n, "path_root": root}
        atomic_write_text(marker_dir / MARKER_NAME, json.dumps(marker, indent=2, sort_keys=True))
    log.info(
        "code set %s: %d codes, %d added, %d already stored, %d thumbnails (%d files unreadable)",
        source,
        n,
        added,
        already,
        thumbs,
        unreadable,
    )
    return result


def load_settings_codeset(engine: Engine, settings: Settings) -> CodesetLoad | None:
    """:func:`load_codeset` of ``settings.codes`` with the server's settings (None without)."""
    if settings.codes is None:
        return None
    return load_codeset(
        engine,
        settings.codes,
        data_root=settings.data_root,
        store=None if settings.cluster else settings.store,
        model_dir=settings.db_model,
        thumbnail_px=settings.thumbnail_px,
        max_pixels=settings.max_image_pixels,
        chunk=CHUNK,
        threads=settings.threads,
    )
