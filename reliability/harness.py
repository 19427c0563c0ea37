"""The real app for subprocess runs, with fault switches on the ``before_batch`` test seam.

    python -m reliability.harness                                   # = pete-serve (app.main:main)
    python -m uvicorn --factory reliability.harness:create_app ...   # = the Dockerfile's command

``create_app()`` is ``app.main.create_app()`` (settings from ``PETE_*``) plus, when set:

- ``RELIABILITY_BATCH_DELAY_MS``: sleep this long before every batch (a slower model);
- ``RELIABILITY_SLOW_BATCH=N:MS``: sleep MS milliseconds before the N-th batch only (1-based);
- ``RELIABILITY_FAIL_BATCH=N``: raise in the N-th batch only (1-based).

With none set, no seam is installed and the app is exactly the production one.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import app.main as app_main
from app import cli


class EnvFaults:
    """A ``before_batch`` hook configured from ``RELIABILITY_*`` environment variables."""

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

    def __call__(self, items) -> None:
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
    """``app.main.create_app()`` with the fault switches of the environment (if any)."""
    faults = EnvFaults()
    return _original_create_app(before_batch=faults if faults.active else None)


_original_create_app = app_main.create_app


def main() -> None:
    """Run ``app.cli.main()`` (the ``pete-serve`` entry) serving this module's ``create_app``."""
    app_main.create_app = lambda settings=None, *, before_batch=None: (
        _original_create_app(settings, before_batch=before_batch) if settings is not None or before_batch is not None
        else create_app())
    sys.exit(cli.main([]))


if __name__ == "__main__":
    main()
