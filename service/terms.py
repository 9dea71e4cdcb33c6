"""Terms: the canonical text of metadata scalars that the store's filter index holds.

Kept apart from ``service/filters.py`` (which validates requests) so that the store can use it
without importing the API's error types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

#: A validated filter: metadata key -> the terms any of which must match.
Filter = dict[str, list[str]]


def term(value: Any) -> str | None:
    """The canonical text of a scalar for the term index; None for non-scalars."""
    if type(value) is int:  # the common case first (labels)
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def metadata_terms(metadata: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The (key, term) pairs an item's metadata is found by (scalars and list elements)."""
    for key, value in metadata.items():
        if type(value) is not list:
            t = term(value)
            if t is not None:
                yield key, t
            continue
        seen: set[str] = set()
        for v in value:
            t = term(v)
            if t is not None and t not in seen:
                seen.add(t)
                yield key, t


def metadata_term_lists(metadata: Iterable[dict[str, Any]]) -> list[list[tuple[str, str]]]:
    """``list(metadata_terms(m))`` for every item, without a generator per item (bulk adds)."""
    out: list[list[tuple[str, str]]] = []
    for meta in metadata:
        pairs: list[tuple[str, str]] = []
        for key, value in meta.items():
            if type(value) is list:
                seen: set[str] = set()
                for v in value:
                    t = str(v) if type(v) is int else term(v)
                    if t is not None and t not in seen:
                        seen.add(t)
                        pairs.append((key, t))
            else:
                t = str(value) if type(value) is int else term(value)
                if t is not None:
                    pairs.append((key, t))
        out.append(pairs)
    return out
