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
from pathlib import Path
from typing import Any

from app.settings import Settings
from reliability.common import (RESULTS_DIR, ServerProcess, bucket_fraction, check, latency_ms, loop_lag, machine,
                                metric, open_loop, print_checks, request, resolve_model, saturation, scrape,
                                similarity_bodies, write_json)

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


async def run_overload(srv: ServerProcess, *, pairs: int = 4, factor: float = 4.0, duration_s: float = 60.0,
                       sat_clients: tuple[int, ...] = (8, 16, 32, 64), sat_duration_s: float = 5.0,
                       sat_rps: float | None = None, capacity: int = DEFAULT_CAPACITY,
                       max_connections: int = 1024, seed: int = 0, sample_every_s: float = 0.25) -> dict[str, Any]:
    """Measure saturation (unless ``sat_rps`` is given), offer ``factor`` x it for ``duration_s``, then
    probe recovery. Returns the figures and the checks."""
    port = srv.port
    bodies = similarity_bodies(200, pairs, seed)
    out: dict[str, Any] = {"pairs_per_request": pairs, "queue_capacity_items": capacity, "factor": factor,
                           "duration_s": duration_s}
    # warm-up, then saturation
    await saturation(port, bodies, clients=(8,), duration_s=1.0)
    if sat_rps is None:
        sat = await saturation(port, bodies, clients=sat_clients, duration_s=sat_duration_s)
        out["saturation"] = sat
        sat_rps = sat["rps"]
    out["saturation_rps"] = sat_rps
    out["saturation_items_per_s"] = round(sat_rps * 2 * pairs, 1)

    # idle baseline
    lat = []
    for i in range(20):
        status, t = await _probe(port, bodies[i])
        lat.append(t)
    out["idle_latency_ms"] = latency_ms(lat)
    # a request that finds the queue full-but-one waits for it all: capacity / throughput seconds
    out["queue_drain_bound_s"] = round(capacity / out["saturation_items_per_s"], 3)
    normal_s = max(2 * sorted(lat)[-1], 0.025)
    out["normal_answer_limit_ms"] = round(normal_s * 1e3, 2)

    # overload, with a /metrics + RSS sampler and health checks while it runs
    rate = factor * sat_rps
    samples: list[dict[str, float]] = []
    health_during: dict[str, int] = {}
    stop_sampler = asyncio.Event()

    async def sampler() -> None:
        end = time.perf_counter() + duration_s + 60
        while not stop_sampler.is_set() and time.perf_counter() < end:
            try:
                m = await scrape(port)
                samples.append({"depth": metric(m, "pete_queue_depth"), "depth_max": metric(m, "pete_queue_depth_max"),
                                "rss": srv.rss()})
                if len(samples) % 8 == 1:
                    for p in ("/healthz", "/readyz"):
                        s = (await request(port, "GET", p, timeout=10)).status
                        health_during[f"{p} {s}"] = health_during.get(f"{p} {s}", 0) + 1
            except Exception as e:  # noqa: BLE001 - recorded, the load goes on
                health_during[f"sampler {type(e).__name__}"] = health_during.get(f"sampler {type(e).__name__}", 0) + 1
            await asyncio.sleep(sample_every_s)

    stopped = asyncio.Event()
    recovery_task: asyncio.Task | None = None

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

    m = await scrape(port)
    s429 = [s for s in load.samples if s.status == 429]
    s200 = [s for s in load.samples if s.status == 200]
    non_200_429 = {k: v for k, v in load.statuses().items() if k not in ("200", "429")}
    server_5xx = sum(v for k, v in m.items() if k.startswith("pete_request_duration_seconds_count")
                     and 'status="5' in k)
    depth_max_metric = metric(m, "pete_queue_depth_max")
    depth_max_sampled = max((s["depth"] for s in samples), default=0.0)
    rss = [s["rss"] for s in samples if s["rss"]]
    out.update({
        "offered_rps": round(rate, 1),
        "sent": len(load.samples), "not_sent": load.not_sent,
        "achieved_offered_rps": round((len(load.samples) + load.not_sent) / load.duration, 1),
        "statuses": load.statuses(), "connection_errors": load.errors(), "resent_after_idle_close": load.resent(),
        "goodput_rps": round(len(s200) / load.duration, 1),
        "latency_429_ms": latency_ms(s.latency for s in s429),
        "latency_429_from_schedule_ms": latency_ms(s.latency_from_schedule for s in s429),
        "latency_200_ms": latency_ms(s.latency for s in s200),
        "client_loop_lag_ms": latency_ms(lags),
        "retry_after_values": sorted({s.retry_after for s in s429 if s.retry_after}),
        "missing_retry_after": sum(1 for s in s429 if not s.retry_after),
        "server_429_fraction_le_10ms": round(bucket_fraction(m, "pete_request_duration_seconds", "0.01",
                                                             endpoint="/similarity", status="429"), 5),
        "server_5xx": server_5xx,
        "rejected_queue_full": metric(m, "pete_rejected_requests_total", reason="queue_full"),
        "queue_depth_max_metric": depth_max_metric,
        "queue_depth_max_sampled": depth_max_sampled,
        "queue_depth_samples": len(samples),
        "rss_mb": {"min": round(min(rss) / 2**20, 1), "max": round(max(rss) / 2**20, 1)} if rss else None,
        "health_during": health_during,
        "recovery_after_stop": after_stop,
        "recovery_after_drain": after_drain,
    })
    p99_429 = out["latency_429_ms"].get("p99", float("nan"))
    health_ok = all(k.endswith(" 200") for k in health_during) and bool(health_during) \
        and set(after_stop["health"].values()) == {200} and set(after_drain["health"].values()) == {200}
    first = after_stop["first_normal_answer_s"]
    out["checks"] = {
        "offered_about_factor_x_saturation": check(out["achieved_offered_rps"] >= 0.9 * rate,
                                                   round(out["achieved_offered_rps"] / sat_rps, 2), f">= {0.9 * factor:.1f}x"),
        "overload_reached_429": check(len(s429) > 0, len(s429), "> 0"),
        "no_5xx": check(server_5xx == 0 and not any(k.startswith("5") for k in load.statuses()),
                        {"client": sum(v for k, v in load.statuses().items() if k.startswith("5")), "server": server_5xx}, 0),
        "every_non_200_is_429": check(not non_200_429 and load.not_sent == 0, {**non_200_429, "not_sent": load.not_sent},
                                      "only 200/429"),
        "every_429_has_retry_after": check(out["missing_retry_after"] == 0, out["missing_retry_after"], 0),
        "p99_429_latency_ms": check(p99_429 < 10.0, p99_429, "< 10"),
        "queue_within_capacity": check(depth_max_metric <= capacity and depth_max_sampled <= capacity,
                                       {"high_water_mark": depth_max_metric, "sampled_max": depth_max_sampled}, capacity),
        "healthy_during_and_after": check(health_ok, {"during": health_during, "after": after_drain["health"]}, "all 200"),
        "answers_normally_within_1s_of_stop": check(first is not None and first <= 1.0, first, "<= 1.0 s"),
    }
    return out


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
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "overload.json")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="pete-overload-")  # removed at exit (checkpoints, server logs)
    work = Path(tmp.name)
    model, model_desc = resolve_model(args.model, work)
    env = {"PETE_TORCH_THREADS": str(args.torch_threads), "PETE_QUEUE_CAPACITY": str(args.queue_capacity)}
    t0 = time.perf_counter()
    with ServerProcess(model, env=env, log_path=work / "server.log") as srv:
        print(f"server pid {srv.pid} on 127.0.0.1:{srv.port} ({model_desc}); measuring saturation ...")
        out = asyncio.run(run_overload(srv, pairs=args.pairs, factor=args.factor, duration_s=args.duration,
                                       sat_clients=tuple(int(c) for c in args.sat_clients.split(",")),
                                       sat_duration_s=args.sat_duration, capacity=args.queue_capacity, seed=args.seed))
        out["server_log_tail"] = srv.log_tail(1500)
    out = {"model": model_desc, "machine": machine(), "server_env": env, **out,
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
