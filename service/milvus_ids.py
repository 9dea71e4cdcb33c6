"""New ids in cluster mode without a round trip per add: blocks of ids leased per replica.

The id space [0, 2^53) (integers a JavaScript number holds exactly) is cut into 2^33 blocks of
``BLOCK_SIZE`` = 2^20 ids. A replica that needs new ids leases whole blocks and then hands out
their ids in ascending order from memory, so an add without ids costs no Milvus read at all
(one lease, three Milvus calls, per 1,048,576 new ids of a replica; a restarted replica leases
a fresh block and the rest of its old one is never used).

Leasing a block (:meth:`IdAllocator._lease`): draw block numbers uniformly with the operating
system's random source; ask Milvus at ``Strong`` consistency, in one query per collection,
whether any item id lies in them or whether another replica leased them; write a lease row
(``<collection>_idblocks``: block, owner, time) for the free ones, then use them. So:

- an id stored, or a block leased, before the lease began is never handed out again;
- two replicas get the same block only if they draw the same number among 2^33 within the
  ~0.2 s between their check and their lease row: probability ≤ (leases in flight) / 2^33 per
  lease (8.6e9 blocks; a lease happens once per million ids of a replica);
- explicit ids (``ids`` on an add, a ``PUT`` that creates an item) that lie in a leased block
  and are not stored are refused with 409 (:class:`ReservedIdError`): those ids belong to the
  replica holding the block, which would hand them out later and overwrite the item. Explicit
  ids in blocks nobody leased (small integers, say) are checked against the store as before.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence

from service.milvus_items import MAX_HITS, MilvusItems
from service.store import StoreError

#: Ids in [0, ID_SPACE): exact in JavaScript numbers.
ID_SPACE = 2**53
BLOCK_BITS = 20
BLOCK_SIZE = 2**BLOCK_BITS
BLOCKS = ID_SPACE // BLOCK_SIZE
#: Most blocks one lease query checks (one ``in``/range expression each).
LEASE_BATCH = 64


class ReservedIdError(StoreError):
    """Explicit ids inside blocks leased for new ids: the API's 409."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = [int(i) for i in ids]
        shown = ", ".join(str(i) for i in self.ids[:5]) + (" ..." if len(self.ids) > 5 else "")
        super().__init__(
            f"ids reserved for new items: {shown} lie in a block of ids a replica leased for "
            "automatic assignment; add without ids, or choose ids outside leased blocks"
        )


def block_of(item_id: int) -> int:
    return int(item_id) >> BLOCK_BITS


def block_range(block: int) -> tuple[int, int]:
    return block << BLOCK_BITS, (block + 1) << BLOCK_BITS


def _in_list(name: str, values: Iterable[int]) -> str:
    return f"{name} in [{', '.join(str(int(v)) for v in values)}]"


class IdAllocator:
    """Hands out new ids from leased blocks (see the module docstring); thread-safe."""

    def __init__(self, items: MilvusItems) -> None:
        self.items = items
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._ranges: deque[list[int]] = deque()  # [next, end) of leased blocks
        self._lock = threading.Lock()

    def available(self) -> int:
        return sum(end - nxt for nxt, end in self._ranges)

    def take(self, n: int) -> list[int]:
        """``n`` new distinct ids (ascending within each block)."""
        out: list[int] = []
        with self._lock:
            missing = n - self.available()
            if missing > 0:
                for block in self._lease(-(-missing // BLOCK_SIZE)):
                    self._ranges.append(list(block_range(block)))
            while len(out) < n:
                span = self._ranges[0]
                k = min(n - len(out), span[1] - span[0])
                out.extend(range(span[0], span[0] + k))
                span[0] += k
                if span[0] == span[1]:
                    self._ranges.popleft()
        return out

    def _lease(self, count: int) -> list[int]:
        """Lease ``count`` free blocks (Strong checks, then lease rows)."""
        leased: list[int] = []
        while len(leased) < count:
            want = min(count - len(leased), LEASE_BATCH)
            draw = sorted({secrets.randbelow(BLOCKS) for _ in range(want)} - set(leased))
            free = sorted(set(draw) - self.used_blocks(draw))
            if free:
                now = int(time.time() * 1000)
                rows = [
                    {"block": b, "owner": self.owner, "leased_ms": now, "v": b"\x00"} for b in free
                ]
                self.items.upsert(rows, collection=self.items.blocks)
                leased += free
        return leased

    def used_blocks(self, blocks: Sequence[int]) -> set[int]:
        """Those ``blocks`` that hold a stored id or are leased (Strong)."""
        ranges = " or ".join(f"(id >= {lo} and id < {hi})" for lo, hi in map(block_range, blocks))
        stored = self.items.select(ranges, ["id"], MAX_HITS - 1, strong=True)
        used = {block_of(r["id"]) for r in stored}
        if len(stored) >= MAX_HITS - 1:  # (never in practice) more rows than one answer holds
            used |= set(blocks)
        return used | self.leased(blocks)

    def leased(self, blocks: Sequence[int]) -> set[int]:
        """Those ``blocks`` some replica leased (Strong)."""
        if not blocks:
            return set()
        rows = self.items.select(
            _in_list("block", blocks),
            ["block"],
            len(blocks),
            strong=True,
            collection=self.items.blocks,
        )
        return {int(r["block"]) for r in rows}

    def check_explicit(self, ids: Sequence[int], stored: set[int]) -> None:
        """Refuse explicit ids that are not ``stored`` but lie in leased blocks (409)."""
        fresh = [int(i) for i in ids if int(i) not in stored]
        blocks = sorted({block_of(i) for i in fresh})
        taken: set[int] = set()
        for s in range(0, len(blocks), MAX_HITS - 1):
            taken |= self.leased(blocks[s : s + MAX_HITS - 1])
        reserved = [i for i in fresh if block_of(i) in taken]
        if reserved:
            raise ReservedIdError(reserved)
