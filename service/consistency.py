"""Read consistency of one request in cluster mode, and the consistency token.

Every request that reaches the catalog carries a :class:`RequestConsistency` in a context
variable (set by the routers' ``consistency`` dependency, visible in the worker threads the
request runs its blocking work in, since ``run_in_threadpool`` copies the context):

- ``level``: ``bounded`` (the default, ``--consistency``) or ``strong``;
- ``after``: the consistency token the request passed back (``X-Consistency-Token`` header or
  ``consistency_token`` query parameter), a Milvus write timestamp;
- ``written``: the newest Milvus write timestamp of this request's own writes, which the
  routers return as the token of the answer.

A token is the decimal text of a Milvus hybrid timestamp (physical milliseconds << 18 |
logical counter): an opaque string to clients (it does not fit a JavaScript number), larger is
newer. Milvus reads given it as their guarantee timestamp wait until the query nodes have
applied every write up to it, so a read that passes the token of a write sees that write,
whichever replica made it and whichever replica serves the read.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["bounded", "strong"]

TOKEN_HEADER = "X-Consistency-Token"
TOKEN_PARAM = "consistency_token"
#: Bits of the logical counter in a Milvus hybrid timestamp.
LOGICAL_BITS = 18
#: A token may name a time at most this far ahead of this replica's clock (clock skew between
#: the replica and Milvus); a read given a token waits for it, so a token from the far future
#: would hold the request until its timeout.
MAX_TOKEN_AHEAD_S = 60.0
TOKEN_DESCRIPTION = (
    "A consistency token from a write answer (cluster mode): this read then sees that write "
    "and every earlier one, whichever replica made it. Opaque decimal text."
)


@dataclass
class RequestConsistency:
    """How the reads of one request are served, and what its writes wrote (module docstring)."""

    level: Level = "bounded"
    after: int | None = None
    written: int = 0

    def note_write(self, timestamp: int) -> None:
        self.written = max(self.written, int(timestamp))

    @property
    def token(self) -> str | None:
        """The token naming this request's writes (None when it wrote nothing to Milvus)."""
        return str(self.written) if self.written else None

    def read_options(self, strong: bool = False) -> dict[str, Any]:
        """pymilvus keywords of a read: ``Strong``, ``Customized`` at the guarantee timestamp
        (the token, or this request's own newest write), else ``Bounded``."""
        if strong or self.level == "strong":
            return {"consistency_level": "Strong"}
        guarantee = max(self.after or 0, self.written)
        if guarantee:
            return {"consistency_level": "Customized", "guarantee_timestamp": guarantee}
        return {"consistency_level": "Bounded"}


_current: ContextVar[RequestConsistency | None] = ContextVar("hashkd_consistency", default=None)


def current() -> RequestConsistency:
    """This request's consistency; outside a request, a Bounded one that records nothing."""
    found = _current.get()
    return found if found is not None else RequestConsistency()


def parse_token(text: str) -> int:
    """The timestamp of a token; ValueError (one sentence) for anything else."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) <= 0:
        raise ValueError(
            f"consistency token {shown!r} is not valid: expected the decimal text of a write "
            "answer's consistency_token"
        )
    value = int(text)
    if value >= 2**63:
        raise ValueError(f"consistency token {shown!r} is not valid: it is too large")
    ahead = (value >> LOGICAL_BITS) / 1000.0 - time.time()
    if ahead > MAX_TOKEN_AHEAD_S:
        raise ValueError(
            f"consistency token {shown!r} names a time {ahead:.0f} s after this server's "
            "clock: expected a token from a write answer"
        )
    return value


def begin(level: Level, token: str | None) -> RequestConsistency:
    """Start a request's consistency (``token`` as sent, or None) and make it current."""
    state = RequestConsistency(level=level, after=parse_token(token) if token else None)
    _current.set(state)
    return state
