"""The service's state and lifecycle: load -> warm up -> start batcher -> ready; drain on stop.

One ``Service`` per app (``app.state.service``). Routes call ``Service.run`` to push work items
through the batcher with the request timeout and client-disconnect detection.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, Awaitable, Callable

from app.batching import MicroBatcher, WorkItem
from app.errors import ClientDisconnected, NotReady, ShuttingDown
from app.limits import estimated_tokens
from app.metrics import Metrics
from app.runner import ModelRunner, RunnerFactory, RunnerInfo
from app.settings import Settings

log = logging.getLogger("pete.service")


def release_free_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``): after the warm-up, which runs
    the largest possible batch, this lowers the idle RSS by ~80 MB. Returns False where glibc is not
    available (other platforms, musl): nothing happens there."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def default_runner(settings: Settings, observe_pass) -> ModelRunner:
    """The default ``RunnerFactory``: the backend ``settings.backend`` names, imported here (the onnx
    backend's process never imports torch)."""
    if settings.backend == "onnx":
        from app.onnx_runner import OnnxRunner

        return OnnxRunner.from_settings(settings, observe_pass)
    from app.inference import TorchRunner

    return TorchRunner.from_settings(settings, observe_pass)


class Service:
    """Holds settings, metrics, the model runner and the batcher.

    Args:
        settings: the service settings.
        metrics: the app's metrics.
        runner: builds the model runner (``app.runner``); default ``default_runner`` (``PETE_BACKEND``).
    """

    def __init__(self, settings: Settings, metrics: Metrics, runner: RunnerFactory | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runner_factory = runner or default_runner
        self.runner: ModelRunner | None = None
        self.model_info: RunnerInfo | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.draining = False

    @property
    def model_name(self) -> str:
        """``settings.model_name``, else the checkpoint directory's name."""
        return self.settings.model_name or self.settings.model_path.name

    async def start(self) -> None:
        """Load the model (in a thread), warm up at the max batch size, start the batcher, and only
        then mark the service ready.

        Raises:
            FileNotFoundError: the checkpoint directory lacks a file.
            app.outputs.NonFiniteOutput: the model answers NaN/Inf.
        """
        s = self.settings
        log.info("loading model from %s", s.model_path)
        runner = self.runner_factory(s, self.metrics.observe_pass)
        await asyncio.to_thread(runner.load)
        self.batcher = MicroBatcher(runner, max_batch_size=s.max_batch_size, max_wait_s=s.max_wait_ms / 1000.0,
                                    capacity=s.queue_capacity, cost_capacity=s.queue_capacity_tokens,
                                    max_batch_cost=s.batch_token_budget, fast_lane_cost=s.fast_lane_tokens,
                                    metrics=self.metrics)
        await self.batcher.run_sync(runner.warmup)
        self.runner, self.model_info = runner, runner.info()
        self.metrics.set_model(runner.parameter_counts(), self.model_info.model_bytes)
        self.batcher.start()
        # Move everything loaded so far (torch, the model, ~200k objects) out of the collector's
        # reach: otherwise each full (gen-2) collection walks it all and stalls the event loop for
        # ~0.1 s under load, which is the p99 of every response, the fast 429s included.
        gc.collect()
        gc.freeze()
        release_free_heap()  # the warm-up's activations were freed; give their pages back to the OS
        self.ready = True
        log.info("ready: model %s (%s embedding, %s NLI head)", self.model_name, self.model_info.embedding_kind,
                 self.model_info.nli_head)

    async def stop(self) -> None:
        """Refuse new work (503), finish accepted work within ``shutdown_timeout_s``. Idempotent."""
        self.draining = True
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop(self.settings.shutdown_timeout_s)
        gc.unfreeze()

    def check_accepting(self) -> None:
        """Raise ``ShuttingDown`` while draining, ``NotReady`` before start-up finished (both 503)."""
        if self.draining:
            raise ShuttingDown()
        if not self.ready or self.batcher is None:
            raise NotReady()

    async def run(self, items: list[WorkItem], disconnected: Callable[[], Awaitable[None]] | None = None) -> list[Any]:
        """Compute ``items`` through the batcher; outputs in order (see ``app.inference``).

        ``disconnected`` is awaited concurrently; if it returns first the work is cancelled (the
        batcher then drops the items) and ``ClientDisconnected`` is raised.

        Raises:
            NotReady, ShuttingDown, ClientDisconnected, and the batcher's Closed, Overloaded,
            DeadlineExceeded, BatchFailed.
        """
        self.check_accepting()
        for item in items:
            item.cost = estimated_tokens(item, self.settings.max_tokens_per_text)
        work = self.batcher.submit(items, self.settings.request_timeout_s)
        if disconnected is None:
            return await work
        work_task = asyncio.ensure_future(work)
        watch_task = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch_task.cancel()
            if not work_task.done():
                work_task.cancel()
                await asyncio.wait({work_task})  # let submit() cancel its item futures
        if work_task.cancelled():
            raise ClientDisconnected()
        return work_task.result()
