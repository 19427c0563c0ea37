"""Shared pieces of the reliability runs: checkpoints, the real service in a subprocess, a lean
HTTP/1.1 load client, Prometheus scraping, statistics and result files.

Everything here talks to 127.0.0.1 only, and every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "reliability" / "results"
BUNDLED_CHECKPOINT = REPO_ROOT / "model" / "checkpoints" / "default"
HOST = "127.0.0.1"  # the only address these runs ever send traffic to

# A small English vocabulary: the synthetic checkpoints' word-level vocab and the load texts.
WORDS = ("the a an is are was on in of and not no to with at by from for it this that "
         "cat dog man woman child boy girl people group bird horse plays playing played sits sat mat "
         "runs running walks walking park street music guitar piano song sleeps eats food red blue green "
         "big small old young happy sad two three many some water beach field city house car bike train "
         "ball game team player stage crowd table chair book reads writes talks looks stands jumps "
         "swims rides drives cooks kitchen dinner morning night day sun rain snow tree flower "
         "white black yellow fast slow quietly loudly together near under over").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIALS + WORDS

# Stack traces and file system paths must never reach a client.
LEAK_PATTERNS = [
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'File "[^"]+", line \d+'),
    re.compile(r"(?:/[\w.@+-]+){2,}\.py\b"),
    re.compile(r"site-packages|dist-packages"),
    re.compile(re.escape(str(REPO_ROOT))),
    re.compile(r"/(?:home|root|usr|opt|srv|tmp|work)/[\w.-]+/"),
]


def find_leaks(text: str) -> list[str]:
    """The leak patterns (stack trace, file path) that match ``text``."""
    return [p.pattern for p in LEAK_PATTERNS if p.search(text)]


# ---- checkpoints -------------------------------------------------------------------------------
SIZES = {
    # what the app tests use: instant to load, inference is nearly free
    "tiny": dict(dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_len=32, nli_hidden=16,
                 embedding_options={"mlp_hidden": 32}),
    # the compute shape of the default config (model/encoder.py EncoderConfig) with a small vocab
    "reference": dict(dim=256, n_layers=2, n_heads=4, ffn_dim=1024, max_len=128, nli_hidden=128,
                      embedding_options={"mlp_hidden": 256}),
}


def build_checkpoint(path: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight ``SentenceEncoder`` checkpoint of ``size`` ("tiny" or "reference") over
    ``VOCAB`` to ``path`` (skipped when ``path/config.json`` exists) and return ``path``."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import torch

    from model.encoder import EncoderConfig, SentenceEncoder
    from model.tokenizer import tokenizer_from_vocab

    torch.manual_seed(seed)
    cfg = EncoderConfig(vocab_size=len(VOCAB), **SIZES[size])
    SentenceEncoder(cfg, tokenizer_from_vocab(VOCAB)).save_pretrained(path)
    return path


def resolve_model(spec: str, workdir: str | Path) -> tuple[Path, str]:
    """``spec``: "auto" (the bundled checkpoint when present, else a synthetic "reference" one),
    "bundled", "tiny", "reference", or a checkpoint directory. Returns (path, description)."""
    workdir = Path(workdir)
    if spec == "auto":
        spec = "bundled" if (BUNDLED_CHECKPOINT / "config.json").is_file() else "reference"
    if spec == "bundled":
        if not (BUNDLED_CHECKPOINT / "config.json").is_file():
            raise FileNotFoundError(f"no bundled checkpoint at {BUNDLED_CHECKPOINT}")
        return BUNDLED_CHECKPOINT, "bundled checkpoint model/checkpoints/default"
    if spec in SIZES:
        path = build_checkpoint(workdir / f"ckpt-{spec}", spec)
        return path, f"synthetic {spec} checkpoint ({SIZES[spec]['dim']}-d, {SIZES[spec]['n_layers']} layers, " \
                     f"{len(VOCAB)}-word vocab, random weights)"
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path, f"checkpoint {path}"


# ---- request bodies ----------------------------------------------------------------------------
def sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def similarity_bodies(n: int, pairs: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct /similarity bodies of ``pairs`` pairs each."""
    rng = random.Random(seed)
    return [json.dumps({"pairs": [{"text_a": sentence(rng), "text_b": sentence(rng)} for _ in range(pairs)]}).encode()
            for _ in range(n)]


def build_request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                  *, port: int = 80) -> bytes:
    """A raw HTTP/1.1 request (keep-alive), ``Content-Length`` set when there is a body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    hdrs = {"content-type": "application/json"} if body is not None else {}
    hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
    if body is not None and "transfer-encoding" not in hdrs:
        hdrs.setdefault("content-length", str(len(body)))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# ---- a lean HTTP/1.1 client ------------------------------------------------------------------------
class HttpError(Exception):
    """The connection failed or closed before a complete response. ``nothing_received``: not one
    byte of a response arrived (on a reused keep-alive connection: the server had closed it, idle,
    and never read the request)."""

    def __init__(self, message: str, nothing_received: bool = False) -> None:
        super().__init__(message)
        self.nothing_received = nothing_received


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 (raw asyncio streams: far cheaper than an HTTP
    library, so one process can offer several times what the service can take)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.closed = reader, writer, False

    @classmethod
    async def open(cls, port: int, timeout: float = 5.0) -> "Conn":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 22), timeout)
        return cls(reader, writer)

    @property
    def stale(self) -> bool:
        """The server has closed this idle connection (EOF already seen)."""
        return self.closed or self.reader.at_eof() or self.writer.is_closing()

    async def send(self, raw: bytes, timeout: float = 60.0) -> RawResponse:
        head = b""
        try:
            self.writer.write(raw)
            async with asyncio.timeout(timeout):
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
                status_line, *header_lines = head.decode("latin-1").split("\r\n")
                status = int(status_line.split(" ", 2)[1])
                headers: dict[str, str] = {}
                for line in header_lines:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "content-length" in headers:
                    body = await self.reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked()
                else:
                    body = await self.reader.read()
                    self.closed = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as e:
            self.close()
            partial = getattr(e, "partial", b"")
            raise HttpError(f"{type(e).__name__}: {e}", nothing_received=not head and not partial) from None
        except TimeoutError:
            self.close()
            raise HttpError("TimeoutError") from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return RawResponse(status, headers, body)

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.close()
            except Exception:
                pass


async def request(port: int, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None, timeout: float = 30.0) -> RawResponse:
    """One request on a fresh connection."""
    conn = await Conn.open(port)
    try:
        return await conn.send(build_request(method, path, body, headers, port=port), timeout)
    finally:
        conn.close()


# ---- load generation ---------------------------------------------------------------------------
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
    started: float
    stopped: float  # when the generator stopped sending new requests
    samples: list[Sample] = field(default_factory=list)
    not_sent: int = 0  # arrivals skipped because max_connections requests were already outstanding

    @property
    def duration(self) -> float:
        return self.stopped - self.started

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
    result.stopped = time.perf_counter()
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


# ---- statistics ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]; NaN for no values."""
    if not values:
        return math.nan
    v = sorted(values)
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def latency_ms(values_s: Iterable[float]) -> dict[str, float]:
    """count, mean, p50, p90, p95, p99, p99.9, max, in milliseconds."""
    v = [x * 1000.0 for x in values_s]
    out: dict[str, float] = {"count": len(v)}
    if v:
        out["mean"] = sum(v) / len(v)
        for q in (50, 90, 95, 99, 99.9):
            out[f"p{q:g}"] = percentile(v, q)
        out["max"] = max(v)
    return {k: round(x, 3) if isinstance(x, float) else x for k, x in out.items()}


# ---- Prometheus ------------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {"name{labels}": value} (labels as exposed)."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels`` (0.0 when none)."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


async def scrape(port: int) -> dict[str, float]:
    r = await request(port, "GET", "/metrics", timeout=10)
    return parse_metrics(r.body.decode())


def bucket_fraction(samples: dict[str, float], name: str, le: str, **labels: str) -> float:
    """Fraction of a histogram's observations at or under the bucket bound ``le`` (NaN for none)."""
    total = metric(samples, name + "_count", **labels)
    return metric(samples, name + "_bucket", le=le, **labels) / total if total else math.nan


# ---- the service in a subprocess -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (psutil when installed, else /proc)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class ServerProcess:
    """The real service as a subprocess on 127.0.0.1 at a free port.

    ``entry``: ``"pete-serve"`` runs ``app.main:main`` (the console entry point) through
    ``python -m reliability.harness``; ``"uvicorn"`` runs ``python -m uvicorn --factory
    reliability.harness:create_app`` (what the Dockerfile and ``make serve`` run). Both build the app
    with ``app.main.create_app`` plus the ``RELIABILITY_*`` fault switches of ``reliability.harness``.
    ``env``: ``PETE_*`` settings and ``RELIABILITY_*`` switches. Use as a context manager: the
    process is always ended (by its PID) on exit.
    """

    def __init__(self, model_path: str | Path, *, env: dict[str, str] | None = None, entry: str = "pete-serve",
                 log_path: str | Path | None = None, graceful_s: int = 30) -> None:
        self.model_path, self.entry, self.graceful_s = Path(model_path), entry, graceful_s
        self.port = free_port()
        self.env = {"PETE_TORCH_THREADS": "1", "PETE_LOG_LEVEL": "warning", **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if self.entry == "uvicorn":
            return [sys.executable, "-m", "uvicorn", "--factory", "reliability.harness:create_app", "--host", HOST,
                    "--port", str(self.port), "--workers", "1", "--log-level", self.env["PETE_LOG_LEVEL"],
                    "--timeout-graceful-shutdown", str(self.graceful_s)]
        return [sys.executable, "-m", "reliability.harness"]

    def start(self, ready_timeout_s: float = 120.0) -> "ServerProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PETE_", "RELIABILITY_"))}
        env.update(self.env)
        env.update(PETE_MODEL_PATH=str(self.model_path), PETE_HOST=HOST, PETE_PORT=str(self.port),
                   PETE_SHUTDOWN_TIMEOUT_S=env.get("PETE_SHUTDOWN_TIMEOUT_S", str(self.graceful_s)),
                   OMP_NUM_THREADS=self.env["PETE_TORCH_THREADS"], PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as s:
                    s.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"server not ready within {ready_timeout_s} s: {self.log_tail()}")

    def rss(self) -> int:
        return proc_rss(self.pid)

    def terminate(self) -> None:
        """Send SIGTERM (returns at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for exit; the return code, or None when still running after ``timeout_s``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 2000) -> str:
        if self._log is not None:
            self._log.flush()
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


# ---- results -------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    return path


def print_checks(checks: dict[str, dict[str, Any]]) -> bool:
    """Print each check as PASS/FAIL with its measured value; True when all pass."""
    for name, c in checks.items():
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {name}: {c.get('value')} (limit {c.get('limit')})")
    return all(c["ok"] for c in checks.values())


def check(ok: bool, value: Any, limit: Any) -> dict[str, Any]:
    return {"ok": bool(ok), "value": value, "limit": limit}
