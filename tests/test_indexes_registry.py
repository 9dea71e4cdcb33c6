"""indexes.registry: backends registered by decorator, looked up by create_index / load_index.

The toy backend below lives only in this test module: registering it must be enough for
``create_index("toy:...")``, ``save`` and ``load_index`` to work, with no edit of the factory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import indexes
from indexes import (
    BinaryIndex,
    IndexFileError,
    IndexSpec,
    create_index,
    hamming_scan,
    load_index,
    register_backend,
)
from indexes.storage import npy_bytes, npy_load, read_index_file, write_index_file

BUILTIN = {"flat", "ivf", "hnsw", "hash", "multihash", "milvus"}


def hamming(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    return (np.unpackbits(q, axis=1)[:, None, :] != np.unpackbits(db, axis=1)[None, :, :]).sum(-1)


@register_backend("toy", syntax="toy[:CAPACITY]")
class ToyIndex(BinaryIndex):
    """Brute force over a dict of codes, holding at most ``capacity`` codes (spec ``toy:N``)."""

    kind = "toy"
    backend = "toy-numpy"
    supports = frozenset({"add", "remove", "replace", "search", "range_search", "get", "save"})

    def __init__(self, bits: int, spec: str = "toy", capacity: int = 1000) -> None:
        super().__init__(bits, spec)
        self.capacity = int(capacity)
        self._codes: dict[int, np.ndarray] = {}

    @classmethod
    def from_spec(cls, spec: IndexSpec, bits: int, **options: Any) -> ToyIndex:
        capacity = spec.int_arg("toy or toy:CAPACITY")
        if capacity is not None:
            options.setdefault("capacity", capacity)
        return cls(bits, spec.text, **options)

    @classmethod
    def load(cls, path: str, bits: int | None = None, **overrides: Any) -> ToyIndex:
        header, sections = read_index_file(path, bits)
        options = {**header["options"], **overrides}
        index = cls(int(header["bits"]), header["spec"], **options)
        index.metadata = header["metadata"]
        index.add(npy_load(sections["ids"], "ids", path), npy_load(sections["codes"], "c", path))
        return index

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(self._codes), dtype=np.int64)
        codes = np.array([self._codes[int(i)] for i in ids], dtype=np.uint8)
        return ids, codes.reshape(len(ids), self.code_size)

    def _raw_add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        if len(self._codes) + len(ids) > self.capacity:
            raise ValueError(f"the toy index holds at most {self.capacity} codes")
        self._codes.update({int(i): c.copy() for i, c in zip(ids, codes, strict=True)})

    def _raw_remove(self, ids: np.ndarray) -> None:
        for i in ids:
            del self._codes[int(i)]

    def _raw_search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids, stored = self._arrays()
        dist = hamming(codes, stored)
        order = np.argsort(dist, axis=1)[:, :k]
        return np.take_along_axis(dist, order, 1).astype(np.int32), ids[order]

    def _raw_range_search(
        self, codes: np.ndarray, radius: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, stored = self._arrays()
        dist = hamming(codes, stored)
        hits = [np.nonzero(row <= radius)[0] for row in dist]
        lims = np.concatenate([[0], np.cumsum([len(h) for h in hits])]).astype(np.int64)
        d = np.concatenate([row[h] for row, h in zip(dist, hits, strict=True)]).astype(np.int32)
        return lims, d, np.concatenate([ids[h] for h in hits]).astype(np.int64)

    def _raw_get(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self._codes[int(i)] for i in ids])

    def _raw_save(self, path: str | os.PathLike[str]) -> None:
        ids, codes = self._arrays()
        header = {"backend": self.backend, "kind": self.kind, "spec": self.spec}
        header |= {"bits": self.bits, "count": len(self), "metadata": self.metadata}
        header["options"] = {"capacity": self.capacity}
        write_index_file(path, header, {"ids": npy_bytes(ids), "codes": npy_bytes(codes)})


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    centres = rng.integers(0, 256, (6, 4), dtype=np.uint8)
    db = centres[rng.integers(0, 6, 200)] ^ (rng.random((200, 4)) < 0.08).astype(np.uint8)
    ids = rng.choice(10**6, 200, replace=False).astype(np.int64)
    return db, ids, db[rng.integers(0, 200, 7)]


def test_toy_backend_is_created_saved_and_loaded_through_the_factory(data, tmp_path):
    db, ids, q = data
    index = create_index("toy:500", 32)
    assert type(index) is ToyIndex and index.capacity == 500 and index.spec == "toy:500"
    index.add(ids, db)
    index.metadata = {"note": "toy"}
    dist, got = index.search(q, 15)
    truth = hamming(q, db)
    for r in range(len(q)):  # the base class's (distance, id) order, tie groups completed
        order = np.lexsort((ids, truth[r]))[:15]
        assert got[r].tolist() == ids[order].tolist()
        assert dist[r].tolist() == truth[r][order].tolist()
    index.save(tmp_path / "toy.idx")
    loaded = load_index(tmp_path / "toy.idx", bits=32, capacity=300)
    assert type(loaded) is ToyIndex and loaded.capacity == 300 and loaded.spec == "toy:500"
    assert loaded.metadata == {"note": "toy"}
    np.testing.assert_array_equal(loaded.ids(), np.sort(ids))
    np.testing.assert_array_equal(loaded.search(q, 15)[1], got)
    with pytest.raises(ValueError, match="toy:CAPACITY"):
        create_index("toy:many", 32)
    with pytest.raises(ValueError, match="nprobe"):  # an option toy does not take
        create_index("toy", 32, nprobe=4)


def test_registered_names_cover_the_builtins_and_the_toy():
    assert set(indexes.backend_names()) == BUILTIN | {"toy"}


@pytest.mark.parametrize("spec", ["bogus", "flatt", "ivf2:16", "toys:3"])
def test_unknown_spec_error_lists_every_registered_name(spec):
    with pytest.raises(ValueError) as err:
        create_index(spec, 64)
    message = str(err.value)
    assert repr(spec) in message and "\n" not in message
    for name in BUILTIN | {"toy"}:
        assert name in message, name


def test_a_name_cannot_be_taken_twice_nor_by_a_non_index():
    with pytest.raises(ValueError, match="already registered by ToyIndex"):
        register_backend("toy")(type("Other", (ToyIndex,), {}))
    with pytest.raises(TypeError, match="BinaryIndex subclass"):
        register_backend("dict")(dict)
    with pytest.raises(ValueError, match="not valid"):
        register_backend("Bad:Name")
    assert create_index("toy", 32).__class__ is ToyIndex  # the registry is unchanged


def test_file_of_an_unregistered_kind_or_foreign_backend_is_refused(tmp_path):
    for kind, backend in (("nosuch", "faiss"), ("toy", "faiss"), ("flat", "toy-numpy")):
        path = tmp_path / f"{kind}-{backend}.idx"
        header = {"backend": backend, "kind": kind, "spec": kind, "bits": 32, "count": 0}
        write_index_file(path, header, {})
        with pytest.raises(IndexFileError, match="unknown index kind"):
            load_index(path)


# -- every existing spec syntax still builds the same backend ----------------------------------
@pytest.mark.parametrize(
    ("spec", "cls", "options"),
    [
        ("flat", "FlatIndex", {}),
        (" FLAT ", "FlatIndex", {}),
        ("flat:", "FlatIndex", {}),
        ("ivf", "IVFIndex", {"nlist": None, "nprobe": 16}),
        ("ivf:128", "IVFIndex", {"nlist": 128, "nprobe": 16}),
        ("hnsw", "HNSWIndex", {"m": 32, "ef_search": 64, "ef_construction": 40}),
        ("hnsw:12", "HNSWIndex", {"m": 12, "ef_search": 64, "ef_construction": 40}),
        ("hash", "HashIndex", {"nhash": 1, "b": 16}),
        ("hash:20", "HashIndex", {"nhash": 1, "b": 20}),
        ("multihash", "HashIndex", {"nhash": 4, "b": 16}),
        ("multihash:2x24", "HashIndex", {"nhash": 2, "b": 24}),
        ("MultiHash:2X24", "HashIndex", {"nhash": 2, "b": 24}),
    ],
)
def test_builtin_spec_syntax(spec, cls, options):
    index = create_index(spec, 64)
    assert type(index).__name__ == cls and index.options() == options


@pytest.mark.parametrize("spec", ["flat:cpu", "ivf:abc", "hnsw:x", "hash:2x8", "multihash:4"])
def test_bad_argument_of_a_known_backend_names_its_syntax(spec):
    name = spec.split(":")[0]
    with pytest.raises(ValueError, match=f"index spec '{spec}' is not valid: expected {name} or"):
        create_index(spec, 64)


def test_milvus_spec_keeps_the_uri_case_and_passes_options(monkeypatch):
    from indexes import milvus_index

    seen: dict[str, Any] = {}

    def fake_init(self, bits, spec="milvus", **options):
        seen.update(bits=bits, spec=spec, **options)

    monkeypatch.setattr(milvus_index.MilvusIndex, "__init__", fake_init)
    create_index(" milvus:/Data/Codes.DB ", 32, collection="c")
    assert seen == {"bits": 32, "spec": "milvus:/Data/Codes.DB", "uri": "/Data/Codes.DB"} | {
        "collection": "c"
    }


def test_milvus_is_registered_without_pymilvus(tmp_path):
    """Registration imports no pymilvus: only building a Milvus index needs it."""
    code = (
        "import sys; sys.modules['pymilvus'] = None\n"
        "import indexes\n"
        "assert 'milvus' in indexes.backend_names()\n"
        "assert 'pymilvus' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "try:\n"
        "    indexes.create_index('milvus:x.db', 32)\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "needs pymilvus" in out.stdout


def test_import_indexes_loads_no_backend_until_first_use():
    code = (
        "import sys, indexes\n"
        "print('faiss' in sys.modules, 'indexes.faiss_index' in sys.modules)\n"
        "indexes.create_index('flat', 64)\n"
        "print('indexes.faiss_index' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True"]


# -- warm_up ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "compiles"),
    [
        ("flat", True),
        ("hash", True),
        ("multihash:2x16", True),
        ("ivf", False),
        ("hnsw", False),
        ("toy", False),
    ],
)
def test_warm_up_compiles_the_scan_kernel_only_for_scan_backends(spec, compiles, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(hamming_scan, "warm_up", calls.append)
    index = create_index(spec, 48)
    index.add([3, 1], np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]], np.uint8))
    assert index.warm_up() is None
    assert calls == ([6] if compiles and hamming_scan.AVAILABLE else [])
    np.testing.assert_array_equal(
        index.search(np.array([[1, 2, 3, 4, 5, 6]], np.uint8), 2)[1], [[3, 1]]
    )
