"""Dynamic micro-batching: many concurrent requests -> few model calls.

Requests turn their inputs into ``WorkItem``s (one per text to embed or per NLI pair, each with a
``cost``: its estimated tokens) and call ``MicroBatcher.submit``; each item carries an asyncio
future. One worker task forms batches from the waiting requests and runs ``compute(batch)`` on a
single dedicated thread so the event loop stays responsive, then resolves each future with its
output.

Batch formation (continuous batching, as text-embeddings-inference does it): when the model is free
the worker takes what is waiting at once, up to ``max_batch_size`` items and a ``max_batch_cost``
(``pass_cost``: padded tokens, weighted by length), and work arriving during a forward pass forms
the next batch; a positive ``max_wait_s`` makes an idle model wait that long after the first item
for more. Items are taken **shortest remaining request first, with aging**: the waiting request
with the earliest ``arrival + remaining estimated cost / AGING_TOKENS_PER_S`` goes next. A request
of a few short texts never waits behind another request's 64 long ones (those are placed up to
~1.6 s later than their arrival): it rides in the next batch, and while a pass of long texts runs,
batches of short ones run beside it in the fast lane (``fast_lane_cost``), so that wait is one
short pass. Yet no request waits for ever behind a stream of cheaper ones (pure shortest-first
did: under 4x overload, requests a few tokens longer than the rest waited up to 50 s, p99 23 s,
and six got 504: reliability/overload.py). Expensive requests yield to
cheap ones: under cheap load at saturation they wait (up to the request timeout), which is the
point: one client's worst-case inputs degrade that client first. Admission is charged in both
items and estimated tokens (``capacity``, ``cost_capacity``): a request that would take the queue
over either gets ``Overloaded`` (429) at once, so load shedding sees expensive requests, not only
many ones.

Items whose future is already done (request cancelled, client gone, timed out) are dropped before
compute. An exception inside ``compute`` fails only that batch's futures (``BatchFailed``); an
output that is an exception instance fails only its own item; the worker goes on.

``compute`` is injected, so the batcher knows nothing about the model (``app.inference``
provides the real one; tests wrap it to add slowness or failures). Every item is computed
independently of its batch-mates (the model is padding-invariant), so batching does not change
results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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


PASS_COST_LENGTH = 128  # tokens; see pass_cost
AGING_TOKENS_PER_S = 10_000  # tokens; a request's place in line: arrival + remaining cost / this (MicroBatcher)
RESERVE_FRACTION = 0.125  # of the queue's capacities, kept for small requests (MicroBatcher.admits)


def reserve(capacity: int) -> int:
    """The part of a queue capacity kept for small requests: ``RESERVE_FRACTION`` of it, rounded down."""
    return int(capacity * RESERVE_FRACTION)


def pass_cost(n: int, length: int) -> float:
    """Estimated cost of one forward pass over ``n`` sequences padded to ``length`` tokens, in
    token-equivalents: ``n * length * (1 + length / PASS_COST_LENGTH)``. A token costs more in a
    longer sequence (attention, and activations that leave the cache): measured on the bundled
    checkpoint (torch, 1 thread), 0.057 ms per token in a batch of 32 sequences of ~14 tokens and
    0.108 ms in a batch of 8 of 128 tokens, a ratio of 1.9 that this formula puts at 1.8. So one
    128-token text alone costs 256, two cost 512, and 32 short texts of 14 tokens cost 497.
    """
    return n * length * (1 + length / PASS_COST_LENGTH)


@dataclass(eq=False)
class WorkItem:
    """One unit of model work.

    kind ``"embed"``: ``text`` is encoded to a sentence vector. kind ``"nli"``: ``(text, text_pair)``
    is a (premise, hypothesis) pair to classify. ``cost``: what the item charges against the queue's
    and a batch's token budgets, its estimated tokens (``app.limits.estimated_tokens``; >= 1).
    ``future`` and ``enqueued_at`` (``time.perf_counter`` seconds) are set by ``MicroBatcher.submit``.
    """

    kind: Literal["embed", "nli"]
    text: str
    text_pair: str | None = None
    cost: int = 1
    future: asyncio.Future | None = field(default=None, repr=False)
    enqueued_at: float = 0.0


@dataclass(eq=False)
class _Waiting:
    """A request's items still waiting, in order, their summed cost, and when it arrived
    (``time.perf_counter`` seconds)."""

    items: deque[WorkItem]
    cost: int
    arrived: float

    def place(self) -> float:
        """Its place in line (smallest first): arrival time plus the remaining cost at
        ``AGING_TOKENS_PER_S``, in seconds."""
        return self.arrived + self.cost / AGING_TOKENS_PER_S


class MicroBatcher:
    """Bounded, request-fair queue + one worker task + one inference thread.

    Args:
        compute: ``compute(items) -> outputs``, one output per item in the same order; runs on the
            inference thread; may raise (fails that batch only).
        max_batch_size: most items per batch (>= 1).
        max_wait_s: seconds an idle model waits for more items after a batch's first item (>= 0;
            0: run what is queued at once).
        capacity: most items waiting in the queue (>= 1).
        cost_capacity: most summed item ``cost`` (estimated tokens) waiting in the queue; None: no
            limit but ``capacity``.
        max_batch_cost: most ``pass_cost(items, longest item cost)`` of one batch (a batch always
            takes at least one item); None: no limit but ``max_batch_size``.
        fast_lane_cost: while a pass holding an item that costs more than this runs, batches of
            items costing at most this run beside it on a second inference thread (the fast lane),
            so short requests never wait for a long pass; None or 0: one pass at a time. ``compute``
            must then be safe to call from two threads at once.
        metrics: where to record queue wait, inference duration, queue depth, dropped items.
    Raises:
        ValueError: a limit out of range.
    """

    def __init__(self, compute: ComputeFn, *, max_batch_size: int, max_wait_s: float, capacity: int,
                 cost_capacity: int | None = None, max_batch_cost: int | None = None,
                 fast_lane_cost: int | None = None, metrics: Metrics | None = None) -> None:
        if max_batch_size < 1 or capacity < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and capacity must be >= 1, max_wait_s >= 0")
        if (cost_capacity is not None and cost_capacity < 1) or (max_batch_cost is not None and max_batch_cost < 1):
            raise ValueError("cost_capacity and max_batch_cost must be >= 1 (or None)")
        self._compute = compute
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._capacity = capacity
        self._cost_capacity = cost_capacity
        self._max_batch_cost = max_batch_cost
        self._fast_lane_cost = fast_lane_cost
        self._requests: list[_Waiting] = []  # waiting requests in arrival order
        self._depth = 0  # items waiting
        self._queued_cost = 0  # their summed cost
        self._arrived = asyncio.Event()  # set when items arrive (or stop() is called)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pete-inference")
        self._fast_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pete-fast-lane") \
            if fast_lane_cost else None
        self._task: asyncio.Task | None = None
        self._inflight: list[WorkItem] = []  # items of the passes running now
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
        self._arrived.set()  # wake a worker waiting on an empty queue
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
        if self._fast_executor is not None:
            self._fast_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def accepting(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._accepting

    @property
    def depth(self) -> int:
        """Items waiting in the queue now."""
        return self._depth

    @property
    def queued_cost(self) -> int:
        """Summed ``cost`` (estimated tokens) of the items waiting now."""
        return self._queued_cost

    def admits(self, items: int, cost: int) -> bool:
        """Whether a request of ``items`` items costing ``cost`` estimated tokens would be admitted
        now. The last ``RESERVE_FRACTION`` of each capacity is kept for small requests: a request of
        that fraction of a capacity or more may fill the queue only up to the rest, so the gaps big
        requests leave always take a short one (without it, 64-item requests filled a 512-item
        queue exactly and a single-pair client got 429 half the time: reliability/attacks.py)."""
        def fits(n: int, used: int, capacity: int | None) -> bool:
            if capacity is None:
                return True
            return used + n <= capacity - (reserve(capacity) if n >= capacity * RESERVE_FRACTION else 0)

        return fits(items, self._depth, self._capacity) and fits(cost, self._queued_cost, self._cost_capacity)

    # ---- request side -------------------------------------------------------------------
    async def submit(self, items: list[WorkItem], timeout_s: float | None = None) -> list[Any]:
        """Enqueue ``items`` (all or none) and wait for their outputs, in order.

        Raises:
            Closed: not started, or stopping.
            Overloaded: the queue cannot take all the items (or their summed cost) now.
            DeadlineExceeded: outputs not ready within ``timeout_s`` seconds (queue + compute).
            BatchFailed: the compute of a batch holding one of the items raised.
        On any exit without outputs (including cancellation) the items not yet computed are
        cancelled, so the worker drops them.
        """
        if not self._accepting:
            raise Closed()
        cost = sum(item.cost for item in items)
        if not self.admits(len(items), cost):
            raise Overloaded()
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        for item in items:  # no await here: all-or-none is atomic on the event loop
            item.future = loop.create_future()
            item.enqueued_at = now
        if items:
            self._requests.append(_Waiting(deque(items), cost, now))
            self._depth += len(items)
            self._queued_cost += cost
            self._arrived.set()
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
        """Wait for a first item, then take items shortest request first until the
        batch is full (items or cost) or, with ``max_wait_s`` > 0, the wait is over.

        Returns None when closing and the queue is empty.
        """
        loop = asyncio.get_running_loop()
        while not self._depth:
            if self._closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        batch: list[WorkItem] = []
        deadline = loop.time() + self._max_wait_s
        while True:
            self._take_shortest_first(batch)
            remaining = deadline - loop.time()
            if self._depth or len(batch) >= self._max_batch_size or remaining <= 0 or self._closing:
                break  # items still waiting did not fit: the batch is full
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                self._take_shortest_first(batch)
                break
        self._set_depth()
        return batch

    def _take_shortest_first(self, batch: list[WorkItem], max_item_cost: int | None = None) -> None:
        """Move waiting items into ``batch`` while they fit, shortest remaining request first with
        aging: items come from the waiting request with the smallest ``_Waiting.place`` (ties: the
        one that arrived first), so cheap requests do not queue behind expensive ones, an expensive
        one is not passed for ever, and requests finish one after another rather than all late
        together. The batch stops at ``max_batch_size`` items or when ``pass_cost`` would pass
        ``max_batch_cost``; with ``max_item_cost``, only requests whose next item costs at most that
        are taken from. A request's place only moves up as its items are taken, so it stays first
        until it has none left (or its next item is too costly): one search per request, not per
        item (with 96 requests waiting, a search per item held the event loop ~1.5 ms a batch)."""
        longest = max((it.cost for it in batch), default=0)
        while len(batch) < self._max_batch_size:
            candidates = self._requests if max_item_cost is None else \
                [r for r in self._requests if r.items[0].cost <= max_item_cost]
            if not candidates:
                return
            request = min(candidates, key=_Waiting.place)
            while request.items and len(batch) < self._max_batch_size:
                item = request.items[0]
                if max_item_cost is not None and item.cost > max_item_cost:
                    break
                if batch and self._max_batch_cost is not None and \
                        pass_cost(len(batch) + 1, max(longest, item.cost)) > self._max_batch_cost:
                    return
                longest = max(longest, item.cost)
                request.items.popleft()
                request.cost -= item.cost
                self._depth -= 1
                self._queued_cost -= item.cost
                batch.append(item)
            if not request.items:
                self._requests.remove(request)

    async def _worker(self) -> None:
        while True:
            batch = await self._collect()
            if batch is None:
                return
            if self._fast_executor is None or all(it.cost <= self._fast_lane_cost for it in batch):
                await self._run(batch, self._executor)
                continue
            slow = asyncio.ensure_future(self._run(batch, self._executor))
            try:
                while (cheap := await self._collect_cheap(slow)) is not None:
                    await self._run(cheap, self._fast_executor)
                await slow
            finally:
                slow.cancel()  # only when the worker itself is cancelled (a forced stop)

    async def _collect_cheap(self, slow: asyncio.Future) -> list[WorkItem] | None:
        """A batch for the fast lane, as soon as items costing at most ``fast_lane_cost`` wait;
        None once the ``slow`` pass is over (the next batch is formed as usual then)."""
        while not slow.done():
            batch: list[WorkItem] = []
            self._take_shortest_first(batch, self._fast_lane_cost)
            if batch:
                self._set_depth()
                return batch
            self._arrived.clear()
            arrived = asyncio.ensure_future(self._arrived.wait())
            await asyncio.wait({slow, arrived}, return_when=asyncio.FIRST_COMPLETED)
            arrived.cancel()
        return None

    async def _run(self, batch: list[WorkItem], executor: ThreadPoolExecutor) -> None:
        """Compute one batch on ``executor`` and resolve its items' futures (skipping items whose
        future is already done); never raises but on cancellation."""
        live = [it for it in batch if not it.future.done()]
        if self._metrics is not None:
            if len(live) < len(batch):
                self._metrics.dropped.inc(len(batch) - len(live))
            now = time.perf_counter()
            for it in live:
                self._metrics.queue_wait.observe(now - it.enqueued_at)
        if not live:
            return
        self._inflight.extend(live)
        start = time.perf_counter()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(executor, self._compute, live)
            if len(outputs) != len(live):
                raise RuntimeError(f"compute returned {len(outputs)} outputs for {len(live)} items")
        except Exception:
            log.exception("batch of %d items failed", len(live))
            if self._metrics is not None:
                self._metrics.batch_failures.inc()
            for it in live:
                if not it.future.done():
                    it.future.set_exception(BatchFailed())
            return
        finally:
            done = set(map(id, live))
            self._inflight = [it for it in self._inflight if id(it) not in done]
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
        for request in self._requests:
            pending.extend(request.items)
        self._requests.clear()
        self._depth = self._queued_cost = 0
        for it in pending:
            if it.future is not None and not it.future.done():
                it.future.set_exception(Closed())
        self._set_depth()

    def _set_depth(self) -> None:
        if self._metrics is not None:
            depth = self._depth
            self._metrics.queue_depth.set(depth)
            if depth > self._max_depth:  # called right after every enqueue: the exact high-water mark
                self._max_depth = depth
                self._metrics.queue_depth_max.set(depth)
