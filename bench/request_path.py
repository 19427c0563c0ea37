"""What one request costs the event loop, model excluded: CPU seconds per single-pair ``POST
/similarity`` through the whole ASGI app (middleware, routing, validation, batcher, response), with
a model runner that answers at once, for the lean JSON handler (``app.json_route``) and FastAPI's
own handler (``create_app(lean_handlers=False)``), with and without an API key, in one run.

    .venv/bin/python -m bench.request_path --requests 3000 --rounds 3 [--profile]

The variants alternate, ``--rounds`` times each, and the best round of each counts (the least
disturbed); the ratio to FastAPI's handler is printed. ``--profile``: cProfile of one lean round
(the top 30 by cumulative time). No HTTP server: uvicorn's parsing comes on top of these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import time
from typing import Any

import numpy as np

from app.main import create_app
from app.outputs import EmbedOutput, NliOutput
from app.runner import RunnerInfo
from app.settings import Settings
from reliability.common import BUNDLED_CHECKPOINT

BODY = json.dumps({"pairs": [{"text_a": "A man is playing a guitar.", "text_b": "Someone plays an instrument."}]}).encode()
KEY = "bench-key"


class InstantRunner:
    """A ``ModelRunner`` (app.runner) that answers every item at once with constant outputs."""

    def __init__(self, settings: Settings, observe_pass: Any) -> None:
        pass

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def __call__(self, items: list) -> list:
        return [EmbedOutput(np.ones(256, np.float32), False, 10) if it.kind == "embed"
                else NliOutput(np.array([0.2, 0.3, 0.5], np.float32), False, 10) for it in items]

    def parameter_counts(self) -> dict[str, int]:
        return {"total": 0, "embedding": 0, "encoder": 0, "nli_head": 0}

    def info(self) -> RunnerInfo:
        return RunnerInfo("none", "none", 256, 128, 0, False, "none")


async def _request(app: Any, key: str | None) -> None:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/similarity", "raw_path": b"/similarity", "root_path": "", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent = False
    started: list[int] = []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # no disconnect
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])

    await app(scope, receive, send)
    if started != [200]:
        raise RuntimeError(f"request failed: {started}")


async def measure(lean: bool, key: str | None, n: int, profile: bool = False) -> float:
    """CPU milliseconds per request over ``n`` requests, after 200 warm-up ones."""
    from asgi_lifespan import LifespanManager

    settings = Settings(model_path=BUNDLED_CHECKPOINT, api_key=key)
    app = create_app(settings, runner=InstantRunner, lean_handlers=lean)
    async with LifespanManager(app):
        for _ in range(200):
            await _request(app, key)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        t0 = time.process_time()
        for _ in range(n):
            await _request(app, key)
        cpu = time.process_time() - t0
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return cpu / n * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    variants = [(lean, key) for key in (None, KEY) for lean in (True, False)]
    best: dict[tuple, float] = {}
    for _ in range(args.rounds):
        for lean, key in variants:
            ms = asyncio.run(measure(lean, key, args.requests))
            best[(lean, key)] = min(ms, best.get((lean, key), float("inf")))
    print("| handler | API key | CPU ms / request | vs FastAPI's handler |\n|---|---|---|---|")
    for lean, key in variants:
        ratio = best[(lean, key)] / best[(False, key)]
        print(f"| {'lean (app.json_route)' if lean else 'FastAPI'} | {'yes' if key else 'no'} | "
              f"{best[(lean, key)]:.3f} | {ratio:.2f}x |")
    if args.profile:
        asyncio.run(measure(True, None, args.requests, profile=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
