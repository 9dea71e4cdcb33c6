"""Errors raised by the index backends.

Every error subclasses ``ValueError`` or ``KeyError`` so that the ``hashkd`` CLI dispatcher
prints it as one sentence and the service can map it to an HTTP status:
``DuplicateIdError`` -> 409, ``UnknownIdError`` -> 404, ``UnsupportedOperation`` -> 501 or 400,
``IndexFileError`` -> 400/500.
"""

from __future__ import annotations

from collections.abc import Sequence


def _preview(ids: Sequence[int], limit: int = 5) -> str:
    ids = [int(i) for i in ids]
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


class BinaryIndexError(ValueError):
    """Base class of the errors of the ``indexes`` package (a ``ValueError``)."""


class UnsupportedOperation(BinaryIndexError):
    """The backend cannot perform this operation (e.g. ``remove`` on HNSW); nothing was changed."""


class DuplicateIdError(BinaryIndexError):
    """``add`` was given ids that already exist (or repeats an id) without ``replace=True``."""

    def __init__(self, ids: Sequence[int], message: str | None = None) -> None:
        self.ids = [int(i) for i in ids]
        super().__init__(
            message
            or f"ids already in the index: {_preview(self.ids)}; use replace=True (upsert) to overwrite them"
        )


class UnknownIdError(KeyError):
    """``remove``/``get`` was given ids that are not in the index; nothing was changed."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = [int(i) for i in ids]
        super().__init__(f"ids not in the index: {_preview(self.ids)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class IndexFileError(BinaryIndexError):
    """An index file is missing, truncated, corrupted, foreign or of another code length."""
