"""Milvus backend: the same interface over a Milvus collection (extra ``milvus``).

The collection has an INT64 primary key ``id`` and a BINARY_VECTOR field ``code`` (dim = bits)
indexed with ``BIN_FLAT`` (exact, default) or ``BIN_IVF_FLAT`` (``nlist``/``nprobe``) under the
HAMMING metric. ``uri`` is a Milvus server (``http://host:19530``) or a local file path, which
runs milvus-lite embedded (milvus-lite 2.5.x; 3.x has no binary vectors). Consistency level
``Strong``: a search sees every completed write. Tested on milvus-lite and on a Milvus 2.3
standalone server (tests/test_indexes_milvus.py, docs/indexes.md).

The set of ids is mirrored in memory (loaded from the collection when it is opened) to report
duplicate and unknown ids before anything is written: keep one writing process per collection.
Milvus returns at most 16384 hits per query; a range search that reaches that limit raises
instead of returning a truncated list.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from indexes.base import BinaryIndex, check_bits
from indexes.registry import register_backend
from indexes.spec import IndexSpec
from indexes.storage import read_index_file, write_index_file

MAX_HITS = 16384
_INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))


@register_backend("milvus", syntax="milvus:URI")
class MilvusIndex(BinaryIndex):
    """A ``BinaryIndex`` stored in a Milvus collection (see the module docstring).

    Registered without importing pymilvus: the client is imported when an index is built.
    """

    kind = "milvus"
    backend = "milvus"
    supports = frozenset({"add", "remove", "replace", "search", "range_search", "get", "save"})

    def __init__(
        self,
        bits: int,
        spec: str = "milvus",
        uri: str | None = None,
        collection: str = "hashkd_codes",
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 16,
        token: str | None = None,
    ) -> None:
        super().__init__(check_bits(bits), spec)
        try:
            from pymilvus import DataType, MilvusClient
        except ImportError as exc:
            raise ValueError(
                f"the milvus backend needs pymilvus (pip install 'hashkd[milvus]'): {exc}"
            ) from None
        if not uri:
            raise ValueError(
                "the milvus backend needs a uri: a Milvus server URL or a local milvus-lite file path"
            )
        if index_type not in _INDEX_TYPES:
            raise ValueError(
                f"index_type={index_type!r} is not valid: expected one of {', '.join(_INDEX_TYPES)}"
            )
        if not _is_server(uri):
            uri = str(Path(uri).expanduser().resolve())
        self.uri, self.collection, self.index_type = uri, collection, index_type
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        self.exact = self.exact_range = index_type == "BIN_FLAT"
        self._client = MilvusClient(uri, token=token) if token else MilvusClient(uri)
        if self._client.has_collection(collection):
            self._check_existing()
            # A server does not load a collection into memory again after it restarts (nor
            # one another client released): searches and queries need it loaded.
            self._client.load_collection(collection)
            self._load_ids()
        else:
            schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("code", DataType.BINARY_VECTOR, dim=self.bits)
            params = self._client.prepare_index_params()
            extra = {"nlist": self.nlist} if index_type == "BIN_IVF_FLAT" else {}
            params.add_index(
                field_name="code", index_type=index_type, metric_type="HAMMING", params=extra
            )
            self._client.create_collection(
                collection, schema=schema, index_params=params, consistency_level="Strong"
            )

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> MilvusIndex:
        """``milvus:URI``: the URI (kept as written) is the ``uri`` option unless one is given."""
        if spec.arg:
            options.setdefault("uri", spec.arg)
        return cls(bits, spec.text, **options)

    def _check_existing(self) -> None:
        desc = self._client.describe_collection(self.collection)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        dim = fields.get("code", {}).get("params", {}).get("dim")
        if "id" not in fields or dim is None or int(dim) != self.bits:
            raise ValueError(
                f"Milvus collection {self.collection!r} at {self.uri!r} is not a {self.bits}-bit hashkd "
                f"collection (code dim {dim!r})"
            )

    def _load_ids(self) -> None:
        it = self._client.query_iterator(
            self.collection, batch_size=MAX_HITS, filter="id >= 0", output_fields=["id"]
        )
        chunks = []
        while True:
            rows = it.next()
            if not rows:
                break
            chunks.append(np.array([r["id"] for r in rows], dtype=np.int64))
        it.close()
        self._ids.__init__(np.concatenate(chunks) if chunks else None)

    def close(self) -> None:
        self._client.close()

    def drop(self) -> None:
        """Delete the whole collection (irreversible)."""
        with self._lock.write():
            self._client.drop_collection(self.collection)
            self._ids.__init__()

    # -- backend operations -----------------------------------------------------------------
    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        rows = [{"id": int(i), "code": c.tobytes()} for i, c in zip(ids, codes, strict=True)]
        for s in range(0, len(rows), 10_000):
            self._client.insert(self.collection, rows[s : s + 10_000])

    def _raw_remove(self, ids: np.ndarray) -> None:
        self._client.delete(self.collection, ids=[int(i) for i in ids])

    def _params(self, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = dict(extra)
        if self.index_type == "BIN_IVF_FLAT":
            params["nprobe"] = self.nprobe
        return {"metric_type": "HAMMING", "params": params}

    def _query(
        self, codes: np.ndarray, limit: int, params: dict[str, Any]
    ) -> list[list[dict[str, Any]]]:
        return self._client.search(
            self.collection,
            data=[c.tobytes() for c in codes],
            anns_field="code",
            limit=limit,
            search_params=params,
            output_fields=["id"],
        )

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > MAX_HITS:
            raise ValueError(f"k={k} is too large for Milvus: expected at most {MAX_HITS // 2}")
        hits = self._query(codes, k, self._params())
        dist = np.full((len(codes), k), -1, dtype=np.int32)
        ids = np.full((len(codes), k), -1, dtype=np.int64)
        for q, row in enumerate(hits):
            for j, h in enumerate(row):
                dist[q, j], ids[q, j] = int(round(h["distance"])), int(h["id"])
        return dist, ids

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Milvus keeps range_filter <= distance < radius for HAMMING: radius + 1 makes it inclusive.
        hits = self._query(codes, MAX_HITS, self._params(radius=radius + 1, range_filter=0))
        lims = np.zeros(len(codes) + 1, dtype=np.int64)
        dist, ids = [], []
        for q, row in enumerate(hits):
            if len(row) >= MAX_HITS:
                raise ValueError(
                    f"radius={radius} matches {MAX_HITS} or more codes, Milvus's limit per query: use a smaller radius"
                )
            lims[q + 1] = lims[q] + len(row)
            dist.extend(int(round(h["distance"])) for h in row)
            ids.extend(int(h["id"]) for h in row)
        return lims, np.array(dist, dtype=np.int32), np.array(ids, dtype=np.int64)

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        found: dict[int, bytes] = {}
        for s in range(0, len(ids), MAX_HITS):
            rows = self._client.query(
                self.collection, ids=[int(i) for i in ids[s : s + MAX_HITS]], output_fields=["code"]
            )
            for r in rows:
                code = r["code"]
                found[int(r["id"])] = code[0] if isinstance(code, list) else code
        return np.stack([np.frombuffer(found[int(i)], dtype=np.uint8) for i in ids])

    # -- persistence: a small file pointing at the collection -------------------------------
    def _raw_save(self, path: str | os.PathLike[str]) -> None:
        header = {
            "backend": "milvus",
            "kind": self.kind,
            "spec": self.spec,
            "bits": self.bits,
            "count": len(self),
            "options": {
                "uri": self.uri,
                "collection": self.collection,
                "index_type": self.index_type,
                "nlist": self.nlist,
                "nprobe": self.nprobe,
            },
            "metadata": self.metadata,
        }
        self._client.flush(self.collection)
        write_index_file(path, header, {})

    @classmethod
    def load(cls, path: str, bits: int | None = None, **overrides: Any) -> MilvusIndex:
        header, _ = read_index_file(path, bits)  # checks size, CRC and code length
        options = {**header.get("options", {}), **overrides}
        obj = cls(int(header["bits"]), str(header["spec"]), **options)
        obj.metadata = dict(header.get("metadata", {}))
        return obj
