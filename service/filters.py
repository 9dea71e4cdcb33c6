"""Metadata filters: the filter language of the search endpoints and the terms it matches.

A filter is a JSON object over the items' top-level metadata keys::

    {"label": "cat"}                         label is "cat"
    {"label": ["cat", "dog"]}                label is "cat" or "dog" (a list means any of)
    {"label": "cat", "split": "val"}         several keys: all of them (AND)

Values are scalars (string, number, true/false, null). An item whose metadata value is a
list matches when any of its elements is one of the wanted values (``{"labels": 3}`` matches
``{"labels": [1, 3]}``), so the ``labels`` lists of bulk-added codes can be filtered on.
Numbers compare by value (``1`` matches ``1.0``, not ``"1"`` or ``true``).

Matching goes through *terms*: each item stores one ``(key, term)`` row per scalar (or list
element) of its top-level metadata (``service/store.py``); a filter is a set of
``(key, [terms])`` conditions answered by the store's term index.
"""

from __future__ import annotations

import json
from typing import Any

from service.errors import ApiError
from service.jsonlimits import check_unicode, loads_bounded
from service.terms import Filter, metadata_terms, term

#: Most keys in one filter.
MAX_FILTER_KEYS = 16
#: Most wanted values in one filter (over all keys).
MAX_FILTER_VALUES = 1024
#: Longest accepted filter, as JSON text.
MAX_FILTER_BYTES = 64 * 1024
#: Longest metadata key a filter may name.
MAX_KEY_CHARS = 256

_SCALARS = (str, int, float, bool, type(None))


def check_filter(value: Any) -> Filter | None:
    """Validate a decoded filter object; return it as {key: [terms]} (None for no filter)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(
            422,
            f"filter must be a JSON object of metadata keys to values, got {type(value).__name__}",
        )
    if not value:
        return None
    check_unicode(value, "filter")
    if len(value) > MAX_FILTER_KEYS:
        raise ApiError(422, f"filter has {len(value)} keys: expected at most {MAX_FILTER_KEYS}")
    out: Filter = {}
    total = 0
    for key, wanted in value.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise ApiError(
                422, f"filter key {key[:40]!r} is not valid: expected 1-{MAX_KEY_CHARS} characters"
            )
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values:
            raise ApiError(
                422, f"filter key {key!r} has an empty list: expected at least one value"
            )
        terms = []
        for v in values:
            t = term(v) if isinstance(v, _SCALARS) else None
            if t is None:
                raise ApiError(
                    422,
                    f"filter key {key!r} has the value {json.dumps(v)[:60]}: expected a string, "
                    "number, true/false, null or a list of them",
                )
            terms.append(t)
        total += len(terms)
        out[key] = sorted(set(terms))
    if total > MAX_FILTER_VALUES:
        raise ApiError(422, f"filter has {total} values: expected at most {MAX_FILTER_VALUES}")
    return out


def parse_filter(text: str | None) -> Filter | None:
    """A filter given as JSON text (a query parameter); None when absent or empty."""
    if text is None or not text.strip():
        return None
    return check_filter(loads_bounded(text, "filter", MAX_FILTER_BYTES))


def matches(metadata: dict[str, Any], flt: Filter | None) -> bool:
    """Whether an item's metadata satisfies a filter (the term index's reference semantics)."""
    if not flt:
        return True
    terms: dict[str, set[str]] = {}
    for key, t in metadata_terms(metadata):
        terms.setdefault(key, set()).add(t)
    return all(terms.get(key, set()) & set(wanted) for key, wanted in flt.items())
