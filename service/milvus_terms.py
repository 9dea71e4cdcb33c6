"""Metadata filters in cluster mode: the same terms as the SQLite store, as a Milvus expression.

Every item row of the cluster collection carries, next to its ``metadata`` JSON field, a JSON
field ``terms`` = ``{"t": [digest, ...]}``: one digest per ``(key, term)`` pair of
``service.terms.metadata_terms`` (a scalar, or each element of a list, of a top-level key), the
pair the embedded store writes into its ``terms`` table. A digest is the hex BLAKE2b-128 of
``key + "\\x1f" + term``: fixed-length, hexadecimal (so it needs no escaping inside a Milvus
string literal whatever the key or value holds) and collision-free in practice (2^-64 for a
pair among billions of terms).

A filter ``{key: [terms]}`` becomes one ``json_contains_any`` per key, joined by ``and``::

    json_contains_any(terms["t"], ["<digest of key=t1>", "<digest of key=t2>"]) and ...

so it has exactly the embedded semantics (a list means any of, several keys all of them,
numbers by value, list-valued fields match by any element) while Milvus evaluates it inside
the exact ``BIN_FLAT`` search.
"""

from __future__ import annotations

import hashlib
from typing import Any

from service.terms import Filter, metadata_terms

TERMS_KEY = "t"


def term_digest(key: str, term: str) -> str:
    """The hex BLAKE2b-128 digest naming one (key, term) pair. (A lone surrogate, which no
    stored item can hold since Milvus stores UTF-8, is digested as is: such a filter matches
    nothing rather than failing.)"""
    data = f"{key}\x1f{term}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def terms_field(metadata: dict[str, Any]) -> dict[str, list[str]]:
    """The value of an item's ``terms`` JSON field."""
    return {TERMS_KEY: [term_digest(k, t) for k, t in metadata_terms(metadata)]}


def filter_expression(flt: Filter | None) -> str:
    """The Milvus boolean expression selecting the items a validated filter matches ("" = all)."""
    if not flt:
        return ""
    parts = []
    for key, terms in flt.items():
        digests = ", ".join(f'"{term_digest(key, t)}"' for t in terms)
        parts.append(f'json_contains_any(terms["{TERMS_KEY}"], [{digests}])')
    return " and ".join(parts)
