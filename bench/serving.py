"""Serving benchmark: the real service on 127.0.0.1 under concurrent load, one command.

    .venv/bin/python -m bench.serving                       # all scenarios, ~8 min on 2 cores

For each scenario a fresh ``uvicorn --factory`` subprocess is started on 127.0.0.1 at a free port
(one worker), waited for on /readyz, and driven with ``POST /similarity`` (or, with
``--endpoint nli``, ``POST /nli``) requests built from the STS-B test pairs (``--pairs-per-request``
pairs each) by an asyncio + aiohttp load generator in this process:

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
                        service's defaults: micro-batching on, int8 linear layers (PETE_QUANTIZE=int8),
                        the PETE embedding computed per batch;
- ``pete_wait5ms``      the same, but an idle model waits 5 ms for more work (PETE_MAX_WAIT_MS=5, the
                        default before continuous batching);
- ``pete_torch_default`` the same with torch's own thread count (PETE_TORCH_THREADS=0: one per core);
- ``pete_2workers``     the same with two worker processes (PETE_WORKERS=2, /metrics merged through
                        prometheus-client's multiprocess mode; RSS and CPU summed over the processes);
- ``pete_nobatch``      the same with batching off (PETE_MAX_BATCH_SIZE=1, PETE_MAX_WAIT_MS=0);
- ``minilm``            all-MiniLM-L6-v2 behind the same service, batcher, routes and defaults (its BERT
                        linear layers int8 too): the app has no sentence-transformers backend, so
                        ``bench.teacher_backend:create_app`` swaps the model loader for a
                        ``SentenceEncoder``-shaped wrapper of the teacher;
- ``pete_materialized`` PETE with the embedding table materialized once at load
                        (PETE_MATERIALIZE_EMBEDDINGS=true), against ``pete``'s computed-per-batch table;
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
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from bench.common import (DEFAULT_DATA_DIR, REPO_ROOT, RESULTS_DIR, fmt_num, free_port, latency_summary,
                          load_sentence_pairs, machine_info, markdown_table, tree_cpu_seconds, tree_memory,
                          write_json)

HOST = "127.0.0.1"  # the only address this benchmark ever sends traffic to
JSON_HEADERS = {"content-type": "application/json"}
ALL_SCENARIOS = ("pete", "pete_wait5ms", "pete_torch_default", "pete_2workers", "pete_nobatch", "minilm",
                 "pete_materialized", "pete_fp32", "minilm_fp32", "pete_baseline")
ENDPOINTS = ("similarity", "nli")
TARGETS = {"pete_vs_minilm": 5.0, "pete_vs_nobatch_at_32": 4.0, "p99_ms_at_half_load": 50.0, "peak_rss_mb": 400.0,
           "pete_vs_baseline": 0.7}


# ---- scenarios and the server process ------------------------------------------------------------
@dataclass
class Scenario:
    name: str
    description: str
    factory: str
    env: dict[str, str] = field(default_factory=dict)


def build_scenarios(names: Sequence[str], model: str, torch_threads: int | None, extra_env: dict[str, str],
                    baseline_model: str | None = None) -> list[Scenario]:
    """The scenarios to run, in the order given. Unknown names (and ``pete_baseline`` without a
    ``baseline_model``) raise ValueError."""
    base = {"PETE_MODEL_PATH": str(model), "PETE_LOG_LEVEL": "warning",
            **({"PETE_TORCH_THREADS": str(torch_threads)} if torch_threads is not None else {}),
            **extra_env}
    out = []
    for name in names:
        if name == "pete":
            out.append(Scenario(name, "PETE, service defaults (batching on, int8, table computed per batch)",
                                "app.main:create_app", dict(base)))
        elif name == "pete_wait5ms":
            out.append(Scenario(name, "PETE, an idle model waits 5 ms for more work (the default before continuous "
                                      "batching)", "app.main:create_app", {**base, "PETE_MAX_WAIT_MS": "5"}))
        elif name == "pete_torch_default":
            out.append(Scenario(name, "PETE, torch's own intra-op thread count (PETE_TORCH_THREADS=0: one per core)",
                                "app.main:create_app", {**base, "PETE_TORCH_THREADS": "0"}))
        elif name == "pete_2workers":
            out.append(Scenario(name, "PETE, two worker processes (PETE_WORKERS=2), each with its own batcher "
                                      "and PETE_TORCH_THREADS threads", "app.main:create_app",
                                {**base, "PETE_WORKERS": "2"}))
        elif name == "pete_nobatch":
            out.append(Scenario(name, "PETE, batching off (max batch 1)", "app.main:create_app",
                                {**base, "PETE_MAX_BATCH_SIZE": "1", "PETE_MAX_WAIT_MS": "0"}))
        elif name == "pete_materialized":
            out.append(Scenario(name, "PETE, embedding table materialized at load", "app.main:create_app",
                                {**base, "PETE_MATERIALIZE_EMBEDDINGS": "true"}))
        elif name == "pete_fp32":
            out.append(Scenario(name, "PETE, float32 (no quantization)", "app.main:create_app",
                                {**base, "PETE_QUANTIZE": "none"}))
        elif name == "pete_baseline":
            if not baseline_model:
                raise ValueError("scenario pete_baseline needs --baseline-model")
            out.append(Scenario(name, f"PETE checkpoint {baseline_model}, service defaults", "app.main:create_app",
                                {**base, "PETE_MODEL_PATH": str(baseline_model)}))
        elif name in ("minilm", "minilm_fp32"):
            from bench.teacher_backend import teacher_model_dir

            fp32 = {"PETE_QUANTIZE": "none"} if name == "minilm_fp32" else {}
            out.append(Scenario(name, "all-MiniLM-L6-v2 (teacher) in the same service"
                                + (", float32" if fp32 else ", service defaults (int8)"),
                                "bench.teacher_backend:create_app",
                                {**base, "PETE_MODEL_PATH": str(teacher_model_dir()),
                                 "PETE_MODEL_NAME": "all-MiniLM-L6-v2", **fp32}))
        else:
            raise ValueError(f"unknown scenario {name!r}; choose from {ALL_SCENARIOS}")
    return out


class Server:
    """A uvicorn subprocess serving ``scenario`` on 127.0.0.1:<free port>; a context manager that
    always stops the process it started (SIGTERM, then SIGKILL after ``stop_timeout_s``)."""

    def __init__(self, scenario: Scenario, log_dir: Path, startup_timeout_s: float = 180.0,
                 stop_timeout_s: float = 30.0) -> None:
        self.scenario = scenario
        self.port = free_port(HOST)
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = log_dir / f"server_{scenario.name}.log"
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen | None = None
        self.startup_s = float("nan")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "Server":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.scenario.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        workers = int(env.get("PETE_WORKERS", "1"))
        if workers > 1:  # /metrics merged over the workers, as pete-serve sets it up (app.cli)
            metrics_dir = self.log_path.parent / f"metrics_{self.scenario.name}"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        cmd = [sys.executable, "-m", "uvicorn", "--factory", self.scenario.factory, "--host", HOST,
               "--port", str(self.port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
        self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2.0, trust_env=False) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise TimeoutError(f"server not ready within {self.startup_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()


# ---- requests --------------------------------------------------------------------------------------
def request_bodies(pairs: Sequence[tuple[str, str]], pairs_per_request: int, limit: int = 4096,
                   endpoint: str = "similarity") -> list[bytes]:
    """Pre-encoded request bodies for ``POST /<endpoint>`` (``ENDPOINTS``): consecutive groups of
    ``pairs_per_request`` pairs (cycling); /nli takes the first text as premise."""
    keys = {"similarity": ("text_a", "text_b"), "nli": ("premise", "hypothesis")}[endpoint]
    n = min(limit, max(1, len(pairs) // pairs_per_request))
    out = []
    for i in range(n):
        group = [pairs[(i * pairs_per_request + j) % len(pairs)] for j in range(pairs_per_request)]
        out.append(json.dumps({"pairs": [dict(zip(keys, pair)) for pair in group]}).encode())
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {metric name: value summed over label sets} (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


@dataclass
class PhaseStats:
    """What one load phase measured (durations in seconds)."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    sent: int = 0
    elapsed: float = 0.0


def _session(base_url: str, connections: int, timeout_s: float):
    """An aiohttp client session for the load generator: ``connections`` keep-alive connections to
    ``base_url``, no proxies from the environment. aiohttp rather than httpx here: the load
    generator shares the machine with the server, and httpx was its bottleneck (0.48 of a core for
    235 requests/s; aiohttp 0.11 for 706 requests/s, i.e. ~1/10 the CPU per request:
    bench/results/serving.md before and after)."""
    import aiohttp

    return aiohttp.ClientSession(base_url=base_url, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=False)


async def _post(session, path: str, body: bytes, st: PhaseStats, t0: float) -> None:
    """POST one body to ``path``; record the latency from ``t0`` (200) or the error kind."""
    import aiohttp

    try:
        async with session.post(path, data=body, headers=JSON_HEADERS) as r:
            await r.read()
            status = r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        st.errors[type(e).__name__] += 1
        return
    if status == 200:
        st.latencies.append(time.perf_counter() - t0)
    else:
        st.errors[str(status)] += 1


async def closed_loop(base_url: str, bodies: Sequence[bytes], *, clients: int, duration_s: float,
                      max_requests: int, timeout_s: float = 30.0, path: str = "/similarity") -> PhaseStats:
    """``clients`` workers, each one request in flight to ``path``, until ``duration_s`` or
    ``max_requests``."""
    st = PhaseStats()
    async with _session(base_url, clients, timeout_s) as session:
        t_start = time.perf_counter()
        deadline = t_start + duration_s

        async def worker(wid: int) -> None:
            i = wid
            while time.perf_counter() < deadline and st.sent < max_requests:
                st.sent += 1
                body = bodies[i % len(bodies)]
                i += clients
                await _post(session, path, body, st, time.perf_counter())

        await asyncio.gather(*(worker(w) for w in range(clients)))
        st.elapsed = time.perf_counter() - t_start
    return st


async def open_loop(base_url: str, bodies: Sequence[bytes], *, rate_rps: float, duration_s: float,
                    max_requests: int, max_in_flight: int = 512, timeout_s: float = 30.0,
                    seed: int = 0, path: str = "/similarity") -> PhaseStats:
    """Poisson arrivals at ``rate_rps`` for ``duration_s`` (at most ``max_requests``); latency from the
    scheduled send time. Arrivals that find ``max_in_flight`` requests open are counted as
    ``client_overflow`` errors and not sent."""
    st = PhaseStats()
    rng = random.Random(seed)
    async with _session(base_url, max_in_flight, timeout_s) as session:
        in_flight: set[asyncio.Task] = set()
        t_start = time.perf_counter()
        t_next = t_start
        i = 0
        while st.sent < max_requests:
            t_next += rng.expovariate(rate_rps)
            if t_next - t_start > duration_s:
                break
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                st.errors["client_overflow"] += 1
                continue
            st.sent += 1
            task = asyncio.create_task(_post(session, path, bodies[i % len(bodies)], st, t_next))
            i += 1
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout_s + 5)
        st.elapsed = time.perf_counter() - t_start
    return st


# ---- one scenario ------------------------------------------------------------------------------------
def _get(base_url: str, path: str) -> Any:
    import httpx

    with httpx.Client(base_url=base_url, timeout=10.0, trust_env=False) as c:
        r = c.get(path)
        r.raise_for_status()
        return r.json() if path != "/metrics" else r.text


def _probe(base_url: str, pairs: Sequence[tuple[str, str]]) -> list[float]:
    import httpx

    with httpx.Client(base_url=base_url, timeout=30.0, trust_env=False) as c:
        r = c.post("/similarity", json={"pairs": [{"text_a": a, "text_b": b} for a, b in pairs]})
        r.raise_for_status()
        return r.json()["scores"]


def run_phase(server: Server, loop_coro_factory, pairs_per_request: int, label: str, **meta: Any) -> dict[str, Any]:
    """Run one load phase against ``server`` and summarise it (throughput, latency, CPU, batching)."""
    m0 = parse_metrics(_get(server.base_url, "/metrics"))
    cpu0, client0 = tree_cpu_seconds(server.pid), time.process_time()
    st: PhaseStats = asyncio.run(loop_coro_factory())
    cpu1, client1 = tree_cpu_seconds(server.pid), time.process_time()
    m1 = parse_metrics(_get(server.base_url, "/metrics"))

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    ok = len(st.latencies)
    passes = delta("pete_batch_size_count")
    res = {
        "phase": label, **meta, "requests_ok": ok, "requests_sent": st.sent,
        "errors": dict(st.errors), "error_count": sum(st.errors.values()), "elapsed_s": st.elapsed,
        "requests_per_s": ok / st.elapsed if st.elapsed else 0.0,
        "pairs_per_s": ok * pairs_per_request / st.elapsed if st.elapsed else 0.0,
        **latency_summary(st.latencies),
        "server_cpu_cores": (cpu1 - cpu0) / st.elapsed if st.elapsed else float("nan"),
        "client_cpu_cores": (client1 - client0) / st.elapsed if st.elapsed else float("nan"),
        "mean_sequences_per_pass": delta("pete_batch_size_sum") / passes if passes else float("nan"),
        "inference_busy_fraction": delta("pete_inference_duration_seconds_sum") / st.elapsed if st.elapsed else float("nan"),
        "mean_queue_wait_ms": 1000 * delta("pete_queue_wait_seconds_sum") / max(1.0, delta("pete_queue_wait_seconds_count")),
    }
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
    with Server(sc, log_dir, startup_timeout_s=args.startup_timeout) as srv:
        out["startup_s"] = srv.startup_s
        out["info"] = _get(srv.base_url, "/info")
        out["memory_idle"] = tree_memory(srv.pid)
        out["probe_scores"] = _probe(srv.base_url, probe_pairs)
        ppr, path = args.pairs_per_request, "/" + args.endpoint
        asyncio.run(closed_loop(srv.base_url, bodies, clients=max(args.clients), duration_s=args.warmup,
                                max_requests=args.max_requests, path=path))
        phases = []
        for c in args.clients:
            phases.append(run_phase(srv, lambda c=c: closed_loop(srv.base_url, bodies, clients=c, duration_s=args.duration,
                                                                  max_requests=args.max_requests, path=path),
                                    ppr, f"closed c={c}", loop="closed", clients=c))
        sat = max(phases, key=lambda p: p["pairs_per_s"])
        out["saturation_pairs_per_s"] = sat["pairs_per_s"]
        out["saturation_clients"] = sat["clients"]
        if args.open_duration > 0 and sat["requests_per_s"] > 0:
            rate = 0.5 * sat["requests_per_s"]
            phases.append(run_phase(srv, lambda: open_loop(srv.base_url, bodies, rate_rps=rate,
                                                           duration_s=args.open_duration,
                                                           max_requests=args.max_requests, seed=args.seed,
                                                           path=path),
                                    ppr, "open @ 50% sat", loop="open", target_rps=rate,
                                    target_pairs_per_s=rate * ppr))
        out["phases"] = phases
        out["memory_end"] = tree_memory(srv.pid)
    return out


def profile_server(sc: Scenario, args: argparse.Namespace, bodies: list[bytes], log_dir: Path,
                   top: int = 20) -> dict[str, Any]:
    """Profile ``sc``'s running server while ``max(--clients)`` closed-loop clients drive it for
    ``--profile-duration`` seconds: the service is started through ``bench.profiled_app`` (the same app
    plus two routes that switch a cProfile on and off on the event-loop thread), so the stats cover
    the load only. Returns the event loop's hot spots (HTTP, routing, validation, JSON, batcher
    bookkeeping). The inference thread is not covered; its hot spots are in the batch-compute
    profile (``bench.flops.profile_runner``)."""
    import httpx
    import pstats

    from bench.flops import pstats_rows

    path = (log_dir / f"server_{sc.name}.pstats").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    prof_sc = Scenario(sc.name, sc.description, "bench.profiled_app:create_app",
                       {**sc.env, "PETE_BENCH_INNER_FACTORY": sc.factory, "PETE_BENCH_PROFILE_PATH": str(path)})
    clients = max(args.clients)
    with Server(prof_sc, log_dir, startup_timeout_s=args.startup_timeout) as srv:
        asyncio.run(closed_loop(srv.base_url, bodies, clients=clients, duration_s=min(2.0, args.warmup),
                                max_requests=args.max_requests, path="/" + args.endpoint))
        with httpx.Client(base_url=srv.base_url, timeout=30.0, trust_env=False) as c:
            c.post("/_bench/profile/start").raise_for_status()
            st = asyncio.run(closed_loop(srv.base_url, bodies, clients=clients, duration_s=args.profile_duration,
                                         max_requests=args.max_requests, path="/" + args.endpoint))
            c.post("/_bench/profile/stop").raise_for_status()
    stats = pstats.Stats(str(path))
    loop_cpu = sum(v[2] for v in stats.stats.values())
    rows = pstats_rows(stats, top)
    return {"scenario": sc.name, "clients": clients, "duration_s": args.profile_duration,
            "requests_ok": len(st.latencies), "event_loop_cpu_s": loop_cpu,
            "event_loop_ms_per_request": 1000 * loop_cpu / max(1, len(st.latencies)),
            "pairs_per_s_under_profiler":
                len(st.latencies) * args.pairs_per_request / st.elapsed if st.elapsed else 0.0,
            "stats_file": str(path), "event_loop_hot_spots": rows}


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

    if pete and mini and mini["saturation_pairs_per_s"]:
        r = pete["saturation_pairs_per_s"] / mini["saturation_pairs_per_s"]
        add("pete / minilm pairs/s (saturation)", r, f">= {TARGETS['pete_vs_minilm']}x", r >= TARGETS["pete_vs_minilm"])
    else:
        add("pete / minilm pairs/s (saturation)", None, f">= {TARGETS['pete_vs_minilm']}x", None, "not measured")
    pf, mf = scenarios.get("pete_fp32"), scenarios.get("minilm_fp32")
    if pf and mf and mf["saturation_pairs_per_s"]:
        r = pf["saturation_pairs_per_s"] / mf["saturation_pairs_per_s"]
        add("pete_fp32 / minilm_fp32 pairs/s (saturation)", r, f">= {TARGETS['pete_vs_minilm']}x",
            r >= TARGETS["pete_vs_minilm"], "both float32 (informative)")
    a32, b32 = _phase(pete, "closed", 32), _phase(nob, "closed", 32)
    if a32 and b32 and b32["pairs_per_s"]:
        r = a32["pairs_per_s"] / b32["pairs_per_s"]
        add("pete / pete_nobatch pairs/s at 32 clients", r, f">= {TARGETS['pete_vs_nobatch_at_32']}x",
            r >= TARGETS["pete_vs_nobatch_at_32"])
    else:
        add("pete / pete_nobatch pairs/s at 32 clients", None, f">= {TARGETS['pete_vs_nobatch_at_32']}x", None,
            "needs 32 in --clients and both scenarios")
    op = _phase(pete, "open")
    if op and op["n"]:
        add("pete p99 latency at half saturation (ms)", op["p99_ms"], f"<= {TARGETS['p99_ms_at_half_load']}",
            op["p99_ms"] <= TARGETS["p99_ms_at_half_load"])
    else:
        add("pete p99 latency at half saturation (ms)", None, f"<= {TARGETS['p99_ms_at_half_load']}", None, "not measured")
    if pete and pete.get("memory_end", {}).get("hwm_bytes"):
        mb = pete["memory_end"]["hwm_bytes"] / 2**20
        add("pete service peak RSS (MiB)", mb, f"<= {TARGETS['peak_rss_mb']}", mb <= TARGETS["peak_rss_mb"])
    else:
        add("pete service peak RSS (MiB)", None, f"<= {TARGETS['peak_rss_mb']}", None, "not measured")
    base = scenarios.get("pete_baseline")
    if pete and base and base["saturation_pairs_per_s"]:
        r = pete["saturation_pairs_per_s"] / base["saturation_pairs_per_s"]
        add("pete / pete_baseline pairs/s (saturation)", r, f">= {TARGETS['pete_vs_baseline']}x",
            r >= TARGETS["pete_vs_baseline"], "same endpoint, same load, one run")
    return rows


def probe_agreement(scenarios: dict[str, dict]) -> list[dict[str, Any]]:
    """Max |score difference| on the probe pairs between PETE scenarios (~1e-6 for batching and
    materialization, which must not change results; ~1e-2 for float32 vs int8)."""
    rows = []
    ref = scenarios.get("pete")
    for name in ("pete_nobatch", "pete_materialized", "pete_fp32"):
        other = scenarios.get(name)
        if ref and other and ref.get("probe_scores") and other.get("probe_scores"):
            diff = max(abs(a - b) for a, b in zip(ref["probe_scores"], other["probe_scores"]))
            rows.append({"pair": f"pete vs {name}", "max_abs_diff": diff})
    return rows


def serving_markdown(result: dict[str, Any]) -> str:
    """serving.md: setup, targets, throughput/latency per phase, memory, probe agreement, FLOP/s."""
    from bench.flops import flops_markdown

    cfg = result["config"]
    sc = result["scenarios"]
    lines = ["# Serving benchmark\n",
             f"Run {result['started_at']} with `{result['command']}`.\n",
             f"Machine: {result['machine'].get('cpu')} ({result['machine'].get('cpu_count')} CPUs), torch "
             f"{result['machine'].get('torch')}, load average at start {result['machine'].get('load_average')}.\n",
             f"Load: `POST /{cfg.get('endpoint', 'similarity')}` with {cfg['pairs_per_request']} pair(s) per request from {result['texts']}; "
             f"closed loop {cfg['duration_s']} s per client count {cfg['clients']}, then an open loop (Poisson) "
             f"at half the saturation rate for {cfg['open_duration_s']} s (latency from the scheduled send time). "
             f"Server: one uvicorn worker, PETE_TORCH_THREADS={cfg['torch_threads'] or 'the service default'}; "
             "the load generator shares the same machine (its CPU use is shown as *client cores*).\n",
             "## Targets (reported, not asserted)\n",
             markdown_table(result["targets"], [
                 ("target", "target"), ("value", "measured", lambda v: fmt_num(v, 2)), ("goal", "goal"),
                 ("met", "met", lambda v: "–" if v is None else ("yes" if v else "**no**")), ("note", "note")]),
             "\n## Throughput and latency\n"]
    rows = []
    for name, s in sc.items():
        if "error" in s:
            rows.append({"scenario": name, "phase": "FAILED: " + s["error"][:200]})
            continue
        for p in s["phases"]:
            rows.append({"scenario": name, **p})
    lines.append(markdown_table(rows, [
        ("scenario", "scenario"), ("phase", "phase"), ("pairs_per_s", "pairs/s"),
        ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("error_count", "errors"),
        ("mean_sequences_per_pass", "seq/forward"), ("inference_busy_fraction", "inference busy",
                                                     lambda v: "–" if v is None else f"{100 * v:.0f}%"),
        ("mean_queue_wait_ms", "queue wait ms"),
        ("server_cpu_cores", "server cores", lambda v: fmt_num(v, 2)),
        ("client_cpu_cores", "client cores", lambda v: fmt_num(v, 2))]))
    lines.append("\n## Memory and model\n")
    mem_rows = []
    for name, s in sc.items():
        if "error" in s:
            continue
        info = s.get("info", {})
        mem_rows.append({"scenario": name, "idle": s["memory_idle"].get("rss_bytes", 0) / 2**20,
                         "end": s["memory_end"].get("rss_bytes", 0) / 2**20,
                         "peak": s["memory_end"].get("hwm_bytes", 0) / 2**20,
                         "params": info.get("parameters", {}).get("total"),
                         "model_mb": info.get("model_bytes", 0) / 2**20,
                         "materialized": info.get("materialized_embeddings"), "startup": s.get("startup_s"),
                         "quantization": info.get("quantization"),
                         "sat": s.get("saturation_pairs_per_s")})
    lines.append(markdown_table(mem_rows, [
        ("scenario", "scenario"), ("params", "parameters"), ("model_mb", "model MiB"),
        ("materialized", "table materialized"), ("quantization", "weights"), ("idle", "RSS idle MiB"), ("end", "RSS after load MiB"),
        ("peak", "peak RSS MiB"), ("startup", "start-up s"), ("sat", "saturation pairs/s")]))
    agree = probe_agreement(sc)
    if agree:
        lines.append("\nSame answers? Max |score difference| on the probe pairs:\n")
        lines.append(markdown_table(agree, [("pair", "scenarios"), ("max_abs_diff", "max abs diff",
                                                                    lambda v: f"{v:.2e}")]))
    sp = result.get("server_profile")
    if sp and "error" not in sp:
        from bench.flops import CPROFILE_COLUMNS

        lines.append(f"\n## Server hot spots: event loop ({sp['scenario']})\n")
        lines.append(f"The `{sp['scenario']}` service run under cProfile ({sp['clients']} closed-loop clients, "
                     f"{sp['duration_s']} s, {sp['pairs_per_s_under_profiler']:.0f} pairs/s under the profiler; "
                     f"{sp['event_loop_ms_per_request']:.2f} ms of event-loop time per request, profiler "
                     "overhead included). "
                     "cProfile sees the main thread only: HTTP parsing, routing, request validation, JSON, "
                     "batcher bookkeeping; the model's own time (inference thread) is profiled in the FLOP/s "
                     f"section below. Stats file: `{sp['stats_file']}`.\n")
        lines.append(markdown_table(sp["event_loop_hot_spots"], CPROFILE_COLUMNS))
    elif sp:
        lines.append(f"\nServer profile failed: {sp['error']}\n")
    for f in result.get("flops", []):
        lines.append("\n" + flops_markdown(f))
    if result.get("flops_error"):
        lines.append(f"\nFLOP/s section failed: {result['flops_error']}\n")
    return "\n".join(lines) + "\n"


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
    bodies = request_bodies(pairs, args.pairs_per_request, endpoint=args.endpoint)
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
            scenarios += build_scenarios([n], str(model), args.torch_threads, extra_env, args.baseline_model)
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
        out.append(run_flops_section(m, texts, threads=threads, batch_sizes=[1, 32], seconds=args.flops_seconds,
                                     quantize=("none", "int8"),
                                     name=f"PETE ({model_dir.name})"))
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
