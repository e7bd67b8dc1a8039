"""Cross-request dynamic batching with a bounded queue (asyncio; no web framework, no model).

>>> batcher = DynamicBatcher(run_batch, max_batch=16, max_wait_s=0.005, max_queue=64, workers=2)
>>> await batcher.start()
>>> with batcher.admit():                  # raises Overloaded (-> 503 + Retry-After) when full
...     item = await decode_off_the_loop(...)
...     result = await batcher.run(item)    # raises TimedOut after timeout_s

``run_batch(items) -> results`` is a plain blocking function (one result per item, in order); it
runs on ``workers`` inference threads, off the event loop. A batch is dispatched when
``max_batch`` items wait, or when the oldest has waited ``max_wait_s``; when several workers are
idle the waiting items are shared between them (``ceil(waiting / idle)`` each), so a few
requests use every core instead of queueing behind one batch.

Admission is separate from queueing: :meth:`admit` holds a place from before a request decodes
its upload until its answer is back, so at most ``max_queue`` requests are in the pipeline
(decoding, waiting or running) and the memory they hold is bounded. Past that, :class:`Overloaded`
carries a ``Retry-After`` estimate (the places ahead divided by the measured clips per second).

On Ray Serve (:mod:`emovox.scale.ray_serve`) ``@serve.batch`` forms the batches instead of the
dispatcher; admission, timeouts and the function a batch runs
(:func:`emovox.server.clips.classify_clips`) are shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Retry-After bounds, seconds.
MIN_RETRY_S, MAX_RETRY_S = 1, 60


class Overloaded(Exception):
    """No place for the request (``reason`` ``"queue_full"``, or ``"closed"``): answer 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int, reason: str = "queue_full"):
        super().__init__(message)
        self.retry_after_s, self.reason = retry_after_s, reason


class TimedOut(Overloaded):
    """A request waited longer than its timeout for the model (queue + inference)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, retry_after_s, "timeout")


@dataclass
class _Job(Generic[Item, Result]):
    item: Item
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[Item, Result]):
    """See the module docstring. ``on_batch(size, seconds)`` and ``on_depth(delta)`` feed metrics."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]], *, max_batch: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 64, workers: int = 1, timeout_s: float | None = 30.0,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, name: str = "emovox-infer"):
        if max_batch < 1 or workers < 1 or max_queue < 1:
            raise ValueError(f"max_batch, workers and max_queue must be at least 1, got {max_batch}, {workers}, "
                             f"{max_queue}")
        if max_wait_s < 0 or (timeout_s is not None and timeout_s <= 0):
            raise ValueError(f"max_wait_s must be >= 0 and timeout_s > 0, got {max_wait_s}, {timeout_s}")
        self.run_batch, self.max_batch, self.max_wait_s = run_batch, max_batch, max_wait_s
        self.max_queue, self.workers, self.timeout_s, self.name = max_queue, workers, timeout_s, name
        self._on_batch, self._on_depth = on_batch, on_depth
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()
        self._busy = 0
        self._depth = 0
        self._rate = 0.0  # items per second, smoothed over batches
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False

    # -- state
    @property
    def depth(self) -> int:
        """Requests admitted and not answered yet (decoding, waiting or running)."""
        return self._depth

    @property
    def waiting(self) -> int:
        """Requests queued for a batch."""
        return len(self._queue)

    def retry_after_s(self) -> int:
        """Seconds until the places ahead are likely served (at least 1, at most 60)."""
        if self._rate <= 0:
            return MIN_RETRY_S
        return max(MIN_RETRY_S, min(MAX_RETRY_S, math.ceil(self._depth / self._rate)))

    # -- life
    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.name)
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{self.name}-dispatch")
        self._dispatcher.add_done_callback(_log_crash)

    async def close(self) -> None:
        """Refuse new work, fail what waits (Overloaded), let running batches finish."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(Overloaded("the service is shutting down", MIN_RETRY_S, "closed"))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # -- requests
    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a place in the pipeline for one request; :class:`Overloaded` when none is free."""
        if self._closed:
            raise Overloaded("the service is shutting down", MIN_RETRY_S, "closed")
        if self._depth >= self.max_queue:
            raise Overloaded(f"the service is overloaded: {self._depth} requests are queued (the limit is "
                             f"{self.max_queue}, EMOVOX_MAX_QUEUE); retry later", self.retry_after_s())
        self._change_depth(+1)
        try:
            yield
        finally:
            self._change_depth(-1)

    def timed_out(self) -> TimedOut:
        return TimedOut(f"request timed out: no answer within {self.timeout_s:g} s of its arrival "
                        "(EMOVOX_REQUEST_TIMEOUT_S); the service is overloaded, retry later", self.retry_after_s())

    async def run(self, item: Item, *, timeout_s: float | None = None) -> Result:
        """Queue ``item`` for the next batch and wait for its result, at most ``timeout_s`` (default: the
        batcher's; what is left of a request's time when it has already waited elsewhere)."""
        if self._closed or self._dispatcher is None:
            raise Overloaded("the service is not running", MIN_RETRY_S, "closed")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if timeout_s is not None and timeout_s <= 0:
            raise self.timed_out()
        job: _Job = _Job(item, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            raise self.timed_out() from None
        finally:
            job.future.cancel()  # no-op when answered; else a queued job is skipped, a running one's result dropped

    def _change_depth(self, delta: int) -> None:
        self._depth += delta
        if self._on_depth is not None:
            self._on_depth(delta)

    # -- the dispatcher: one task forms batches, up to `workers` run at once
    async def _dispatch(self) -> None:
        while True:
            while self._busy >= self.workers:
                self._freed.clear()
                await self._freed.wait()
            batch = await self._next_batch()
            self._busy += 1
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Job]:
        while True:
            while self._queue and self._queue[0].future.done():  # timed out while queued
                self._queue.popleft()
            wait_s = None
            if self._queue:
                wait_s = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                live = sum(not j.future.done() for j in self._queue)
                if live >= self.max_batch or wait_s <= 0:
                    idle = self.workers - self._busy
                    return self._take(min(self.max_batch, math.ceil(live / idle)))
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)

    def _take(self, n: int) -> list[_Job]:
        batch: list[_Job] = []
        while self._queue and len(batch) < n:
            job = self._queue.popleft()
            if not job.future.done():
                batch.append(job)
        return batch

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._call, [j.item for j in batch])
        except Exception as e:  # the executor itself failed (shut down): every job gets the error
            outcomes = [(False, e)] * len(batch)
        finally:
            self._busy -= 1
            self._freed.set()
        seconds = time.perf_counter() - t0
        self._rate = len(batch) / seconds if self._rate == 0 else 0.8 * self._rate + 0.2 * len(batch) / seconds
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)
        for job, (ok, value) in zip(batch, outcomes):
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _call(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """Run one batch in an inference thread; when it fails, run its items one by one, so a
        single bad item fails alone. -> [(ok, result or exception)]"""
        try:
            results = list(self.run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return [(True, r) for r in results]
        except Exception as e:
            if len(items) == 1:
                return [(False, e)]
            log.warning("a batch of %d failed (%s: %s); running its items one by one", len(items),
                        type(e).__name__, e)
        return [self._call([it])[0] for it in items]


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the batch dispatcher stopped: %r; requests will time out", task.exception())
