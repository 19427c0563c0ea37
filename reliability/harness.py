"""The real app for subprocess runs, with fault switches plugged in through the model-runner seam.

    python -m reliability.harness                                   # = pete-serve (app.cli:main)
    python -m uvicorn --factory reliability.harness:create_app ...   # = the Dockerfile's command

``create_app()`` is ``app.main.create_app()`` (settings from ``PETE_*``) with, when set, a runner
that wraps the torch runner and, before every batch:

- ``RELIABILITY_BATCH_DELAY_MS``: sleeps this long (a slower model);
- ``RELIABILITY_SLOW_BATCH=N:MS``: sleeps MS milliseconds before the N-th batch only (1-based);
- ``RELIABILITY_FAIL_BATCH=N``: raises in the N-th batch only (1-based).

With none set, the app is exactly the production one (the default runner).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

from app import cli
from app.batching import WorkItem
from app.main import create_app as create_service_app
from app.runner import ModelRunner, PassObserver, RunnerFactory, RunnerInfo
from app.service import default_runner
from app.settings import Settings

BatchHook = Callable[[list[WorkItem]], None]


class HookedRunner:
    """A ``ModelRunner`` that calls ``hook(items)`` on the inference thread before each batch (it may
    sleep or raise: a slow or failing model), then the ``inner`` runner. Warm-up does not go through
    the hook."""

    def __init__(self, inner: ModelRunner, hook: BatchHook) -> None:
        self.inner, self.hook = inner, hook

    def load(self) -> None:
        self.inner.load()

    def warmup(self) -> None:
        self.inner.warmup()

    def __call__(self, items: list[WorkItem]) -> list[Any]:
        self.hook(items)
        return self.inner(items)

    def parameter_counts(self) -> dict[str, int]:
        return self.inner.parameter_counts()

    def info(self) -> RunnerInfo:
        return self.inner.info()


def hooked(hook: BatchHook, inner: RunnerFactory | None = None) -> RunnerFactory:
    """A ``RunnerFactory``: ``inner``'s runner (default: the torch runner) behind ``hook``."""
    make_inner = inner or default_runner

    def factory(settings: Settings, observe_pass: PassObserver | None) -> ModelRunner:
        return HookedRunner(make_inner(settings, observe_pass), hook)

    return factory


class EnvFaults:
    """A batch hook configured from ``RELIABILITY_*`` environment variables."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.delay_s = float(env.get("RELIABILITY_BATCH_DELAY_MS", "0") or 0) / 1000.0
        slow = env.get("RELIABILITY_SLOW_BATCH", "")
        self.slow_batch, self.slow_s = (int(slow.split(":")[0]), float(slow.split(":")[1]) / 1000.0) if slow else (0, 0.0)
        self.fail_batch = int(env.get("RELIABILITY_FAIL_BATCH", "0") or 0)
        self.batches = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.delay_s or self.slow_batch or self.fail_batch)

    def __call__(self, items: list[WorkItem]) -> None:
        with self._lock:
            self.batches += 1
            n = self.batches
        if self.delay_s:
            time.sleep(self.delay_s)
        if n == self.slow_batch:
            time.sleep(self.slow_s)
        if n == self.fail_batch:
            raise RuntimeError(f"injected failure in batch {n} (/srv/secret/model.py)")


def create_app():
    """uvicorn factory: ``app.main.create_app()`` with the fault switches of the environment (if any)."""
    faults = EnvFaults()
    return create_service_app(runner=hooked(faults) if faults.active else None)


def main() -> None:
    """``pete-serve`` (``app.cli.main``) serving this module's ``create_app``."""
    sys.exit(cli.main([], factory="reliability.harness:create_app"))


if __name__ == "__main__":
    main()
