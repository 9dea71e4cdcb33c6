"""The durable item store: SQLite holds every item's id, code, metadata and thumbnail.

Tables: ``items`` (id, code, metadata), ``thumbnails`` (id, JPEG) apart so that scans of the
items never read image bytes, ``changes`` (below) and ``meta`` (schema version, code length,
the next free id and the item count, kept in every write's transaction so that counting is
O(1)). A store of schema 1 (thumbnails inline in ``items``, no count, an SQL term index) is
migrated in place when it is opened.

SQLite is the source of truth; the search index is derived from it (see ``catalog.py``).

Durability: the database runs in WAL mode with ``synchronous=FULL`` by default, so a commit
returns only after the WAL is fsynced: an acknowledged write survives ``kill -9`` of the
server and also a power loss. (``NORMAL`` in WAL mode also survives a process crash -- the
WAL is in the OS page cache -- but may lose the last commits on power loss; it is offered
as a setting for disks where fsync is slow.)

Metadata filters are answered from in-memory posting lists derived from the metadata and
snapshotted with the index (``service/postings.py``, ``service/catalog.py``): the store keeps
no term rows, so a bulk add writes two rows per item (``items`` and nothing else but one
``changes`` row per run of ids).

Every change appends a row to ``changes`` (an AUTOINCREMENT sequence number, the operation,
the id and, for a run of consecutive ids added together, the run's last id) in the same
transaction as the change itself: a bulk add of a million consecutive ids is one row. An index snapshot records the
highest sequence number it contains; on start the changes after it are replayed. The
sequence never goes back, even after old change rows are pruned (SQLite's AUTOINCREMENT
keeps its high-water mark in ``sqlite_sequence``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    code BLOB NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS thumbnails (id INTEGER PRIMARY KEY, jpeg BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'delete')),
    id INTEGER NOT NULL,
    last INTEGER
);
"""

MAX_ID = 2**63 - 1


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(metadata: dict[str, Any]) -> str:
    """Compact JSON text of an item's metadata (orjson; Python's encoder for what it refuses,
    e.g. integers past 64 bits)."""
    try:
        return orjson.dumps(metadata).decode("utf-8")
    except TypeError:
        return _ENCODER.encode(metadata)


class StoreError(ValueError):
    """The store on disk cannot be used as asked (another code length, a newer schema ...)."""


class DuplicateItemError(ValueError):
    """An add named ids that are already stored; nothing was added."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = [int(i) for i in ids]
        shown = ", ".join(str(i) for i in self.ids[:5]) + (" ..." if len(self.ids) > 5 else "")
        super().__init__(f"ids already stored: {shown}; delete them first or add without ids")


class UnknownItemError(KeyError):
    """No item has this id."""

    def __init__(self, item_id: int) -> None:
        self.id = int(item_id)
        super().__init__(f"no item with id {self.id}")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Item:
    id: int
    code: bytes
    metadata: dict[str, Any]
    has_thumbnail: bool


class ItemStore:
    """Items in one SQLite file. Thread-safe: one writer connection behind a lock, one
    reader connection per thread (WAL lets readers run while a write is in progress)."""

    def __init__(self, path: str | Path, bits: int, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.bits = int(bits)
        self.code_size = self.bits // 8
        self._synchronous = synchronous
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer = self._connect()
        with self._write_lock:
            self._writer.executescript(_SCHEMA)
            self._check_meta()

    # -- connections --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only connection."""
        return self._reader()

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.ProgrammingError):  # another thread's connection
                    conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()

    def _check_meta(self) -> None:
        rows = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
        if not rows:
            self._writer.execute("BEGIN IMMEDIATE")
            self._writer.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("bits", str(self.bits)),
                    ("next_id", "0"),
                    ("count", "0"),
                ],
            )
            self._writer.execute("COMMIT")
            return
        if rows.get("schema_version") == "1":
            self._migrate_from_1()
            rows = dict(self._writer.execute("SELECT key, value FROM meta").fetchall())
        if int(rows.get("schema_version", "0")) != SCHEMA_VERSION:
            raise StoreError(
                f"store {str(self.path)!r} has schema version {rows.get('schema_version')!r}: expected {SCHEMA_VERSION}"
            )
        if int(rows["bits"]) != self.bits:
            raise StoreError(
                f"store {str(self.path)!r} holds {rows['bits']}-bit codes but the models make {self.bits}-bit codes: "
                "use another --store or models of the same code length"
            )

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: thumbnails move to their own table, the count goes into ``meta``,
        change rows get their ``last`` column, the SQL term index goes (filters are answered
        from posting lists kept with the index snapshot). One transaction: all or nothing."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO thumbnails (id, jpeg) "
                "SELECT id, thumbnail FROM items WHERE thumbnail IS NOT NULL"
            )
            conn.execute("ALTER TABLE items DROP COLUMN thumbnail")
            conn.execute("DROP TABLE IF EXISTS terms")  # filters use in-memory posting lists now
            conn.execute("DELETE FROM meta WHERE key='terms'")
            columns = [r[1] for r in conn.execute("PRAGMA table_info(changes)")]
            if "last" not in columns:
                conn.execute("ALTER TABLE changes ADD COLUMN last INTEGER")
            count = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("count", str(count)), ("schema_version", str(SCHEMA_VERSION))],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _add_count(conn: sqlite3.Connection, delta: int) -> None:
        conn.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='count'", (int(delta),)
        )

    @staticmethod
    def _log_adds(conn: sqlite3.Connection, ids: np.ndarray) -> None:
        """One change row per run of consecutive ids (``last`` NULL for a lone id)."""
        if not len(ids):
            return
        order = np.sort(ids)
        breaks = np.flatnonzero(np.diff(order) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(order)])) - 1
        conn.executemany(
            "INSERT INTO changes (op, id, last) VALUES ('add', ?, ?)",
            [
                (int(order[a]), int(order[b]) if b > a else None)
                for a, b in zip(starts, ends, strict=True)
            ],
        )

    # -- writes --------------------------------------------------------------------------------
    def add(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> tuple[list[int], int]:
        """Insert items in one durable transaction; return (their ids, the last change seq).

        Without ``ids`` the store assigns new ones (never reused, above every id seen).
        Raises :class:`DuplicateItemError` (nothing added) when an id is already stored.
        """
        n = int(codes.shape[0])
        if codes.ndim != 2 or codes.shape[1] != self.code_size or codes.dtype != np.uint8:
            raise ValueError(
                f"codes must be uint8 n x {self.code_size}, got {codes.dtype} {codes.shape}"
            )
        meta_text = ["{}"] * n if metadata is None else [_dumps(m) for m in metadata]
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                next_id = int(
                    conn.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()[0]
                )
                if ids is None:
                    if next_id + n - 1 > MAX_ID:
                        raise StoreError(
                            f"the store has run out of ids: an item holds id {next_id - 1} and "
                            f"ids end at {MAX_ID}; add with explicit free ids instead"
                        )
                    new_ids = np.arange(next_id, next_id + n, dtype=np.int64)
                else:
                    new_ids = np.asarray([int(i) for i in ids], dtype=np.int64)
                    dup = self._existing(conn, new_ids.tolist())
                    if dup:
                        raise DuplicateItemError(dup)
                id_list = new_ids.tolist()
                conn.executemany(
                    "INSERT INTO items (id, code, metadata) VALUES (?, ?, ?)",
                    zip(id_list, (c.tobytes() for c in codes), meta_text, strict=True),
                )
                if thumbnails is not None:
                    conn.executemany(
                        "INSERT INTO thumbnails (id, jpeg) VALUES (?, ?)",
                        [(i, t) for i, t in zip(id_list, thumbnails, strict=True) if t is not None],
                    )
                self._log_adds(conn, new_ids)
                self._add_count(conn, n)
                top = int(new_ids.max()) + 1 if n else next_id
                if top > next_id:
                    # may reach MAX_ID + 1 (an item holds MAX_ID): the next add without ids is then
                    # refused (StoreError, 409), never given a taken id
                    conn.execute("UPDATE meta SET value=? WHERE key='next_id'", (str(top),))
                seq = self._seq(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return id_list, seq

    @staticmethod
    def _existing(conn: sqlite3.Connection, ids: list[int]) -> list[int]:
        found: list[int] = []
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            marks = ",".join("?" * len(chunk))
            found += [
                r[0] for r in conn.execute(f"SELECT id FROM items WHERE id IN ({marks})", chunk)
            ]
        return sorted(found)

    def delete(self, item_id: int) -> int:
        """Delete one item durably; return the change seq. Unknown ids raise UnknownItemError."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute("DELETE FROM items WHERE id=?", (int(item_id),))
                if cur.rowcount == 0:
                    raise UnknownItemError(item_id)
                conn.execute("DELETE FROM thumbnails WHERE id=?", (int(item_id),))
                self._add_count(conn, -1)
                conn.execute("INSERT INTO changes (op, id) VALUES ('delete', ?)", (int(item_id),))
                seq = self._seq(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return seq

    def upsert(
        self,
        item_id: int,
        code: np.ndarray | None,
        metadata: dict[str, Any] | None,
        thumbnail: bytes | None = None,
    ) -> tuple[bool, int]:
        """Create or replace one item durably; return (whether it was created, the change seq).

        ``code`` (with ``thumbnail``) replaces the item's code and thumbnail, ``metadata`` its
        metadata; what is None is kept. A new item needs a code. The change is logged as an
        ``add`` (a replay re-reads the item's current code).
        """
        item_id = int(item_id)
        if code is not None and (code.dtype != np.uint8 or code.shape != (self.code_size,)):
            raise ValueError(
                f"code must be uint8 of {self.code_size} bytes, got {code.dtype} {code.shape}"
            )
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT metadata FROM items WHERE id=?", (item_id,)).fetchone()
                created = row is None
                if created and code is None:
                    raise UnknownItemError(item_id)
                if created:
                    conn.execute(
                        "INSERT INTO items (id, code, metadata) VALUES (?, ?, ?)",
                        (item_id, code.tobytes(), _dumps(metadata or {})),
                    )
                    self._add_count(conn, 1)
                    next_id = int(
                        conn.execute("SELECT value FROM meta WHERE key='next_id'").fetchone()[0]
                    )
                    if item_id + 1 > next_id:
                        conn.execute(
                            "UPDATE meta SET value=? WHERE key='next_id'", (str(item_id + 1),)
                        )
                elif code is not None:
                    conn.execute("UPDATE items SET code=? WHERE id=?", (code.tobytes(), item_id))
                    conn.execute("DELETE FROM thumbnails WHERE id=?", (item_id,))
                if code is not None and thumbnail is not None:
                    conn.execute(
                        "INSERT INTO thumbnails (id, jpeg) VALUES (?, ?)", (item_id, thumbnail)
                    )
                if metadata is not None and not created:
                    conn.execute(
                        "UPDATE items SET metadata=? WHERE id=?", (_dumps(metadata), item_id)
                    )
                conn.execute("INSERT INTO changes (op, id) VALUES ('add', ?)", (item_id,))
                seq = self._seq(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return created, seq

    def prune_changes(self, upto_seq: int) -> None:
        """Forget change rows up to ``upto_seq`` (they are inside a durable snapshot)."""
        with self._write_lock:
            self._writer.execute("DELETE FROM changes WHERE seq <= ?", (int(upto_seq),))

    # -- reads ---------------------------------------------------------------------------------
    @staticmethod
    def _seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='changes'").fetchone()
        return int(row[0]) if row else 0

    def last_seq(self) -> int:
        """The highest change sequence number committed so far (0 for a new store)."""
        return self._seq(self._reader())

    def changed_since(self, seq: int) -> tuple[np.ndarray, int]:
        """Ids touched by changes after ``seq`` and the last seq; None-safe for pruned logs."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT id, last FROM changes WHERE seq > ?", (int(seq),)
            ).fetchall()
            oldest = conn.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
            last = self._seq(conn)
        finally:
            conn.execute("COMMIT")
        if last > seq and (oldest is None or oldest > seq + 1):
            raise StoreError(
                f"the change log no longer reaches back to seq {seq}: rebuild from the items"
            )
        singles = np.array([r[0] for r in rows if r[1] is None], dtype=np.int64)
        runs = [np.arange(r[0], r[1] + 1, dtype=np.int64) for r in rows if r[1] is not None]
        return np.unique(np.concatenate([singles, *runs])), last

    def codes_of(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, codes) of the given ids that are stored (missing ids are skipped)."""
        conn = self._reader()
        out_ids: list[int] = []
        out_codes: list[bytes] = []
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            marks = ",".join("?" * len(chunk))
            for i, code in conn.execute(f"SELECT id, code FROM items WHERE id IN ({marks})", chunk):
                out_ids.append(i)
                out_codes.append(code)
        return self._as_arrays(out_ids, out_codes)

    def _as_arrays(self, ids: list[int], codes: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        arr = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), self.code_size)
        return np.array(ids, dtype=np.int64), arr

    def iter_all(self, batch: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Every stored (ids, codes) in batches, read in one consistent snapshot, with its seq."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            seq = self._seq(conn)
            cur = conn.execute("SELECT id, code FROM items ORDER BY id")
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    break
                ids, codes = self._as_arrays([r[0] for r in rows], [r[1] for r in rows])
                yield ids, codes, seq
        finally:
            conn.execute("COMMIT")

    def count(self) -> int:
        """How many items are stored: one row of ``meta`` (kept by every write), O(1)."""
        row = self._reader().execute("SELECT value FROM meta WHERE key='count'").fetchone()
        return int(row[0])

    def get(self, item_id: int) -> Item:
        row = (
            self._reader()
            .execute(
                "SELECT id, code, metadata, EXISTS (SELECT 1 FROM thumbnails t WHERE t.id = items.id) "
                "FROM items WHERE id=?",
                (int(item_id),),
            )
            .fetchone()
        )
        if row is None:
            raise UnknownItemError(item_id)
        return Item(id=row[0], code=row[1], metadata=json.loads(row[2]), has_thumbnail=bool(row[3]))

    def metadata_of(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Metadata of the given ids (ids not stored are absent from the result)."""
        conn = self._reader()
        ids = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for s in range(0, len(ids), 500):
            chunk = ids[s : s + 500]
            marks = ",".join("?" * len(chunk))
            for i, text in conn.execute(
                f"SELECT id, metadata FROM items WHERE id IN ({marks})", chunk
            ):
                out[i] = json.loads(text)
        return out

    def thumbnail(self, item_id: int) -> bytes | None:
        """The item's JPEG thumbnail, None when it has none; unknown ids raise."""
        row = (
            self._reader()
            .execute(
                "SELECT t.jpeg, i.id FROM items i LEFT JOIN thumbnails t ON t.id = i.id "
                "WHERE i.id=?",
                (int(item_id),),
            )
            .fetchone()
        )
        if row is None:
            raise UnknownItemError(item_id)
        return row[0]

    def list_items(self, after: int, limit: int) -> list[Item]:
        """Up to ``limit`` items with ids above ``after``, ascending (codes and metadata)."""
        rows = (
            self._reader()
            .execute(
                "SELECT id, code, metadata, EXISTS (SELECT 1 FROM thumbnails t WHERE t.id = items.id) "
                "FROM items WHERE id > ? ORDER BY id LIMIT ?",
                (int(after), int(limit)),
            )
            .fetchall()
        )
        return [
            Item(id=r[0], code=r[1], metadata=json.loads(r[2]), has_thumbnail=bool(r[3]))
            for r in rows
        ]

    def iter_metadata(
        self, batch: int = 50_000
    ) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
        """Every stored (ids, metadata) in batches, ascending ids, in one consistent snapshot."""
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            cur = conn.execute("SELECT id, metadata FROM items ORDER BY id")
            while rows := cur.fetchmany(batch):
                yield [r[0] for r in rows], [json.loads(r[1]) for r in rows]
        finally:
            conn.execute("COMMIT")
