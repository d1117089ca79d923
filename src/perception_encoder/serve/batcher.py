"""Dynamic batching: concurrent requests of one modality merged into model batches.

A ``Batcher`` lives on the server's event loop. A request first *reserves* room for its items (so the items
it is still decoding count against the bound too), then submits them; a worker coroutine takes up to
``max_batch_size`` waiting items, as soon as that many wait or ``max_wait_s`` after the first one arrived,
and runs them through ``run`` on the model executor: one thread shared by every batcher, because
concurrent forwards do not make torch faster on a few CPUs, they only make each one slower. While the model
runs one batch, the next one fills. Items admitted and not yet in a batch never exceed ``max_queue``;
beyond it ``reserve`` raises ``Overloaded`` (the server's 429) instead of growing a backlog.

A batch that fails is run again item by item, so an item that breaks the model fails its own request only.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any


class Overloaded(Exception):
    """No room for a request's items: answered 429, with ``retry_after`` seconds."""

    def __init__(self, modality: str, retry_after: int) -> None:
        super().__init__(f"the {modality} queue is full; retry in {retry_after} s")
        self.modality = modality
        self.retry_after = retry_after


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future


#: Called after each batch with the modality, the batch size and the seconds the model took.
BatchObserver = Callable[[str, int, float], None]


class Batcher:
    """One modality's queue and worker. ``run(payloads) -> results`` (one result per payload, in order)
    runs on ``executor``; ``reserve(n)`` admits ``n`` items or raises ``Overloaded``."""

    def __init__(
        self,
        modality: str,
        run: Callable[[list[Any]], Sequence[Any]],
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        observe: BatchObserver | None = None,
    ) -> None:
        self.modality = modality
        self.run = run
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.observe = observe
        self._queue: deque[_Item] = deque()
        self._reserved = 0  # admitted, still decoding
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._batch_seconds = 0.0  # running mean, for Retry-After

    # --- lifecycle (on the event loop) ---------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.modality}")

    async def stop(self) -> None:
        """Stop the worker; items still waiting (none after a drain) fail with ``CancelledError``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.cancel()

    # --- admission ----------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items admitted and not yet in a batch (decoding or waiting)."""
        return self._reserved + len(self._queue)

    def reserve(self, n: int) -> Reservation:
        """Room for ``n`` items, or ``Overloaded`` when the queue would pass ``max_queue``."""
        if self.depth + n > self.max_queue:
            raise Overloaded(self.modality, self.retry_after())
        self._reserved += n
        return Reservation(self, n)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: its batches times the mean batch time (1 to 60)."""
        batches = math.ceil(self.depth / self.max_batch_size)
        return max(1, min(60, math.ceil(batches * max(self._batch_seconds, self.max_wait_s))))

    async def submit(self, payloads: list[Any]) -> list[Any]:
        """Reserve and run ``payloads`` (``reserve(len(payloads))`` then ``Reservation.submit``)."""
        with self.reserve(len(payloads)) as slot:
            return await slot.submit(payloads)

    def _enqueue(self, payloads: list[Any]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in payloads]
        self._queue.extend(items)
        if self._wake is None:
            raise RuntimeError(f"the {self.modality} batcher is not started")
        self._wake.set()
        return [it.future for it in items]

    # --- the worker -----------------------------------------------------------------------------------------

    async def _next_batch(self) -> list[_Item]:
        """Wait for an item, then for up to ``max_batch_size`` of them or ``max_wait_s`` after the first."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        deadline = loop.time() + self.max_wait_s
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        n = min(self.max_batch_size, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [it for it in await self._next_batch() if not it.future.done()]  # done: the client left
            if not batch:
                continue
            start = time.perf_counter()
            try:
                outcomes = await loop.run_in_executor(
                    self.executor, self._run_batch, [it.payload for it in batch]
                )
            except Exception as exc:  # the executor itself failed (shut down): fail the batch, keep serving
                outcomes = [(False, exc)] * len(batch)
            seconds = time.perf_counter() - start
            self._batch_seconds = (
                seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
            )
            if self.observe is not None:
                self.observe(self.modality, len(batch), seconds)
            for item, (ok, value) in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)

    def _run_batch(self, payloads: list[Any]) -> list[tuple[bool, Any]]:
        """On the model thread: ``(True, result)`` or ``(False, exception)`` per payload."""
        try:
            results = list(self.run(payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"{self.modality}: {len(results)} results for {len(payloads)} items")
            return [(True, r) for r in results]
        except Exception as exc:
            if len(payloads) == 1:
                return [(False, exc)]
        return [self._run_batch([p])[0] for p in payloads]  # find the item that fails; the rest succeed


class Reservation:
    """Room for ``n`` items of a batcher: submit them (at most once), or leave the ``with`` block to give
    the room back (a request that failed while decoding)."""

    def __init__(self, batcher: Batcher, n: int) -> None:
        self.batcher = batcher
        self.n = n

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.batcher._reserved -= self.n
        self.n = 0

    async def submit(self, payloads: list[Any]) -> list[Any]:
        """Queue ``payloads`` (at most the number reserved) and wait for their results, in order. A
        request cancelled while waiting (its client left) leaves its items to be skipped by the worker."""
        if len(payloads) > self.n:
            raise ValueError(f"{len(payloads)} items submitted, {self.n} reserved")
        self._release()
        futures = self.batcher._enqueue(payloads)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
