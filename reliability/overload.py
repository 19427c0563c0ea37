"""Overload: about 4x the saturation rate, open loop, then recovery.

    .venv/bin/python -m reliability.overload                  # ~2 min: 20 s saturation sweep + 60 s at 4x

Starts the real service (``pete-serve`` entry, app defaults, ``--torch-threads`` inference threads,
the bundled checkpoint when present, else a synthetic one with the default config's compute
shape) on 127.0.0.1, then:

1. saturation: closed-loop sweep (``--sat-clients``, ``--sat-duration`` s each) of ``POST
   /similarity`` with ``--pairs`` pairs per request; saturation = the best rate of 200s;
2. idle baseline: 20 sequential requests;
3. overload: Poisson arrivals at ``--factor`` x saturation for ``--duration`` s (at most
   ``rate x duration x 1.2`` requests), sampling /metrics every 250 ms (``pete_queue_depth``,
   ``pete_queue_depth_max``: the exact high-water mark) and the server's RSS;
4. recovery: from the moment the generator stops sending, sequential probe requests until one is
   answered normally (200 within max(2 x idle p99, 25 ms)); again once the backlog has drained.

Checks (figures in the JSON): 0 responses 5xx; every non-200 is a 429 with Retry-After; 0
connection errors; p99 latency of a 429 < 10 ms; the queue never held more than its capacity
(high-water mark ``pete_queue_depth_max``); /healthz and /readyz 200 during and after; a normal
answer within 1 s of the load stopping.

Writes ``reliability/results/overload.json``; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings

from loadtest.fixtures import similarity_bodies
from loadtest.http import request
from loadtest.load import LoadResult, loop_lag, open_loop, saturation
from loadtest.prom import bucket_fraction, metric, scrape
from loadtest.results import machine_info, write_json
from loadtest.server import ServerProcess
from loadtest.stats import latency_ms
from reliability.common import RESULTS_DIR, check, print_checks, resolve_model

DEFAULT_CAPACITY = Settings.model_fields["queue_capacity"].default


async def _probe(port: int, body: bytes) -> tuple[int, float]:
    t = time.perf_counter()
    try:
        r = await request(port, "POST", "/similarity", body, timeout=30)
        return r.status, time.perf_counter() - t
    except Exception:
        return 0, time.perf_counter() - t


async def _recovery(port: int, body: bytes, since: float, normal_s: float, max_probes: int = 200,
                    max_s: float = 15.0) -> dict[str, Any]:
    """Sequential probes from now on; seconds from ``since`` to the first normal answer."""
    probes = []
    first_normal = None
    deadline = time.perf_counter() + max_s
    for _ in range(max_probes):
        if time.perf_counter() > deadline:
            break
        status, lat = await _probe(port, body)
        probes.append({"t_s": round(time.perf_counter() - since, 4), "status": status, "latency_ms": round(lat * 1e3, 2)})
        if first_normal is None and status == 200 and lat <= normal_s:
            first_normal = time.perf_counter() - since
        if first_normal is not None and len(probes) >= 5 and time.perf_counter() - since > first_normal + 0.05:
            break
    health = {p: (await request(port, "GET", p, timeout=10)).status for p in ("/healthz", "/readyz")}
    return {"first_normal_answer_s": None if first_normal is None else round(first_normal, 4),
            "probes": probes[:40], "health": health}


@dataclass
class OverloadRun:
    """What the overload phase measured: the open-loop load, the /metrics + RSS samples and health
    checks taken while it ran, the generator's event-loop lag, recovery probes, final /metrics."""

    rate: float
    load: LoadResult
    samples: list[dict[str, float]]
    health_during: dict[str, int]
    lags: list[float]
    after_stop: dict[str, Any]
    after_drain: dict[str, Any]
    metrics: dict[str, float]


async def run_overload(srv: ServerProcess, *, pairs: int = 4, factor: float = 4.0, duration_s: float = 60.0,
                       sat_clients: tuple[int, ...] = (8, 16, 32, 64), sat_duration_s: float = 5.0,
                       sat_rps: float | None = None, capacity: int = DEFAULT_CAPACITY,
                       max_connections: int = 1024, seed: int = 0, sample_every_s: float = 0.25) -> dict[str, Any]:
    """Measure saturation (unless ``sat_rps`` is given), offer ``factor`` x it for ``duration_s``, then
    probe recovery. Returns the figures and the checks (measure -> summarise -> judge)."""
    bodies = similarity_bodies(200, pairs, seed)
    out: dict[str, Any] = {"pairs_per_request": pairs, "queue_capacity_items": capacity, "factor": factor,
                           "duration_s": duration_s}
    out.update(await measure_baseline(srv.port, bodies, pairs=pairs, capacity=capacity, sat_rps=sat_rps,
                                      sat_clients=sat_clients, sat_duration_s=sat_duration_s))
    run = await measure_overload(srv, bodies, rate=factor * out["saturation_rps"], duration_s=duration_s,
                                 normal_s=out["normal_answer_limit_ms"] / 1e3, max_connections=max_connections,
                                 seed=seed, sample_every_s=sample_every_s)
    out.update(summarise(run))
    out["checks"] = judge(out, run, factor=factor, capacity=capacity)
    return out


async def measure_baseline(port: int, bodies: list[bytes], *, pairs: int, capacity: int, sat_rps: float | None,
                           sat_clients: tuple[int, ...], sat_duration_s: float) -> dict[str, Any]:
    """Warm-up, saturation (unless given), and the idle latency of 20 sequential requests, from which
    a "normal answer" is defined (within max(2 x the slowest idle one, 25 ms))."""
    out: dict[str, Any] = {}
    await saturation(port, bodies, clients=(8,), duration_s=1.0)
    if sat_rps is None:
        out["saturation"] = await saturation(port, bodies, clients=sat_clients, duration_s=sat_duration_s)
        sat_rps = out["saturation"]["rps"]
    out["saturation_rps"] = sat_rps
    out["saturation_items_per_s"] = round(sat_rps * 2 * pairs, 1)
    lat = [(await _probe(port, bodies[i]))[1] for i in range(20)]
    out["idle_latency_ms"] = latency_ms(lat)
    # a request that finds the queue full-but-one waits for it all: capacity / throughput seconds
    out["queue_drain_bound_s"] = round(capacity / out["saturation_items_per_s"], 3)
    out["normal_answer_limit_ms"] = round(max(2 * max(lat), 0.025) * 1e3, 2)
    return out


async def measure_overload(srv: ServerProcess, bodies: list[bytes], *, rate: float, duration_s: float, normal_s: float,
                           max_connections: int, seed: int, sample_every_s: float) -> OverloadRun:
    """Poisson arrivals at ``rate`` for ``duration_s``, with a /metrics + RSS sampler and health checks
    while it runs, recovery probes from the moment it stops, and again once the backlog drained."""
    port = srv.port
    samples: list[dict[str, float]] = []
    health_during: dict[str, int] = {}
    stop_sampler, stopped = asyncio.Event(), asyncio.Event()

    def count(key: str) -> None:
        health_during[key] = health_during.get(key, 0) + 1

    async def sampler() -> None:
        end = time.perf_counter() + duration_s + 60
        while not stop_sampler.is_set() and time.perf_counter() < end:
            try:
                m = await scrape(port)
                samples.append({"depth": metric(m, "pete_queue_depth"), "depth_max": metric(m, "pete_queue_depth_max"),
                                "rss": srv.rss()})
                if len(samples) % 8 == 1:
                    for p in ("/healthz", "/readyz"):
                        count(f"{p} {(await request(port, 'GET', p, timeout=10)).status}")
            except Exception as e:  # noqa: BLE001 - recorded, the load goes on
                count(f"sampler {type(e).__name__}")
            await asyncio.sleep(sample_every_s)

    async def recover_after_stop() -> dict[str, Any]:
        await stopped.wait()
        return await _recovery(port, bodies[0], time.perf_counter(), normal_s)

    sampler_task = asyncio.ensure_future(sampler())
    recovery_task = asyncio.ensure_future(recover_after_stop())
    lag_task = asyncio.ensure_future(loop_lag(stopped))
    load = await open_loop(port, bodies, rate=rate, duration_s=duration_s, max_requests=int(rate * duration_s * 1.2) + 10,
                           max_connections=max_connections, seed=seed, stopped=stopped)
    drained_at = max((s.done for s in load.samples), default=load.stopped)
    lags = await lag_task
    after_stop = await recovery_task
    stop_sampler.set()
    await sampler_task
    after_drain = await _recovery(port, bodies[1], time.perf_counter(), normal_s)
    after_drain["backlog_drained_s_after_stop"] = round(drained_at - load.stopped, 3)
    return OverloadRun(rate, load, samples, health_during, lags, after_stop, after_drain, await scrape(port))


def summarise(run: OverloadRun) -> dict[str, Any]:
    """The overload phase's figures: what was offered and answered, latencies, queue and memory."""
    load, m = run.load, run.metrics
    s429 = [s for s in load.samples if s.status == 429]
    rss = [s["rss"] for s in run.samples if s["rss"]]
    return {
        "offered_rps": round(run.rate, 1),
        "sent": len(load.samples), "not_sent": load.not_sent,
        "achieved_offered_rps": round((len(load.samples) + load.not_sent) / load.duration, 1),
        "statuses": load.statuses(), "connection_errors": load.errors(), "resent_after_idle_close": load.resent(),
        "goodput_rps": round(load.count(200) / load.duration, 1),
        "latency_429_ms": latency_ms(load.latencies(429)),
        "latency_429_from_schedule_ms": latency_ms(load.latencies(429, from_schedule=True)),
        "latency_200_ms": latency_ms(load.latencies(200)),
        "client_loop_lag_ms": latency_ms(run.lags),
        "retry_after_values": sorted({s.retry_after for s in s429 if s.retry_after}),
        "missing_retry_after": sum(1 for s in s429 if not s.retry_after),
        "server_429_fraction_le_10ms": round(bucket_fraction(m, "pete_request_duration_seconds", "0.01",
                                                             endpoint="/similarity", status="429"), 5),
        "server_5xx": sum(v for k, v in m.items() if k.startswith("pete_request_duration_seconds_count")
                          and 'status="5' in k),
        "rejected_queue_full": metric(m, "pete_rejected_requests_total", reason="queue_full"),
        "queue_depth_max_metric": metric(m, "pete_queue_depth_max"),
        "queue_depth_max_sampled": max((s["depth"] for s in run.samples), default=0.0),
        "queue_depth_samples": len(run.samples),
        "rss_mb": {"min": round(min(rss) / 2**20, 1), "max": round(max(rss) / 2**20, 1)} if rss else None,
        "health_during": run.health_during,
        "recovery_after_stop": run.after_stop,
        "recovery_after_drain": run.after_drain,
    }


def judge(out: dict[str, Any], run: OverloadRun, *, factor: float, capacity: int) -> dict[str, dict[str, Any]]:
    """The overload checks (module docstring) on the summarised figures."""
    statuses, rate = out["statuses"], run.rate
    non_200_429 = {k: v for k, v in statuses.items() if k not in ("200", "429")}
    client_5xx = sum(v for k, v in statuses.items() if k.startswith("5"))
    p99_429 = out["latency_429_ms"].get("p99", float("nan"))
    after_stop, after_drain, during = out["recovery_after_stop"], out["recovery_after_drain"], out["health_during"]
    health_ok = all(k.endswith(" 200") for k in during) and bool(during) \
        and set(after_stop["health"].values()) == {200} and set(after_drain["health"].values()) == {200}
    first = after_stop["first_normal_answer_s"]
    depth_metric, depth_sampled = out["queue_depth_max_metric"], out["queue_depth_max_sampled"]
    return {
        "offered_about_factor_x_saturation": check(out["achieved_offered_rps"] >= 0.9 * rate,
                                                   round(out["achieved_offered_rps"] / out["saturation_rps"], 2),
                                                   f">= {0.9 * factor:.1f}x"),
        "overload_reached_429": check(statuses.get("429", 0) > 0, statuses.get("429", 0), "> 0"),
        "no_5xx": check(out["server_5xx"] == 0 and client_5xx == 0, {"client": client_5xx, "server": out["server_5xx"]}, 0),
        "every_non_200_is_429": check(not non_200_429 and out["not_sent"] == 0,
                                      {**non_200_429, "not_sent": out["not_sent"]}, "only 200/429"),
        "every_429_has_retry_after": check(out["missing_retry_after"] == 0, out["missing_retry_after"], 0),
        "p99_429_latency_ms": check(p99_429 < 10.0, p99_429, "< 10"),
        "queue_within_capacity": check(depth_metric <= capacity and depth_sampled <= capacity,
                                       {"high_water_mark": depth_metric, "sampled_max": depth_sampled}, capacity),
        "healthy_during_and_after": check(health_ok, {"during": during, "after": after_drain["health"]}, "all 200"),
        "answers_normally_within_1s_of_stop": check(first is not None and first <= 1.0, first, "<= 1.0 s"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="auto", help="auto | bundled | tiny | reference | checkpoint dir")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload (default 60)")
    ap.add_argument("--factor", type=float, default=4.0, help="offered load / saturation (default 4)")
    ap.add_argument("--pairs", type=int, default=4, help="pairs per /similarity request (default 4)")
    ap.add_argument("--sat-duration", type=float, default=5.0, help="seconds per saturation step (default 5)")
    ap.add_argument("--sat-clients", default="8,16,32,64", help="closed-loop client counts of the sweep")
    ap.add_argument("--torch-threads", type=int, default=1, help="PETE_TORCH_THREADS of the server (default 1)")
    ap.add_argument("--queue-capacity", type=int, default=DEFAULT_CAPACITY, help="PETE_QUEUE_CAPACITY (default: app's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--env", action="append", default=[], metavar="PETE_X=V", help="another service setting (repeatable)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "overload.json")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="pete-overload-")  # removed at exit (checkpoints, server logs)
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    env = {"PETE_TORCH_THREADS": str(args.torch_threads), "PETE_QUEUE_CAPACITY": str(args.queue_capacity),
           **dict(kv.split("=", 1) for kv in args.env)}
    t0 = time.perf_counter()
    with ServerProcess(model, env=env, log_path=work / "server.log") as srv:
        print(f"server pid {srv.pid} on 127.0.0.1:{srv.port} ({model_desc}); measuring saturation ...")
        out = asyncio.run(run_overload(srv, pairs=args.pairs, factor=args.factor, duration_s=args.duration,
                                       sat_clients=tuple(int(c) for c in args.sat_clients.split(",")),
                                       sat_duration_s=args.sat_duration, capacity=args.queue_capacity, seed=args.seed))
        out["server_log_tail"] = srv.log_tail(1500)
    out = {"model": model_desc, "machine": machine_info(), "server_env": env, **out,
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.out, out)
    print(f"saturation {out['saturation_rps']} req/s ({out['saturation_items_per_s']} items/s); offered "
          f"{out['achieved_offered_rps']} req/s for {args.duration} s: {out['statuses']}; 429 p99 "
          f"{out['latency_429_ms'].get('p99')} ms; first normal answer {out['recovery_after_stop']['first_normal_answer_s']} s "
          f"after the load stopped -> {args.out}")
    ok = print_checks(out["checks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
