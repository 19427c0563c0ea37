"""uvicorn factory for profiling the running service's event loop (used by ``bench/serving.py``).

Builds the app with the factory named in ``PETE_BENCH_INNER_FACTORY`` (default
``app.main:create_app``; ``bench.teacher_backend:create_app`` works too) and adds two benchmark-only
routes: ``POST /_bench/profile/start`` enables a ``cProfile.Profile`` on the event-loop thread and
``POST /_bench/profile/stop`` disables it and writes the stats to ``PETE_BENCH_PROFILE_PATH``. So the
profile covers exactly the load phase (no start-up imports, no shutdown). cProfile sees only the
thread it was enabled on: the inference thread's work is not in it.

Never used outside the benchmark; the service itself has no such routes.
"""

from __future__ import annotations

import cProfile
import importlib
import os


def create_app():
    target = os.environ.get("PETE_BENCH_INNER_FACTORY", "app.main:create_app")
    module, _, name = target.partition(":")
    app = getattr(importlib.import_module(module), name)()
    profiler = cProfile.Profile()

    @app.post("/_bench/profile/start", include_in_schema=False)
    async def profile_start() -> dict:
        profiler.enable()
        return {"profiling": True}

    @app.post("/_bench/profile/stop", include_in_schema=False)
    async def profile_stop() -> dict:
        profiler.disable()
        path = os.environ.get("PETE_BENCH_PROFILE_PATH", "server.pstats")
        profiler.dump_stats(path)
        return {"profiling": False, "stats": path}

    return app
