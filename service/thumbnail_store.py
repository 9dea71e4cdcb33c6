"""Thumbnails of cluster mode, in a directory every replica shares (``--thumbnail-store``).

Thumbnails stay out of Milvus, so they cost its query nodes no memory: the item row keeps only
``thumb``, an INT64 naming the thumbnail's version (0: none), which also answers
``has_thumbnail`` without reading the file. The directory is any file system the replicas
share (an NFS or SMB mount, a Kubernetes ReadWriteMany volume, an object store through a FUSE
mount); on one machine, a local folder.

Layout: ``ROOT/<id mod 4096, 3 hex digits>/<id>.<version, 16 hex digits>.jpg``, each written
atomically and fsynced (``hashkd.io.atomic_write_bytes``) *before* the row that names it, so an
acknowledged item's thumbnail is on disk. A version is a random non-zero 63-bit number, so two
writers of the same item never write the same file: the row names one of them. A ``PUT`` that
replaces the image leaves the older versions for ``STALE_S`` seconds (a concurrent ``PUT`` of
the same item may still name its own) and removes them on a later change of the item; a delete
removes every version. A write that fails after its thumbnail was written leaves that file
behind (never named by a row).
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from hashkd.io import atomic_write_bytes

SHARDS = 4096
#: Older versions of an item younger than this survive a replacement (see the docstring).
STALE_S = 120.0
_NAME = re.compile(r"^(\d+)\.([0-9a-f]{16})\.jpg$")


class ThumbnailStore:
    """JPEG thumbnails by (item id, version) under one shared directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, item_id: int, version: int) -> Path:
        return self.root / f"{int(item_id) % SHARDS:03x}" / f"{int(item_id)}.{version:016x}.jpg"

    def put(self, item_id: int, data: bytes) -> int:
        """Write a thumbnail; returns its version, for the item's ``thumb`` field."""
        version = secrets.randbelow(2**63 - 1) + 1
        target = self.path(item_id, version)
        target.parent.mkdir(exist_ok=True)
        atomic_write_bytes(target, data)
        return version

    def get(self, item_id: int, version: int) -> bytes | None:
        """The thumbnail of that version (None when the file is gone)."""
        try:
            return self.path(item_id, version).read_bytes()
        except FileNotFoundError:
            return None

    def versions(self, item_id: int) -> dict[int, float]:
        """Every stored version of the item and its file's modification time."""
        shard = self.root / f"{int(item_id) % SHARDS:03x}"
        out: dict[int, float] = {}
        try:
            entries = list(shard.glob(f"{int(item_id)}.*.jpg"))
        except FileNotFoundError:
            return out
        for entry in entries:
            match = _NAME.match(entry.name)
            if match and int(match.group(1)) == int(item_id):
                try:
                    out[int(match.group(2), 16)] = entry.stat().st_mtime
                except FileNotFoundError:
                    continue
        return out

    def remove(self, item_id: int, keep: int = 0, older_than: float | None = None) -> None:
        """Remove the item's versions other than ``keep`` (only those whose file is older than
        ``older_than`` seconds, when given)."""
        now = time.time()
        for version, mtime in self.versions(item_id).items():
            if version == keep or (older_than is not None and now - mtime < older_than):
                continue
            self.path(item_id, version).unlink(missing_ok=True)
