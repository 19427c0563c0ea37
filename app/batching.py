"""Dynamic micro-batching: many concurrent requests -> few model calls.

Requests turn their inputs into ``WorkItem``s (one per text to embed or per NLI pair) and call
``MicroBatcher.submit``; each item carries an asyncio future. One worker task takes items off a
bounded queue, forms a batch (up to ``max_batch_size`` items: what is queued when the model is free,
so with ``max_wait_s`` 0 a lone request runs at once and work that arrives during a forward pass
forms the next batch, continuous batching as text-embeddings-inference does it; a positive
``max_wait_s`` waits that long after the first item for more), drops items whose future is already
done (request cancelled, client gone, timed out),
runs ``compute(batch)`` on a single dedicated thread so the event loop stays responsive, and
resolves each future with its output. An exception inside ``compute`` fails only that batch's
futures (``BatchFailed``); an output that is an exception instance fails only its own item; the
worker goes on with the next batch.

``compute`` is injected, so the batcher knows nothing about the model (``app.inference``
provides the real one; tests wrap it to add slowness or failures). Every item is computed
independently of its batch-mates (the model is padding-invariant), so batching does not change
results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, TypeVar

from app.metrics import Metrics

log = logging.getLogger("pete.batching")

T = TypeVar("T")
ComputeFn = Callable[[list["WorkItem"]], Sequence[Any]]


class Overloaded(Exception):
    """The queue has no room for the request's items (maps to 429 with ``Retry-After``)."""

    def __init__(self) -> None:
        super().__init__("queue full")


class Closed(Exception):
    """The batcher is stopping or stopped and accepts no work (maps to 503 with ``Retry-After``)."""


class BatchFailed(Exception):
    """The compute of the batch holding this item raised (maps to a generic 500)."""


class DeadlineExceeded(Exception):
    """The results were not ready within the request's timeout (maps to 504)."""


@dataclass(eq=False)
class WorkItem:
    """One unit of model work.

    kind ``"embed"``: ``text`` is encoded to a sentence vector. kind ``"nli"``: ``(text, text_pair)``
    is a (premise, hypothesis) pair to classify. ``future`` and ``enqueued_at`` (``time.perf_counter``
    seconds) are set by ``MicroBatcher.submit``.
    """

    kind: Literal["embed", "nli"]
    text: str
    text_pair: str | None = None
    future: asyncio.Future | None = field(default=None, repr=False)
    enqueued_at: float = 0.0


_WAKE = object()  # put on the queue by stop() to wake a worker blocked on an empty queue


class MicroBatcher:
    """Bounded queue + one worker task + one inference thread.

    Args:
        compute: ``compute(items) -> outputs``, one output per item in the same order; runs on the
            inference thread; may raise (fails that batch only).
        max_batch_size: most items per batch (>= 1).
        max_wait_s: seconds an idle model waits for more items after a batch's first item (>= 0;
            0: run what is queued at once).
        capacity: most items waiting in the queue (>= 1).
        metrics: where to record queue wait, inference duration, queue depth, dropped items.
    """

    def __init__(self, compute: ComputeFn, *, max_batch_size: int, max_wait_s: float, capacity: int,
                 metrics: Metrics | None = None) -> None:
        if max_batch_size < 1 or capacity < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and capacity must be >= 1, max_wait_s >= 0")
        self._compute = compute
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=capacity)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pete-inference")
        self._task: asyncio.Task | None = None
        self._inflight: list[WorkItem] = []
        self._accepting = False
        self._closing = False
        self._max_depth = 0

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker task (call from inside the running event loop)."""
        if self._task is None:
            self._accepting = True
            self._task = asyncio.create_task(self._worker(), name="pete-batcher")

    async def run_sync(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the inference thread (e.g. warm-up) and return its result."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting work, finish what was accepted, then stop the worker.

        Items still unfinished after ``timeout_s`` seconds fail with ``Closed``. Idempotent.
        """
        self._accepting = False
        self._closing = True
        try:
            self._queue.put_nowait(_WAKE)
        except asyncio.QueueFull:
            pass  # the worker is busy and will see the queue drain
        leftovers: list[WorkItem] = []
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except asyncio.TimeoutError:
                log.warning("batcher did not drain within %.1f s; failing the remaining work", timeout_s)
                leftovers = list(self._inflight)
                self._task.cancel()
                await asyncio.wait({self._task})
        self._fail_pending(leftovers)
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def accepting(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._accepting

    @property
    def depth(self) -> int:
        """Items waiting in the queue now."""
        return self._queue.qsize()

    @property
    def free_slots(self) -> int:
        """Items the queue can take now (capacity - depth)."""
        return self._queue.maxsize - self._queue.qsize()

    # ---- request side -------------------------------------------------------------------
    async def submit(self, items: list[WorkItem], timeout_s: float | None = None) -> list[Any]:
        """Enqueue ``items`` (all or none) and wait for their outputs, in order.

        Raises:
            Closed: not started, or stopping.
            Overloaded: the queue cannot take all the items now.
            DeadlineExceeded: outputs not ready within ``timeout_s`` seconds (queue + compute).
            BatchFailed: the compute of a batch holding one of the items raised.
        On any exit without outputs (including cancellation) the items not yet computed are
        cancelled, so the worker drops them.
        """
        if not self._accepting:
            raise Closed()
        if self._queue.maxsize - self._queue.qsize() < len(items):
            raise Overloaded()
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for item in items:  # no await in this loop: all-or-none is atomic on the event loop
            item.future = loop.create_future()
            item.enqueued_at = now
            self._queue.put_nowait(item)
        self._set_depth()
        futures = [item.future for item in items]
        try:
            async with asyncio.timeout(timeout_s):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise DeadlineExceeded() from None
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()

    # ---- worker side --------------------------------------------------------------------
    async def _collect(self) -> list[WorkItem] | None:
        """Wait for a first item, then gather more until the batch is full or the wait is over.

        Returns None when closing and the queue is empty.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._closing and self._queue.empty():
                return None
            first = await self._queue.get()
            if first is not _WAKE:
                break
        batch = [first]
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            if item is not _WAKE:
                batch.append(item)
        self._set_depth()
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if batch is None:
                return
            live = [it for it in batch if not it.future.done()]
            if self._metrics is not None:
                if len(live) < len(batch):
                    self._metrics.dropped.inc(len(batch) - len(live))
                now = time.perf_counter()
                for it in live:
                    self._metrics.queue_wait.observe(now - it.enqueued_at)
            if not live:
                continue
            self._inflight = live
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self._compute, live)
                if len(outputs) != len(live):
                    raise RuntimeError(f"compute returned {len(outputs)} outputs for {len(live)} items")
            except Exception:
                log.exception("batch of %d items failed", len(live))
                if self._metrics is not None:
                    self._metrics.batch_failures.inc()
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(BatchFailed())
                continue
            finally:
                self._inflight = []
                if self._metrics is not None:
                    self._metrics.inference_duration.observe(time.perf_counter() - start)
            for it, out in zip(live, outputs):
                if not it.future.done():
                    if isinstance(out, Exception):  # this item failed, its batch-mates did not
                        it.future.set_exception(out)
                    else:
                        it.future.set_result(out)

    def _fail_pending(self, pending: list[WorkItem]) -> None:
        """Fail ``pending`` and every item still queued with ``Closed`` (after a forced stop)."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _WAKE:
                pending.append(item)
        for it in pending:
            if it.future is not None and not it.future.done():
                it.future.set_exception(Closed())
        self._set_depth()

    def _set_depth(self) -> None:
        if self._metrics is not None:
            depth = self._queue.qsize()
            self._metrics.queue_depth.set(depth)
            if depth > self._max_depth:  # called right after every enqueue: the exact high-water mark
                self._max_depth = depth
                self._metrics.queue_depth_max.set(depth)
