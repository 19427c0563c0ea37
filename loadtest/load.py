"""Load generation: closed loop (C clients, one request each in flight), open loop (Poisson
arrivals that do not bend to the service), a saturation sweep, and the generator's own event-loop lag.

Every loop is bounded in time and in request count. Times are ``time.perf_counter()`` seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from loadtest.http import Conn, HttpError, build_request
from loadtest.stats import latency_ms


@dataclass
class Sample:
    """One request of a load run. Times are ``time.perf_counter()`` seconds."""

    scheduled: float  # when it was due (open loop) or sent (closed loop)
    sent: float
    done: float
    status: int  # 0: connection error (see ``error``)
    retry_after: str | None = None
    error: str | None = None
    resent: bool = False  # first sent on a keep-alive connection the server had closed, idle

    @property
    def latency(self) -> float:
        """From send to complete response."""
        return self.done - self.sent

    @property
    def latency_from_schedule(self) -> float:
        """From when it was due (counts time the client was late: no coordinated omission)."""
        return self.done - self.scheduled


@dataclass
class LoadResult:
    """The samples of one load run. ``started``/``stopped``: when the generator began and stopped
    sending; ``finished``: when the last outstanding answer came back (or the drain gave up)."""

    started: float
    stopped: float  # when the generator stopped sending new requests
    samples: list[Sample] = field(default_factory=list)
    not_sent: int = 0  # arrivals skipped because max_connections requests were already outstanding
    finished: float = 0.0

    @property
    def duration(self) -> float:
        """Seconds of sending."""
        return self.stopped - self.started

    @property
    def elapsed(self) -> float:
        """Seconds from the first send to the last answer."""
        return max(self.finished, self.stopped) - self.started

    def latencies(self, status: int = 200, from_schedule: bool = False) -> list[float]:
        """Latencies (seconds) of the requests answered with ``status``; ``from_schedule``: counted from
        when each was due (open loop: no coordinated omission)."""
        return [s.latency_from_schedule if from_schedule else s.latency for s in self.samples if s.status == status]

    def failures(self) -> dict[str, int]:
        """Everything but a 200: HTTP statuses, connection error kinds, and ``client_overflow``
        (arrivals not sent: ``not_sent``)."""
        out: dict[str, int] = {k: v for k, v in self.statuses().items() if k not in ("0", "200")}
        out.update(self.errors())
        if self.not_sent:
            out["client_overflow"] = self.not_sent
        return out

    def count(self, status: int | None = None) -> int:
        return len(self.samples) if status is None else sum(1 for s in self.samples if s.status == status)

    def statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            out[str(s.status)] = out.get(str(s.status), 0) + 1
        return dict(sorted(out.items()))

    def resent(self) -> int:
        """Requests sent again after meeting a keep-alive connection the server had closed."""
        return sum(1 for s in self.samples if s.resent)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.samples:
            if s.error:
                key = s.error.split(":")[0]
                out[key] = out.get(key, 0) + 1
        return out


async def _one(pool: list[Conn], port: int, raw: bytes, scheduled: float, timeout: float) -> Sample:
    """One request on an idle pooled connection (or a new one). Like any HTTP client, a request that
    meets a keep-alive connection the server closed while idle (uvicorn: after 5 s) and got no byte
    back is sent again, once, on a new connection: the server never read it."""
    sent = time.perf_counter()
    resent = False
    for attempt in (0, 1):
        conn = None
        while pool and conn is None:
            conn = pool.pop()
            if conn.stale:
                conn.close()
                conn = None
        reused = conn is not None
        try:
            if conn is None:
                conn = await Conn.open(port)
        except (OSError, TimeoutError) as e:
            return Sample(scheduled, sent, time.perf_counter(), 0, error=f"connect {type(e).__name__}: {e}",
                          resent=resent)
        try:
            r = await conn.send(raw, timeout)
        except HttpError as e:
            if reused and e.nothing_received and attempt == 0:
                resent = True
                continue
            return Sample(scheduled, sent, time.perf_counter(), 0, error=str(e), resent=resent)
        done = time.perf_counter()
        if not conn.closed:
            pool.append(conn)
        return Sample(scheduled, sent, done, r.status, r.headers.get("retry-after"), resent=resent)
    raise AssertionError("unreachable")


async def closed_loop(port: int, bodies: Sequence[bytes], *, clients: int, duration_s: float,
                      max_requests: int, path: str = "/similarity", headers: dict[str, str] | None = None,
                      timeout: float = 30.0) -> LoadResult:
    """``clients`` clients each send a request, wait for its answer, send the next, until
    ``duration_s`` seconds or ``max_requests`` requests in all."""
    raws = [build_request("POST", path, b, headers, port=port) for b in bodies]
    result = LoadResult(time.perf_counter(), 0.0)
    end = result.started + duration_s
    counter = iter(range(max_requests))

    async def client(k: int) -> None:
        pool: list[Conn] = []
        for i in counter:
            now = time.perf_counter()
            if now >= end:
                break
            result.samples.append(await _one(pool, port, raws[(i * 7 + k) % len(raws)], now, timeout))
        for c in pool:
            c.close()

    await asyncio.gather(*(client(k) for k in range(clients)))
    result.stopped = result.finished = time.perf_counter()
    return result


async def open_loop(port: int, bodies: Sequence[bytes], *, rate: float, duration_s: float, max_requests: int,
                    max_connections: int = 512, path: str = "/similarity", headers: dict[str, str] | None = None,
                    seed: int = 0, timeout: float = 30.0, drain_timeout_s: float = 30.0,
                    stopped: asyncio.Event | None = None) -> LoadResult:
    """Poisson arrivals at ``rate`` requests/s for ``duration_s`` seconds (at most ``max_requests``),
    each sent as soon as it is due on an idle keep-alive connection (or a new one), whatever the
    state of earlier requests: the offered load does not bend to the service. An arrival that finds
    ``max_connections`` requests outstanding is not sent (``not_sent``). Then sets ``stopped`` (when
    given) and waits (at most ``drain_timeout_s``) for the outstanding requests."""
    rng = random.Random(seed)
    raws = [build_request("POST", path, b, headers, port=port) for b in bodies]
    pool: list[Conn] = []
    pending: set[asyncio.Task] = set()
    result = LoadResult(time.perf_counter(), 0.0)
    end = result.started + duration_s
    due = result.started

    def record(task: asyncio.Task) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            result.samples.append(task.result())

    for i in range(max_requests):
        due += rng.expovariate(rate)
        if due >= end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= max_connections:
            result.not_sent += 1
            continue
        task = asyncio.ensure_future(_one(pool, port, raws[i % len(raws)], due, timeout))
        pending.add(task)
        task.add_done_callback(record)
    result.stopped = time.perf_counter()
    if stopped is not None:
        stopped.set()
    if pending:
        await asyncio.wait(set(pending), timeout=drain_timeout_s)
    result.finished = time.perf_counter()
    for t in list(pending):
        t.cancel()
    for c in pool:
        c.close()
    return result


async def saturation(port: int, bodies: Sequence[bytes], *, clients: Sequence[int], duration_s: float,
                     max_requests: int = 1_000_000) -> dict[str, Any]:
    """Closed-loop sweep over ``clients``; saturation = the highest rate of 200 responses (requests/s)
    of a step without refusals (every step is kept in ``steps``)."""
    steps = []
    for c in clients:
        r = await closed_loop(port, bodies, clients=c, duration_s=duration_s, max_requests=max_requests)
        steps.append({"clients": c, "rps_200": round(r.count(200) / r.duration, 2), "statuses": r.statuses(),
                      "latency_ms": latency_ms(s.latency for s in r.samples if s.status == 200)})
    clean = [s for s in steps if set(s["statuses"]) == {"200"}] or steps
    best = max(clean, key=lambda s: s["rps_200"])
    return {"rps": best["rps_200"], "clients": best["clients"], "steps": steps}


async def loop_lag(stop: asyncio.Event, every_s: float = 0.005, max_samples: int = 200_000) -> list[float]:
    """This process's event-loop lag (seconds a 5 ms sleep overshot), until ``stop`` is set: when the
    load generator itself is starved of CPU, client-side latencies grow by about this much."""
    lags: list[float] = []
    for _ in range(max_samples):
        if stop.is_set():
            break
        t = time.perf_counter()
        await asyncio.sleep(every_s)
        lags.append(max(0.0, time.perf_counter() - t - every_s))
    return lags


