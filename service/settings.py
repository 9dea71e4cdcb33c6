"""Service settings: command-line flags and ``HASHKD_*`` environment variables, one model.

``Settings`` is a pydantic-settings model, so every field can come from the environment
(``HASHKD_MODEL``, ``HASHKD_STORE``, ``HASHKD_MAX_UPLOAD_BYTES`` ...) and keyword
arguments (the CLI flags) take precedence over the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


class Settings(BaseSettings):
    """Everything ``create_app`` needs; validated once, read-only afterwards."""

    model_config = SettingsConfigDict(env_prefix="HASHKD_", extra="forbid", frozen=True)

    # What to serve.
    model: Path = Field(description="Query model artifact directory (the student).")
    database_model: Path | None = Field(
        None,
        description="Model artifact that encodes stored items (asymmetric mode); default: --model.",
    )
    store: Path | None = Field(
        None,
        description="Directory of the durable item store (SQLite) and index snapshots "
        "(required unless --cluster).",
    )
    index_spec: str = Field(
        "flat", description="Index spec for indexes.create_index (flat, ivf:1024, ...)."
    )
    codes: Path | None = Field(
        None,
        description="A code set directory (hashkd encode, made by the database model) loaded "
        "into the store at start-up; a restart does not add it twice.",
    )
    data_root: Path | None = Field(
        None,
        description="Folder the code set's relative paths are under (thumbnails are made from "
        "those files); default: the folder recorded in the code set (meta.json path_root).",
    )

    # Cluster mode.
    cluster: bool = Field(
        False,
        description="Keep every item in the Milvus collection of --index-spec milvus:URI, shared "
        "by every replica (no local store).",
    )
    collection: str = Field(
        "hashkd_items",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,239}$",
        description="Milvus collection of the items (cluster mode; its id blocks live in "
        "COLLECTION_idblocks).",
    )
    milvus_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Seconds a Milvus call may take before a 503."
    )
    consistency: Literal["bounded", "strong"] = Field(
        "bounded",
        description="Read consistency in cluster mode: bounded (Milvus's Bounded staleness, "
        "a few ms; a consistency token gives read-your-writes) or strong (every read waits "
        "for Milvus's next time tick, ~200 ms).",
    )
    thumbnail_store: Path | None = Field(
        None,
        description="Cluster mode: a directory every replica shares that holds the thumbnails "
        "(default: cluster mode keeps no thumbnails).",
    )

    # Network and security.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key_env: str | None = Field(
        None, description="Name of an environment variable holding the API key required for writes."
    )
    api_key: SecretStr | None = Field(
        None, description="The API key itself (HASHKD_API_KEY); prefer api_key_env."
    )

    # Encoding.
    backend: Literal["auto", "torch", "torchscript", "onnx"] = "auto"
    precision: Literal["auto", "fp32", "int8"] = Field(
        "auto", description="ONNX graph: int8 when the artifact has one (auto), or fp32 / int8."
    )
    threads: int | None = Field(
        None, ge=1, description="Encoder threads (torch/onnxruntime intra-op)."
    )
    search_threads: int = Field(1, ge=1, description="OpenMP threads per FAISS search call.")
    batching: bool = Field(
        True, description="Encode concurrent search requests together (micro-batching)."
    )
    max_batch: int = Field(32, ge=1, le=1024, description="Most images in one micro-batch.")
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait for a micro-batch to fill."
    )

    # Input limits.
    max_upload_bytes: int = Field(
        10 * MB, ge=1024, description="Largest accepted image upload, in bytes."
    )
    max_image_pixels: int = Field(
        40_000_000, ge=64, description="Largest decoded image (width x height)."
    )
    max_images: int = Field(
        64, ge=1, le=10_000, description="Most images in one batch search or add."
    )
    max_codes_bytes: int = Field(256 * MB, ge=1024, description="Largest codes.npy/ids.npy upload.")
    max_metadata_bytes: int = Field(
        1 * MB, ge=2, description="Largest metadata JSON in one request."
    )
    max_range_results: int = Field(
        10_000, ge=1, description="Most results returned by one radius search."
    )
    max_search_work: int = Field(
        65_536,
        ge=1,
        description="Most ranked results one search request may ask for: codes x (offset + k), "
        "or codes x (max_range_results + 1) for a radius search (ranks past the collection's "
        "size do not count); over it the request is refused with 422.",
    )
    max_request_pixels: int = Field(
        160_000_000,
        ge=64,
        description="Most decoded pixels (width x height, summed over its images) in one request.",
    )

    # Store.
    thumbnail_px: int = Field(
        96, ge=0, le=512, description="Longest side of stored thumbnails (0: none)."
    )
    snapshot_every: int = Field(
        1000, ge=1, description="Snapshot the index after this many changes."
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="SQLite synchronous pragma (FULL: an acknowledged write survives power loss).",
    )

    access_log: bool = False
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("model", "database_model")
    @classmethod
    def _artifact_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "config.json").is_file():
            raise ValueError(
                f"{str(value)!r} is not a model artifact: expected a directory with config.json"
            )
        return value

    @field_validator("codes")
    @classmethod
    def _codeset_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / "codes.npy").is_file():
            raise ValueError(
                f"{str(value)!r} is not a code set: expected a directory with codes.npy "
                "(written by hashkd encode)"
            )
        return value

    @field_validator("index_spec")
    @classmethod
    def _spec(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the index spec is empty: expected e.g. 'flat'")
        return value.strip()

    @model_validator(mode="after")
    def _mode(self) -> Settings:
        if self.cluster:
            if not self.index_spec.startswith("milvus:") or not self.milvus_uri:
                raise ValueError(
                    f"--cluster needs --index-spec milvus:URI (a Milvus server), got {self.index_spec!r}"
                )
        elif self.store is None:
            raise ValueError(
                "store is required (flag --store or env HASHKD_STORE) unless --cluster"
            )
        elif self.thumbnail_store is not None:
            raise ValueError(
                f"--thumbnail-store {str(self.thumbnail_store)!r} is for cluster mode: the "
                "embedded mode keeps thumbnails in its store"
            )
        return self

    @model_validator(mode="after")
    def _resolve_api_key(self) -> Settings:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "")
            if not value:
                raise ValueError(
                    f"environment variable {self.api_key_env!r} (--api-key-env) is unset or empty: "
                    "expected it to hold the API key"
                )
            object.__setattr__(self, "api_key", SecretStr(value))
        return self

    @property
    def asymmetric(self) -> bool:
        """True when stored items and queries are encoded by different model artifacts."""
        return (
            self.database_model is not None
            and self.database_model.resolve() != self.model.resolve()
        )

    @property
    def milvus_uri(self) -> str:
        """The URI of ``--index-spec milvus:URI`` ("" for other specs)."""
        return (
            self.index_spec.removeprefix("milvus:") if self.index_spec.startswith("milvus:") else ""
        )

    @property
    def db_model(self) -> Path:
        return self.database_model if self.database_model is not None else self.model


def settings_error_message(exc: ValidationError) -> str:
    """One sentence for the first error of a settings ``ValidationError`` (for the CLI)."""
    err = exc.errors()[0]
    if not err.get("loc"):  # a check across fields: its message names them
        return str(err.get("msg", "invalid settings")).removeprefix("Value error, ")
    where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        return (
            f"{where} is required (flag --{where.replace('_', '-')} or env HASHKD_{where.upper()})"
        )
    value = err.get("input")
    if isinstance(value, (str, int, float, Path)) and not isinstance(value, bool):
        return f"{where}={value!r} is not valid: {msg}"
    return f"{where}: {msg}"
