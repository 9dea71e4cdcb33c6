"""Bounded JSON decoding for every JSON input of the API (metadata, filters, code lists).

Python's ``json`` decoder recurses once per nesting level: a few kB of ``[[[[...]]]]`` raise
``RecursionError`` deep inside the decoder. So the size and the nesting depth of untrusted
JSON are checked *before* decoding, by a linear pass that ignores brackets inside strings:
string literals are blanked with one regular expression (C speed) and the depth is the
running sum of opening minus closing brackets (numpy). Then the text is decoded, refusing
``NaN``/``Infinity`` (not JSON, and a stored ``NaN`` could not be sent back in a response).

Problems raise :class:`service.errors.ApiError`: 413 over the size limit, 422 otherwise.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

from service.errors import ApiError

#: The deepest nesting accepted in any JSON input (objects and lists count one level each).
MAX_JSON_DEPTH = 32

#: A ``\\uD800``-``\\uDFFF`` escape: the raw text is valid UTF-8, so lone surrogates can only
#: come from escapes; texts without any are not walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def json_depth(data: bytes) -> int:
    """The deepest bracket nesting of JSON text (brackets inside strings do not count)."""
    raw = np.frombuffer(_STRING.sub(b'""', data), dtype=np.uint8)
    if not raw.size:
        return 0
    steps = np.isin(raw, _OPEN).astype(np.int64) - np.isin(raw, _CLOSE).astype(np.int64)
    return int(max(0, np.cumsum(steps).max()))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_bounded(
    text: str | bytes, what: str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """Decode untrusted JSON ``text`` after checking its size and nesting depth."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise ApiError(413, f"{what} is {len(data)} bytes: expected at most {max_bytes}")
    depth = json_depth(data)
    if depth > max_depth:
        raise ApiError(
            422, f"{what} is nested {depth} levels deep: expected at most {max_depth} levels"
        )
    try:
        # orjson is several times faster (bulk metadata: 100,000 objects a request), but it
        # reads integers past 64 bits as floats: text with 19+ digits in a row goes to Python's
        if _LONG_DIGITS.search(data):
            raise orjson.JSONDecodeError("long integer", "", 0)
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        # what orjson refuses (invalid text, NaN, lone surrogates) gets Python's decoder: the
        # same values as before, and its error message for what is not JSON
        try:
            value = json.loads(data, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, huge ints, NaN
            raise ApiError(422, f"{what} is not valid JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(data):  # only an escape can make a lone surrogate
        check_unicode(value, what)
    return value


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_unicode(value: Any, what: str) -> None:
    """Refuse (422) JSON whose strings or keys hold a lone surrogate such as ``"\\ud800"``:
    valid JSON escapes, but not Unicode text, so they could be neither stored nor sent back."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = [k for k in item if isinstance(k, str)]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            if _lone_surrogate(text):
                raise ApiError(
                    422,
                    f"{what} holds the string {text[:40].encode('utf-8', 'backslashreplace').decode()!r} "
                    "with a lone surrogate (an unpaired \\ud800-\\udfff escape): expected Unicode text",
                )
