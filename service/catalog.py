"""The catalog: the durable item store plus the search index derived from it.

Write path (``add``/``delete``), under one writer mutex:
1. commit the change to SQLite (fsynced; this is the acknowledgement point),
2. apply it to the in-memory index,
3. every ``snapshot_every`` changes, write an index snapshot.

Because steps 1 and 2 happen under the same mutex, every change up to the store's last
sequence number is in the index whenever the mutex is free -- so a snapshot taken under
the mutex can record that number as its high-water mark.

Snapshots: the index is written to ``index/index-<seq>.bin`` (the index's own atomic save:
temporary file, fsync, rename) and the filter posting lists to ``index/postings-<seq>.npz``
(atomic too), then ``index/snapshot.json`` -- naming both files, their seq, spec and bits --
is replaced atomically. A crash at any point leaves either the old or the
new snapshot.json, each naming a complete file. On start, the snapshot is loaded and the
changes after its seq are replayed from SQLite (for each touched id: remove it from the
index and the posting lists if present, add its current code and metadata if it is still
stored). If the snapshot is missing,
unreadable, of another spec or code length, or older than the change log, the index is
rebuilt from all stored items.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

import indexes
from hashkd.io import atomic_write_text, fsync_directory
from indexes.errors import IndexFileError, UnsupportedOperation
from service.postings import Postings
from service.store import ItemStore, StoreError
from service.terms import metadata_term_lists

log = logging.getLogger("service.catalog")

SNAPSHOT_NAME = "snapshot.json"


LOCK_NAME = "LOCK"


class StoreInUseError(StoreError):
    """Another process (or another catalog in this one) has the store folder open."""


def lock_store_folder(directory: Path) -> FileLock:
    """Take the store folder's exclusive lock (``LOCK``, an OS file lock released when the
    process dies), or raise :class:`StoreInUseError` at once: two servers on one store would
    each snapshot an index that misses the other's items."""
    lock = FileLock(directory / LOCK_NAME, timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise StoreInUseError(
            f"store {str(directory)!r} is in use by another hashkd server (its {LOCK_NAME} file "
            "is locked): stop that server, or give this one another --store"
        ) from None
    return lock


class Catalog:
    """Items (SQLite, the truth) and the index (derived, snapshotted)."""

    def __init__(
        self,
        directory: str | Path,
        bits: int,
        spec: str = "flat",
        snapshot_every: int = 1000,
        synchronous: str = "FULL",
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._folder_lock = lock_store_folder(self.directory)
        self.index_dir = self.directory / "index"
        self.index_dir.mkdir(exist_ok=True)
        self.bits = int(bits)
        self.spec = spec
        self.snapshot_every = int(snapshot_every)
        try:
            self.store = ItemStore(
                self.directory / "items.sqlite", self.bits, synchronous=synchronous
            )
        except BaseException:
            self._folder_lock.release()
            raise
        self._writer = threading.Lock()
        self._since_snapshot = 0
        self.snapshot_seq = 0
        #: How the index was brought up at start: "snapshot", "snapshot+replay" or "rebuild".
        self.recovery = ""
        #: Filter posting lists (service/postings.py), snapshotted with the index.
        self.postings = Postings()
        self.index = self._open_index()
        if self.recovery != "snapshot":
            self.snapshot()  # start the next run from a fresh snapshot

    # -- start-up --------------------------------------------------------------------------------
    def _open_index(self) -> indexes.BinaryIndex:
        """The index (and the posting lists) from the snapshot plus the changes after it, or
        rebuilt from the store."""
        try:
            index, postings, seq = self._load_snapshot()
        except (IndexFileError, StoreError, OSError, ValueError, KeyError) as exc:
            log.warning("index snapshot not usable (%s): rebuilding from the store", exc)
            return self._rebuild()
        if index is None:
            return self._rebuild()
        try:
            touched, last = self.store.changed_since(seq)
        except StoreError as exc:
            log.warning("%s", exc)
            return self._rebuild()
        if len(touched) > max(100_000, len(index)):
            log.info("%d ids changed since the snapshot: rebuilding from the store", len(touched))
            return self._rebuild()
        self.postings = postings
        if len(touched):
            self._replay(index, touched)
            self.recovery = "snapshot+replay"
            log.info(
                "index snapshot at seq %d brought up to seq %d (%d ids replayed)",
                seq,
                last,
                len(touched),
            )
        else:
            self.recovery = "snapshot"
        self.snapshot_seq = seq
        self._since_snapshot = last - seq
        return index

    def _load_snapshot(self) -> tuple[indexes.BinaryIndex | None, Postings, int]:
        pointer = self.index_dir / SNAPSHOT_NAME
        if not pointer.is_file():
            return None, Postings(), 0
        info = json.loads(pointer.read_text(encoding="utf-8"))
        if info.get("spec") != self.spec or int(info.get("bits", -1)) != self.bits:
            log.info(
                "snapshot was made with spec %r, %s bits: rebuilding",
                info.get("spec"),
                info.get("bits"),
            )
            return None, Postings(), 0
        if "postings" not in info:  # a snapshot of an earlier release: rebuild both
            return None, Postings(), 0
        index = indexes.load_index(self.index_dir / str(info["file"]))
        if index.bits != self.bits:
            raise IndexFileError(f"snapshot holds {index.bits}-bit codes, expected {self.bits}")
        postings = Postings.load(self.index_dir / str(info["postings"]))
        return index, postings, int(info["seq"])

    def _replay(self, index: indexes.BinaryIndex, touched: np.ndarray) -> None:
        """Bring the index and the posting lists from the snapshot up to the store: every id
        touched since is dropped from both, then re-added as the store has it now."""
        stale, _ = index.get_known(touched)
        if len(stale):
            index.remove(stale)
        self.postings.forget(touched)
        for s in range(0, len(touched), 100_000):
            chunk = touched[s : s + 100_000].tolist()
            ids, codes = self.store.codes_of(chunk)
            if len(ids):
                index.add(ids, codes)
            meta = self.store.metadata_of(chunk)
            self.postings.add_items(sorted(meta), [meta[i] for i in sorted(meta)])

    def _rebuild(self) -> indexes.BinaryIndex:
        index = indexes.create_index(self.spec, self.bits)
        for ids, codes, _seq in self.store.iter_all():
            index.add(ids, codes)
        self.postings = Postings()
        for ids, metadata in self.store.iter_metadata():
            self.postings.add_items(ids, metadata)
        self.recovery = "rebuild"
        log.info("index rebuilt from the store: %d items", len(index))
        self.snapshot_seq = 0
        return index

    # -- writes ------------------------------------------------------------------------------------
    def add(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> list[int]:
        """Store items durably, then index them; returns their ids."""
        terms = metadata_term_lists(metadata) if metadata is not None else None
        with self._writer:
            new_ids, _ = self.store.add(codes, ids=ids, metadata=metadata, thumbnails=thumbnails)
            try:
                self.index.add(np.asarray(new_ids, dtype=np.int64), codes)
            except Exception:
                # The store has them (acknowledgement point): a fresh index from the store is
                # the only state known to be consistent.
                log.exception("index add failed after the store committed: rebuilding the index")
                self.index = self._rebuild()
                raise
            if terms is not None:
                self.postings.add_terms(new_ids, terms)
            self._after_change_locked(len(new_ids))
        return new_ids

    def delete(self, item_id: int) -> None:
        """Delete one item durably, then from the index. Unknown ids raise UnknownItemError."""
        with self._writer:
            old = self.store.get(item_id).metadata  # raises UnknownItemError
            self.store.delete(item_id)
            if int(item_id) in self.index:
                self.index.remove([int(item_id)])
            self.postings.delete_item(int(item_id), old)
            self._after_change_locked(1)

    def upsert(
        self,
        item_id: int,
        code: np.ndarray | None,
        metadata: dict[str, Any] | None,
        thumbnail: bytes | None = None,
    ) -> bool:
        """Create or replace one item durably, then re-index its code if it changed; returns
        whether it was created. A new code for a stored item needs an index that can replace
        (checked before anything is written)."""
        with self._writer:
            if (
                code is not None
                and int(item_id) in self.index
                and "replace" not in self.index.supports
            ):
                raise UnsupportedOperation(
                    f"the {self.spec!r} index cannot replace the code of a stored item (it has no "
                    "remove): replace only the metadata, or serve with an index that supports remove"
                )
            old = self.store.metadata_of([int(item_id)]).get(int(item_id))
            created, _ = self.store.upsert(item_id, code, metadata, thumbnail)
            if metadata is not None:
                if old is not None:
                    self.postings.remove_item(int(item_id), old)
                self.postings.add_items([int(item_id)], [metadata])
            if code is not None:
                try:
                    self.index.upsert(np.array([item_id], dtype=np.int64), code[None, :])
                except Exception:
                    log.exception("index upsert failed after the store committed: rebuilding")
                    self.index = self._rebuild()
                    raise
            self._after_change_locked(1)
        return created

    def _after_change_locked(self, n: int) -> None:
        self._since_snapshot += n
        # A snapshot writes the whole index: at most once per snapshot_every changes, and
        # never more often than once per len/8 changes, so its cost is O(1) per change.
        if self._since_snapshot >= max(self.snapshot_every, len(self.index) // 8):
            try:
                self._snapshot_locked()
            except OSError:
                log.exception("index snapshot failed; the store still has every item")

    # -- snapshots ---------------------------------------------------------------------------------
    def snapshot(self) -> int:
        """Write an index snapshot now; returns its seq."""
        with self._writer:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> int:
        index = self.index
        seq = self.store.last_seq()
        name = f"index-{seq}.bin"
        postings = f"postings-{seq}.npz"
        index.save(self.index_dir / name)
        self.postings.save(self.index_dir / postings)
        fsync_directory(self.index_dir)
        atomic_write_text(
            self.index_dir / SNAPSHOT_NAME,
            json.dumps(
                {
                    "file": name,
                    "postings": postings,
                    "seq": seq,
                    "spec": self.spec,
                    "bits": self.bits,
                    "count": len(index),
                }
            ),
        )
        for old in [*self.index_dir.glob("index-*.bin*"), *self.index_dir.glob("postings-*")]:
            if old.name not in (name, postings):
                old.unlink(missing_ok=True)
        self.store.prune_changes(seq)
        self.snapshot_seq = seq
        self._since_snapshot = 0
        return seq

    # -- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def close(self, snapshot: bool = True) -> None:
        if snapshot:
            try:
                with self._writer:
                    if self.store.last_seq() != self.snapshot_seq:
                        self._snapshot_locked()
            except OSError:
                log.exception("final index snapshot failed; the store still has every item")
        self.store.close()
        self._folder_lock.release()
