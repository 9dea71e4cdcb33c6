"""``hashkd index build`` / ``hashkd index search``: index code sets from the command line.

Loaded by ``hashkd.cli`` through the ``hashkd.commands`` entry point (``indexes.cli:register``);
this module reads code sets directly with numpy (``codes.npy`` uint8 n x K/8, ``ids.npy``
int64, ``paths.json`` the images' paths) and imports nothing from ``hashkd``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from indexes.factory import create_index, load_index


def read_codeset(directory: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``codes.npy`` and ``ids.npy`` (ids default to 0..n-1) of a code set directory."""
    path = Path(directory)
    if not path.is_dir():
        raise ValueError(f"code set directory {str(path)!r} does not exist")
    if not (path / "codes.npy").is_file():
        raise ValueError(f"{str(path)!r} is not a code set: codes.npy is missing")
    try:
        codes = np.load(path / "codes.npy", allow_pickle=False)
        ids = (
            np.load(path / "ids.npy", allow_pickle=False)
            if (path / "ids.npy").is_file()
            else np.arange(codes.shape[0], dtype=np.int64)
        )
    except ValueError as exc:
        raise ValueError(f"code set {str(path)!r} could not be read: {exc}") from None
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(
            f"{str(path / 'codes.npy')!r} must hold uint8 n x K/8 codes, got {codes.dtype} {codes.shape}"
        )
    if ids.ndim != 1 or ids.shape[0] != codes.shape[0] or ids.dtype.kind not in "iu":
        raise ValueError(
            f"{str(path / 'ids.npy')!r} must hold {codes.shape[0]} integer ids, got {ids.dtype} {ids.shape}"
        )
    return codes, ids.astype(np.int64)


def read_paths(directory: str | os.PathLike[str], count: int) -> list[str] | None:
    """The source path of every code of a code set (``paths.json``), or None without one."""
    path = Path(directory) / "paths.json"
    if not path.is_file():
        return None
    try:
        paths = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(paths, list) or len(paths) != count:
        raise ValueError(f"{str(path)!r} must hold a JSON list of {count} paths, one per code")
    return [str(p) for p in paths]


def _database_paths(args: argparse.Namespace, index: Any) -> dict[int, str] | None:
    """id -> source path of the indexed code set (--database, else the one the index was built
    from, when it is still there), or None when no paths are known."""
    folder = args.database or index.metadata.get("source")
    if not folder or not (Path(folder) / "codes.npy").is_file():
        if args.database:
            raise ValueError(f"--database {args.database!r} is not a code set: no codes.npy")
        return None
    codes, ids = read_codeset(folder)
    paths = read_paths(folder, len(ids))
    return None if paths is None else dict(zip(ids.tolist(), paths, strict=True))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for name in ("nprobe", "ef_search", "collection"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def run_build(args: argparse.Namespace) -> int:
    codes, ids = read_codeset(args.codeset)
    index = create_index(args.spec, codes.shape[1] * 8, threads=args.threads, **_options(args))
    index.metadata["source"] = str(Path(args.codeset).resolve())
    index.add(ids, codes)
    index.save(args.out)
    print(f"indexed {len(index)} {index.bits}-bit codes with spec {index.spec!r} into {args.out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    if (args.k is None) == (args.radius is None):
        raise ValueError(
            "give exactly one of --k K (nearest neighbours) or --radius R (Hamming radius)"
        )
    if args.k is not None and args.k <= 0:
        raise ValueError(f"--k {args.k} is not valid: expected a positive integer")
    if args.radius is not None and args.radius < 0:
        raise ValueError(f"--radius {args.radius} is not valid: expected an integer >= 0")
    index = load_index(args.index, threads=args.threads, **_options(args))
    queries, _ = read_codeset(args.query)
    if queries.shape[1] * 8 != index.bits:
        raise ValueError(
            f"query codes are {queries.shape[1] * 8} bits long but index {args.index!r} holds {index.bits}-bit codes"
        )
    if args.k is not None:
        dist, ids = index.search(queries, args.k)
        rows = [(d[i >= 0], i[i >= 0]) for d, i in zip(dist, ids, strict=True)]
    else:
        rows = index.range_search(queries, args.radius)
    out: dict[str, Any] = {
        "ids": [i.tolist() for _, i in rows],
        "distances": [d.tolist() for d, _ in rows],
    }
    sources = _database_paths(args, index)
    if sources is not None:
        out["paths"] = [[sources.get(int(j)) for j in i] for _, i in rows]
    query_paths = read_paths(args.query, len(queries))
    if query_paths is not None:
        out["query_paths"] = query_paths
    Path(args.json).write_text(json.dumps(out))
    print(f"searched {len(rows)} queries; results written to {args.json}")
    for q in range(min(len(rows), 3)):  # a glance at the first queries' nearest hits
        name = query_paths[q] if query_paths is not None else f"query {q}"
        hits = [
            f"{sources.get(int(j), j) if sources is not None else j} (d={int(d)})"
            for d, j in zip(rows[q][0][:5], rows[q][1][:5], strict=True)
        ]
        print(f"{name}: " + ", ".join(hits))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``index`` with its ``build`` and ``search`` sub-commands to the ``hashkd`` parser."""
    parser = subparsers.add_parser(
        "index",
        help="build and search binary code indexes (FAISS or Milvus)",
        description="Build an index file from a code set, or search one with the codes of another code set.",
    )
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--index-threads",
        dest="threads",
        metavar="N",
        type=int,
        default=None,
        help="OpenMP threads FAISS may use (default: all cores)",
    )
    common.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="ivf / milvus BIN_IVF_FLAT: inverted lists visited per query (default 16)",
    )
    common.add_argument(
        "--ef-search",
        dest="ef_search",
        type=int,
        default=None,
        help="hnsw: candidate list size per query (default 64)",
    )
    common.add_argument(
        "--collection", default=None, help="milvus: collection name (default hashkd_codes)"
    )

    build = sub.add_parser(
        "build",
        parents=[common],
        help="index a code set and save the index to one file",
        description="Index the codes of CODESET_DIR (codes.npy uint8 n x K/8, ids.npy int64) and save to --out.",
    )
    build.add_argument(
        "codeset", metavar="CODESET_DIR", help="code set directory holding codes.npy and ids.npy"
    )
    build.add_argument(
        "--index-spec",
        dest="spec",
        default="flat",
        help="index kind: flat (exact, default), flat:gpu, ivf[:NLIST], hnsw[:M], hash[:B], multihash[:NxB], milvus:URI",
    )
    build.add_argument(
        "--out", required=True, metavar="FILE", help="index file to write (written atomically)"
    )
    build.set_defaults(func=run_build)

    search = sub.add_parser(
        "search",
        parents=[common],
        help="search an index file with the codes of a query code set",
        description="Search FILE with every code of --query; write {'ids': [[...]], 'distances': [[...]]} "
        "to --json-out, one list per query in query order, nearest first, ties by ascending id; with "
        "'paths' (each hit's source file) when the indexed code set has paths.json, and "
        "'query_paths' when the query code set has.",
    )
    search.add_argument("index", metavar="FILE", help="index file written by 'hashkd index build'")
    search.add_argument(
        "--query", required=True, metavar="CODESET_DIR", help="code set whose codes are the queries"
    )
    search.add_argument(
        "--k",
        type=int,
        default=None,
        help="return the K nearest codes per query (lists are shorter when the index holds fewer)",
    )
    search.add_argument(
        "--radius",
        type=int,
        default=None,
        help="return every code within R bits, inclusive (distance <= R)",
    )
    search.add_argument(
        "--json-out",
        dest="json",
        required=True,
        metavar="FILE",
        help="JSON file to write the results to",
    )
    search.add_argument(
        "--database",
        default=None,
        metavar="CODESET_DIR",
        help="the indexed code set, to name each hit's source file (paths.json); default: the "
        "code set the index was built from, when it is still there",
    )
    search.set_defaults(func=run_search)
