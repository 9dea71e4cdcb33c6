"""Decode every image file once: readability check, working resolution, memory or disk pixel cache.

A file dataset (:class:`hashkd.data.FileDataset` and its folder / list-file subclasses) runs
:func:`decode_once` over its files when it is built:

* every file is decoded with the service's decoder (:func:`hashkd.runtime.images.load_image`:
  EXIF orientation, every mode to RGB, decompression bombs refused), so a file that cannot be
  read is known *before* the splits are drawn. By default it is skipped with one warning line
  naming it (and a count when the pass ends); ``strict`` raises at the first one;
* the RGB image is resized so that its shorter side is :func:`working_side` of ``img_size``
  (``ceil(1.15 * img_size)``; bilinear with Pillow's antialiasing; images already smaller are
  kept as they are, never upscaled), leaving random-resized crops some pixels to choose from;
* the uint8 pixels are kept, by ``cache`` mode:

  - ``memory``: one array per image in RAM;
  - ``disk``: appended to ``<cache_dir>/side-<S>/pixels.bin`` (read back through a numpy
    memmap) with ``index.json`` mapping each absolute path to its size, modification time,
    offset and shape (or the reason it could not be read). A file whose size or modification
    time changed is decoded again; entries of other files are reused by any later run;
  - ``auto`` (default): ``memory`` when the image headers say the cached pixels take at most
    ``memory_limit`` bytes (default 1 GiB), else ``disk``;
  - ``off``: nothing is kept; images are decoded at full size on every access as before
    (the readability pass still decodes each file once at the start).

Options come from :class:`DataOptions`: passed explicitly, or for code that only calls
:func:`hashkd.data.load_dataset` (the trainers, encoding) from :func:`use_data_options`, which
the command line sets from ``--cache``, ``--cache-dir``, ``--strict`` and the model's image size.
See docs/data.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from hashkd.runtime.images import ImageDecodeError, load_image

CACHE_MODES = ("auto", "memory", "disk", "off")
DEFAULT_CACHE_DIR = ".hashkd-cache"
#: ``auto`` keeps the pixels in memory up to this many bytes (1 GiB), on disk above.
DEFAULT_MEMORY_LIMIT = 1 << 30
#: The working resolution's shorter side is this factor times ``img_size`` (rounded up).
WORKING_SCALE = 1.15
#: ``img_size`` assumed when nobody said which (224 px: the largest input the project trains).
DEFAULT_IMG_SIZE = 224
_INDEX_VERSION = 1

logger = logging.getLogger("hashkd.data")


@dataclass(frozen=True)
class DataOptions:
    """How file datasets decode and keep their images (see the module docstring)."""

    cache: str = "auto"
    cache_dir: str = DEFAULT_CACHE_DIR
    strict: bool = False
    img_size: int | None = None
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    progress: bool = True

    def __post_init__(self) -> None:
        if self.cache not in CACHE_MODES:
            raise ValueError(
                f"cache={self.cache!r} is not valid: expected one of {', '.join(CACHE_MODES)}"
            )
        if self.img_size is not None and int(self.img_size) < 1:
            raise ValueError(f"img_size={self.img_size!r} is not valid: expected a positive size")
        if int(self.memory_limit) < 0:
            raise ValueError(f"memory_limit={self.memory_limit!r} is not valid: expected >= 0")

    @property
    def side(self) -> int:
        """The shorter side images are cached at (:func:`working_side` of ``img_size``)."""
        return working_side(self.img_size or DEFAULT_IMG_SIZE)


@dataclass
class SkipReport:
    """Unreadable files skipped while a :func:`use_data_options` block ran (path -> reason)."""

    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str | None:
        """One line counting the skipped files, or ``None`` when none was skipped."""
        n = len(self.skipped)
        if not n:
            return None
        return f"hashkd: warning: skipped {n} unreadable image file{'s' * (n != 1)} (named above)"


_DEFAULT_OPTIONS = DataOptions()
_OPTIONS: ContextVar[DataOptions | None] = ContextVar("hashkd_data_options", default=None)
_REPORT: ContextVar[SkipReport | None] = ContextVar("hashkd_skip_report", default=None)


def current_options() -> DataOptions:
    """The options file datasets use when none are passed to them."""
    return _OPTIONS.get() or _DEFAULT_OPTIONS


@contextmanager
def use_data_options(options: DataOptions | None = None, **changes: Any) -> Iterator[SkipReport]:
    """Within the block, file datasets use ``options`` (or the current ones with ``changes``).

    Yields a :class:`SkipReport` that collects every unreadable file skipped in the block.
    """
    opts = replace(options or current_options(), **changes)
    report = SkipReport()
    tokens = (_OPTIONS.set(opts), _REPORT.set(report))
    try:
        yield report
    finally:
        _REPORT.reset(tokens[1])
        _OPTIONS.reset(tokens[0])


def resolve_options(
    cache: bool | str | None = None, options: DataOptions | None = None
) -> DataOptions:
    """``options`` (default: the current ones) with a dataset's ``cache`` argument applied.

    ``cache=True`` means ``memory``, ``False`` means ``off``, a string is a mode, ``None`` keeps it.
    """
    opts = options or current_options()
    if cache is None:
        return opts
    if isinstance(cache, bool):
        return replace(opts, cache="memory" if cache else "off")
    return replace(opts, cache=str(cache))


# ----------------------------------------------------------------------------- resolution


def working_side(img_size: int) -> int:
    """Shorter side of the cached images for a model of ``img_size``: ``ceil(1.15 * img_size)``."""
    return int(math.ceil(WORKING_SCALE * int(img_size) - 1e-9))


def working_size(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so that the shorter side is ``side``; smaller images unchanged."""
    short = min(width, height)
    if short <= side:
        return width, height
    scale = side / short
    if width <= height:
        return side, max(1, round(height * scale))
    return max(1, round(width * scale)), side


def resize_to_side(image: Image.Image, side: int) -> Image.Image:
    """``image`` resized to :func:`working_size` (bilinear, antialiased), or itself if smaller."""
    size = working_size(image.width, image.height, side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR)


def decode_pixels(path: str, side: int | None) -> np.ndarray:
    """The uint8 ``H x W x 3`` pixels the cache holds for ``path`` (``side=None``: full size)."""
    image = load_image(path)
    if side is not None:
        image = resize_to_side(image, side)
    return np.asarray(image, dtype=np.uint8)


# ----------------------------------------------------------------------------- the pass


@dataclass
class Decoded:
    """Result of :func:`decode_once`: which files are readable and their cached pixels."""

    readable: np.ndarray  # bool per file
    pixels: list[np.ndarray] | None  # one array per *readable* file, None when mode is off
    mode: str  # the mode used: memory, disk or off
    skipped: list[tuple[str, str]]  # (path, reason) of the unreadable files, in file order


def decode_once(paths: Sequence[str], options: DataOptions, source: str) -> Decoded:
    """Decode every file of ``paths`` once and keep the pixels as ``options`` say.

    Unreadable files are skipped with a warning each, or with ``options.strict`` the first one
    raises its :class:`~hashkd.runtime.images.ImageDecodeError`. ``source`` names the dataset
    in messages. Every file unreadable is a ``ValueError`` saying so.
    """
    mode = options.cache
    side = options.side
    if mode == "auto":
        mode = "memory" if _estimated_bytes(paths, side) <= options.memory_limit else "disk"
    if mode == "disk":
        pixels, errors = _disk_pass(paths, side, options, source)
    else:
        keep_side = side if mode == "memory" else None
        pixels, errors = _memory_pass(paths, keep_side, options, source, keep=mode == "memory")
    readable = np.array([e is None for e in errors], dtype=bool)
    skipped = [(p, e) for p, e in zip(paths, errors, strict=True) if e is not None]
    if len(paths) and not readable.any():
        raise ValueError(
            f"none of the {len(paths)} image files of {source} could be read "
            f"(first: {skipped[0][1]}): expected at least one readable image"
        )
    _report(skipped, len(paths), source)
    kept = None if mode == "off" else [a for a in pixels if a is not None]
    return Decoded(readable=readable, pixels=kept, mode=mode, skipped=skipped)


def _report(skipped: list[tuple[str, str]], total: int, source: str) -> None:
    report = _REPORT.get()
    for path, reason in skipped:
        logger.warning("hashkd: warning: skipped %s", reason)
        if report is not None:
            report.skipped[path] = reason
    if skipped:
        logger.warning(
            "hashkd: warning: %d of %d image files of %s could not be read and were skipped",
            len(skipped),
            total,
            source,
        )


def _estimated_bytes(paths: Sequence[str], side: int) -> int:
    """Bytes the cached pixels would take, from the image headers (no decoding)."""
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for path in paths:
            try:
                with Image.open(path) as im:
                    w, h = working_size(im.width, im.height, side)
            except Exception:  # noqa: BLE001 - unreadable files are reported by the decode pass
                continue
            total += w * h * 3
    return total


def _try_decode(path: str, side: int | None) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_pixels(path, side), None
    except ImageDecodeError as exc:
        return None, str(exc)


def _decoded(
    paths: Sequence[str], side: int | None, options: DataOptions, desc: str
) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """``(pixels, error)`` per path, in order, decoded by a few threads (Pillow frees the GIL).

    With ``options.strict`` the first error raises instead of being yielded.
    """
    if not paths:
        return
    workers = max(1, min(4, os.cpu_count() or 1, len(paths)))
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not options.progress, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for pixels, error in pool.map(_try_decode, paths, [side] * len(paths)):
                if error is not None and options.strict:
                    raise ImageDecodeError(error)
                bar.update(1)
                yield pixels, error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()


def _memory_pass(
    paths: Sequence[str], side: int | None, options: DataOptions, source: str, keep: bool
) -> tuple[list[np.ndarray | None], list[str | None]]:
    pixels: list[np.ndarray | None] = []
    errors: list[str | None] = []
    desc = "decoding images" if keep else "checking images"
    for array, error in _decoded(list(paths), side, options, desc):
        pixels.append(array if keep else None)
        errors.append(error)
    return pixels, errors


# ----------------------------------------------------------------------------- disk store


def _file_key(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def _read_index(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _INDEX_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_index(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"version": _INDEX_VERSION, "entries": entries}))
    os.replace(tmp, path)


def cache_folder(options: DataOptions) -> Path:
    """The folder of the disk cache for ``options`` (one per working side)."""
    return Path(options.cache_dir) / f"side-{options.side}"


def _disk_pass(
    paths: Sequence[str], side: int, options: DataOptions, source: str
) -> tuple[list[np.ndarray | None], list[str | None]]:
    folder = cache_folder(options)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"cache folder {folder} cannot be created ({exc}): expected a writable --cache-dir"
        ) from None
    pixels_file, index_file = folder / "pixels.bin", folder / "index.json"
    keys = [_file_key(p) for p in paths]
    with FileLock(str(folder / "lock")):
        entries = _read_index(index_file)

        def fresh(i: int) -> bool:
            key = keys[i]
            entry = entries.get(key[0]) if key is not None else None
            return entry is not None and (entry["size"], entry["mtime_ns"]) == key[1:]

        misses = [i for i in range(len(paths)) if not fresh(i)]
        try:
            with open(pixels_file, "ab") as fh:
                offset = fh.tell()
                decoded = _decoded([paths[i] for i in misses], side, options, "caching images")
                for i, (array, error) in zip(misses, decoded, strict=False):
                    key = keys[i]
                    if key is None:  # vanished while listing: decoding reported it
                        continue
                    entry: dict[str, Any] = {"size": key[1], "mtime_ns": key[2]}
                    if array is None:
                        entry["error"] = error
                    else:
                        fh.write(array.tobytes())
                        entry.update(offset=offset, shape=list(array.shape))
                        offset += array.nbytes
                    entries[key[0]] = entry
        finally:
            _write_index(index_file, entries)
    size = pixels_file.stat().st_size
    buffer = np.memmap(pixels_file, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    pixels: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        key = keys[i]
        entry = entries.get(key[0]) if key is not None else None
        if entry is None:
            error = f"file {path!r} does not exist or is not a file: expected an image file"
            if options.strict:
                raise ImageDecodeError(error)
            pixels.append(None)
            errors.append(error)
        elif "error" in entry:
            if options.strict:
                raise ImageDecodeError(entry["error"])
            pixels.append(None)
            errors.append(str(entry["error"]))
        else:
            shape = tuple(entry["shape"])
            start = int(entry["offset"])
            pixels.append(buffer[start : start + int(np.prod(shape))].reshape(shape))
            errors.append(None)
    return pixels, errors
