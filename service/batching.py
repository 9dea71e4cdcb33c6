"""Micro-batching: encode the images of concurrent requests in one forward pass.

A request hands its decoded images to :meth:`MicroBatcher.submit` and gets a
``concurrent.futures.Future``. One worker thread takes the first waiting request and every
request already queued behind it; when the previous batch served several requests (there is
concurrency), it also keeps collecting until ``max_batch`` images are gathered or
``max_wait`` seconds have passed since the first one arrived. It then encodes them all with
one ``encode`` call and hands each request its rows. A lone client therefore never waits
for a batch that will not come, while under load requests accumulate during each forward
pass and are served together. (The same dynamic-batching idea as TensorFlow Serving's and Triton's
batchers: a bounded wait trades a little latency at low load for much higher throughput
under concurrency, since a forward pass over B images costs far less than B passes.)

The encoder runs in the worker thread, never on the event loop. If a batched call fails,
each request is retried alone so that one bad request cannot fail its neighbours.

What follows the encoding can be batched too: a request's ``then`` may be a
:class:`BatchedThen`, and the requests of one batch whose ``then`` share a ``key`` (the
service: k-NN searches with the same k and options) are finished by one ``run_many`` call --
one multi-query index scan with the index's threads instead of one scan per request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

log = logging.getLogger("service.batching")

EncodeFn = Callable[[Sequence[Any]], np.ndarray]

_STOP = object()


class BatchedThen:
    """A ``then`` that can finish several requests at once (see the module docstring)."""

    #: Requests whose ``then`` have equal keys are finished together.
    key: Any = None

    def __call__(self, codes: np.ndarray) -> Any:
        return self.run_many([codes])[0]

    def run_many(self, codes: list[np.ndarray]) -> list[Any]:
        """One result per request, in order, for each request's codes."""
        raise NotImplementedError


class MicroBatcher:
    """Collect images from concurrent callers and encode them together in a worker thread."""

    def __init__(
        self,
        encode: EncodeFn,
        max_batch: int = 32,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
        name: str = "encode-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r} is not valid: expected at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait={max_wait!r} is not valid: expected >= 0 seconds")
        self._encode = encode
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self._last_requests = 0  # requests in the previous batch: > 1 means concurrency
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, images: Sequence[Any], then: Callable[[np.ndarray], Any] | None = None
    ) -> Future[Any]:
        """Queue ``images`` for encoding; the future's result is their codes (n x K/8), or
        ``then(codes)`` when given -- run in the worker thread right after the batch is
        encoded, which saves the caller another hop through a thread pool."""
        if self._closed:
            raise RuntimeError("the micro-batcher is closed")
        fut: Future[Any] = Future()
        self._queue.put((list(images), fut, then))
        return fut

    def encode(self, images: Sequence[Any]) -> np.ndarray:
        """Blocking convenience: submit and wait."""
        return self.submit(images).result()

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout)

    # -- worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            size = len(first[0])
            wait = self.max_wait if self._last_requests > 1 else 0.0
            deadline = time.monotonic() + wait
            stop = False
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
                size += len(item[0])
            self._last_requests = len(batch)
            self._process(batch)
            if stop:
                return

    @staticmethod
    def _finish(
        fut: Future[Any], codes: np.ndarray, then: Callable[[np.ndarray], Any] | None
    ) -> None:
        try:
            fut.set_result(then(codes) if then is not None else codes)
        except Exception as exc:  # noqa: BLE001 - the caller's error, for the caller
            fut.set_exception(exc)

    def _process(self, batch: list[tuple[list[Any], Future[Any], Any]]) -> None:
        live = [item for item in batch if item[1].set_running_or_notify_cancel()]
        if not live:
            return
        images = [img for imgs, _, _ in live for img in imgs]
        try:
            codes = self._encode(images)
        except Exception as exc:  # noqa: BLE001 - isolate the failing request below
            if len(live) == 1:
                live[0][1].set_exception(exc)
                return
            for imgs, fut, then in live:
                try:
                    own = self._encode(imgs)
                except Exception as exc:  # noqa: BLE001
                    fut.set_exception(exc)
                    continue
                self._count(len(imgs))
                self._finish(fut, own, then)
            return
        self._count(len(images))
        start = 0
        grouped: dict[Any, list[tuple[Future[Any], np.ndarray, BatchedThen]]] = {}
        for imgs, fut, then in live:
            own = codes[start : start + len(imgs)]
            start += len(imgs)
            if isinstance(then, BatchedThen) and then.key is not None:
                grouped.setdefault(then.key, []).append((fut, own, then))
            else:
                self._finish(fut, own, then)
        for group in grouped.values():
            self._finish_group(group)

    def _finish_group(self, group: list[tuple[Future[Any], np.ndarray, BatchedThen]]) -> None:
        if len(group) > 1:
            try:
                results = group[0][2].run_many([own for _, own, _ in group])
            except Exception:  # noqa: BLE001 - finish each alone: errors reach their own caller
                log.debug("a batched search failed: finishing its requests one by one")
            else:
                for (fut, _, _), result in zip(group, results, strict=True):
                    fut.set_result(result)
                return
        for fut, own, then in group:
            self._finish(fut, own, then)

    def _count(self, n: int) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(n)
            except Exception:  # noqa: BLE001 - metrics must never break encoding
                log.exception("batch-size callback failed")
