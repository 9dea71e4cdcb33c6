"""``hashkd serve``: run the search service with uvicorn.

Registered through the ``hashkd.commands`` entry point (``serve = "service.cli:register"``).
Every flag is optional on the command line when the matching ``HASHKD_*`` environment
variable is set (e.g. ``HASHKD_MODEL``, ``HASHKD_STORE``); flags win over the environment.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

# Flags that map one-to-one onto Settings fields (None: not given, let env/defaults decide).
_FIELDS = (
    "model",
    "database_model",
    "store",
    "index_spec",
    "codes",
    "data_root",
    "cluster",
    "collection",
    "milvus_timeout_s",
    "consistency",
    "thumbnail_store",
    "host",
    "port",
    "api_key_env",
    "backend",
    "precision",
    "threads",
    "search_threads",
    "batching",
    "max_batch",
    "max_upload_bytes",
    "max_image_pixels",
    "max_images",
    "thumbnail_px",
    "snapshot_every",
    "sqlite_synchronous",
    "access_log",
    "log_level",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve image search over a REST API (FastAPI + uvicorn)",
        description="Serve image search: encode uploads with a model artifact and search a durable "
        "binary index. Every option can also be set by an environment variable HASHKD_<NAME>.",
    )
    p.add_argument("--model", help="query model artifact directory (the student)")
    p.add_argument(
        "--database-model",
        help="model artifact that encodes stored items (asymmetric mode; "
        "e.g. the teacher); default: --model",
    )
    p.add_argument(
        "--store",
        help="store directory (SQLite items + index snapshots); created if needed; "
        "not used with --cluster",
    )
    p.add_argument("--index-spec", help="index spec for stored codes (default flat; e.g. ivf:1024)")
    p.add_argument(
        "--codes",
        metavar="DIR",
        help="a code set (hashkd encode, by the database model) to load into the store at "
        "start-up: ids, codes, labels, paths, and thumbnails from the files; idempotent",
    )
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="folder the code set's paths are relative to (default: the one recorded by encode)",
    )
    p.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cluster mode: every item lives in the Milvus collection of --index-spec milvus:URI, "
        "shared by all replicas (no --store); default off (embedded SQLite + index)",
    )
    p.add_argument(
        "--collection", help="Milvus collection of the items in cluster mode (default hashkd_items)"
    )
    p.add_argument(
        "--milvus-timeout-seconds",
        dest="milvus_timeout_s",
        metavar="SECONDS",
        type=float,
        help="seconds a Milvus call may take before the request answers 503 (default 10)",
    )
    p.add_argument(
        "--consistency",
        choices=["bounded", "strong"],
        help="cluster mode read consistency: bounded (default; a read may miss other replicas' "
        "latest writes unless it passes a consistency token) or strong (every read sees every "
        "acknowledged write, waiting for Milvus's next time tick; docs/service.md)",
    )
    p.add_argument(
        "--thumbnail-store",
        metavar="DIR",
        help="cluster mode: a directory all replicas share for the thumbnails (default: none kept)",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key required for writes (X-API-Key)",
    )
    p.add_argument(
        "--backend", choices=["auto", "torch", "torchscript", "onnx"], help="encoder backend"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "int8"],
        help="ONNX graph to run: the int8 one when the artifact has it (auto, the default), fp32 or int8",
    )
    p.add_argument("--threads", type=int, help="encoder threads")
    p.add_argument(
        "--index-threads",
        dest="search_threads",
        metavar="N",
        type=int,
        help="FAISS OpenMP threads per search (default 1)",
    )
    p.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="micro-batch concurrent search requests (default on)",
    )
    p.add_argument("--max-batch", type=int, help="most images per micro-batch (default 32)")
    p.add_argument(
        "--max-wait-seconds",
        metavar="SECONDS",
        type=float,
        help="longest micro-batch wait in seconds (default 0.002)",
    )
    p.add_argument("--max-upload-bytes", type=int, help="largest image upload (default 10 MiB)")
    p.add_argument(
        "--max-image-pixels", type=int, help="largest decoded image in pixels (default 40M)"
    )
    p.add_argument(
        "--max-request-images",
        dest="max_images",
        metavar="N",
        type=int,
        help="most images per batch request (default 64)",
    )
    p.add_argument("--thumbnail-px", type=int, help="stored thumbnail size (default 96; 0: none)")
    p.add_argument(
        "--snapshot-every", type=int, help="index snapshot after this many changes (default 1000)"
    )
    p.add_argument(
        "--sqlite-synchronous", choices=["FULL", "NORMAL"], help="SQLite durability (default FULL)"
    )
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="uvicorn access log",
    )
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """Validated Settings from the flags given (and HASHKD_* environment variables)."""
    from service.settings import Settings, settings_error_message

    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f, None) is not None}
    if (
        getattr(args, "max_wait_seconds", None) is not None
    ):  # the flag is in seconds, the setting ms
        given["max_wait_ms"] = args.max_wait_seconds * 1000.0
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ValueError(settings_error_message(exc)) from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.engine import check_models

    settings = settings_from_args(args)
    bits = check_models(settings)  # refuse mismatched code lengths before binding the port
    if settings.codes is not None:
        from service.codeset_loader import read_codeset

        read_codeset(settings.codes, bits, settings.db_model)  # one line before binding the port
    if not settings.cluster and settings.store is not None:
        from service.catalog import StoreInUseError, lock_store_folder

        Path(settings.store).mkdir(parents=True, exist_ok=True)
        try:  # another server on this store: one line now (the app takes the lock for real)
            lock_store_folder(Path(settings.store)).release()
        except StoreInUseError as exc:
            raise ValueError(str(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    if settings.codes is not None:
        from service.codeset_loader import quiet_load_errors

        logging.getLogger("uvicorn.error").addFilter(quiet_load_errors)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
    )
    return 0
