"""In-process test helpers: the app with its lifespan running and an httpx client over ASGI, a batch
hook (plugged in through the model-runner seam, ``reliability.harness.hooked``) that records / holds /
slows / fails batches, metric samples, and a raw ASGI request whose client disconnects on cue."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from app.main import create_app
from app.settings import Settings
from reliability.harness import hooked


def make_settings(model_path: str | Path, **overrides: Any) -> Settings:
    """App defaults, except one torch thread and the given overrides."""
    return Settings(**{"model_path": Path(model_path), "torch_threads": 1, **overrides})


@asynccontextmanager
async def running_app(settings: Settings, hook: "BatchHook | None" = None, *, runner=None,
                      lifespan: bool = True, lean_handlers: bool = True) -> AsyncIterator[tuple[Any, Any, httpx.AsyncClient]]:
    """(app, the lifespan-wrapped ASGI app, an httpx client over it); app exceptions become responses.

    ``hook`` runs before every batch (``reliability.harness.hooked`` around ``runner``, default the
    torch runner); ``lifespan=False``: the app is not started (it answers as while loading);
    ``lean_handlers``: as ``create_app``."""
    from asgi_lifespan import LifespanManager

    app = create_app(settings, runner=hooked(hook, runner) if hook is not None else runner,
                     lean_handlers=lean_handlers)
    if not lifespan:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as client:
            yield app, app, client
        return
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
            yield app, manager.app, client


def sample(app, name: str, **labels: str) -> float:
    """A metric sample of the app's registry (0.0 when absent)."""
    return app.state.service.metrics.registry.get_sample_value(name, labels) or 0.0


async def wait_until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.005)


class BatchHook:
    """Runs before every batch (on the inference thread): records each batch's texts; can hold
    batches (``hold()`` / ``release()``), sleep in chosen batches (``slow[n] = seconds``) or in all
    (``sleep_s``), raise in chosen ones (``fail``) or in the next one (``fail_next``); batches
    numbered from 1."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.entered = threading.Event()
        self._release = threading.Event()
        self._release.set()
        self.slow: dict[int, float] = {}
        self.sleep_s = 0.0
        self.fail: set[int] = set()
        self.fail_next = False

    def __call__(self, items) -> None:
        self.batches.append([it.text for it in items])  # one inference thread: no race
        n = len(self.batches)
        self.entered.set()
        if not self._release.wait(30):
            raise RuntimeError("test never released the batch")
        if self.slow.get(n, self.sleep_s):
            time.sleep(self.slow.get(n, self.sleep_s))
        if n in self.fail or self.fail_next:
            self.fail_next = False
            raise RuntimeError(f"injected failure in batch {n} at /srv/pete/app/model.py line 42")

    def hold(self) -> None:
        self.entered.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    async def wait_entered(self, timeout: float = 10.0) -> None:
        if not await asyncio.to_thread(self.entered.wait, timeout):
            raise AssertionError("no batch started")


async def request_then_disconnect(asgi_app, path: str, body: bytes, disconnect: asyncio.Event,
                                  headers: list[tuple[bytes, bytes]] | None = None) -> list[dict]:
    """Drive one HTTP request through ``asgi_app`` like a server would: the body first, then (once
    ``disconnect`` is set) ``http.disconnect`` for every later ``receive()``. Returns the messages the
    app sent (after a disconnect nobody reads them)."""
    sent: list[dict] = []
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("t", 80),
             "headers": [(b"host", b"t"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())] + list(headers or [])}
    await asgi_app(scope, receive, send)
    return sent
