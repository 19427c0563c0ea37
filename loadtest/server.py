"""The real service as a subprocess on 127.0.0.1, and the process readings the runs report
(memory and CPU from /proc, summed over a uvicorn supervisor and its workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.http import HOST

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_APP = "app.main:create_app"


def proc_memory(pid: int) -> dict[str, int]:
    """Resident memory of a Linux process from /proc/PID/status: {"rss_bytes", "hwm_bytes"} (HWM =
    peak RSS). Empty dict if the process is gone or /proc is missing."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = rest.split()
            out["rss_bytes" if key == "VmRSS" else "hwm_bytes"] = int(parts[0]) * 1024  # kB
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a Linux process (all threads); NaN if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; fields[0] is state (field 3)
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime (14), stime (15)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc), e.g. a uvicorn supervisor and its workers."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))  # fields[1]: ppid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_memory(pid: int) -> dict[str, int]:
    """``proc_memory`` summed over ``process_tree(pid)`` (HWM: the sum of each process's peak, an upper
    bound of the tree's peak)."""
    out = {"rss_bytes": 0, "hwm_bytes": 0}
    for p in process_tree(pid):
        for k, v in proc_memory(p).items():
            out[k] += v
    return out if out["rss_bytes"] else {}


def tree_cpu_seconds(pid: int) -> float:
    """``proc_cpu_seconds`` summed over the live ``process_tree(pid)``."""
    return sum(c for p in process_tree(pid) if (c := proc_cpu_seconds(p)) == c)


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """The service as a subprocess on 127.0.0.1 at a free port; a context manager that always ends
    the process it started (by its PID).

    Args:
        model_path: the checkpoint (``PETE_MODEL_PATH``).
        factory: the app factory, ``module:function`` (default: the service's own; the reliability
            runs pass ``reliability.harness:create_app`` for their fault switches, the benchmark the
            MiniLM or profiled variants).
        entry: ``"pete-serve"`` runs the console entry point (``app.cli.main``, what the image runs;
            several workers get merged /metrics) through ``python -m loadtest.serve``; ``"uvicorn"``
            runs ``python -m uvicorn --factory`` (what ``uvicorn`` users run), with
            ``--timeout-graceful-shutdown graceful_s``.
        env: ``PETE_*`` settings (and switches the factory reads); the caller's own ``PETE_*`` and
            ``RELIABILITY_*`` variables are not inherited, so a run measures what it says.
        log_path: the server's stdout and stderr (default: discarded).
        graceful_s: ``PETE_SHUTDOWN_TIMEOUT_S`` unless ``env`` sets it; the uvicorn entry's grace period.
        nofile: the server's open-file limit (``RLIMIT_NOFILE``, soft), e.g. 1024 as in many containers;
            None: inherited.
    """

    def __init__(self, model_path: str | Path, *, factory: str = SERVICE_APP, entry: str = "pete-serve",
                 env: dict[str, str] | None = None, log_path: str | Path | None = None, graceful_s: int = 30,
                 nofile: int | None = None) -> None:
        if entry not in ("pete-serve", "uvicorn"):
            raise ValueError(f"unknown entry {entry!r}")
        self.model_path, self.factory, self.entry, self.graceful_s = Path(model_path), factory, entry, graceful_s
        self.nofile = nofile
        self.port = free_port()
        self.env = {"PETE_LOG_LEVEL": "warning", **(env or {})}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self.startup_s = float("nan")
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The command line the server runs."""
        if self.entry == "uvicorn":
            return [sys.executable, "-m", "uvicorn", "--factory", self.factory, "--host", HOST, "--port", str(self.port),
                    "--workers", self.env.get("PETE_WORKERS", "1"), "--log-level", self.env["PETE_LOG_LEVEL"],
                    "--timeout-graceful-shutdown", str(self.graceful_s)]
        return [sys.executable, "-m", "loadtest.serve", self.factory]

    def start(self, ready_timeout_s: float = 180.0) -> "ServerProcess":
        """Start the process and wait until /readyz answers 200.

        Raises:
            RuntimeError: the process exited during start-up (the message ends with its log).
            TimeoutError: not ready within ``ready_timeout_s`` seconds (the process is killed).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PETE_", "RELIABILITY_"))}
        env.update(self.env)
        env.update(PETE_MODEL_PATH=str(self.model_path), PETE_HOST=HOST, PETE_PORT=str(self.port),
                   PETE_SHUTDOWN_TIMEOUT_S=self.env.get("PETE_SHUTDOWN_TIMEOUT_S", str(self.graceful_s)),
                   PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])))
        if "PETE_TORCH_THREADS" in self.env:
            env["OMP_NUM_THREADS"] = self.env["PETE_TORCH_THREADS"]
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     preexec_fn=self._limit_files if self.nofile else None)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up: {self.log_tail()}")
            if self._ready():
                self.startup_s = time.perf_counter() - t0
                return self
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"server not ready within {ready_timeout_s} s: {self.log_tail()}")

    def _limit_files(self) -> None:  # in the child, before exec
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def _ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def memory(self) -> dict[str, int]:
        """``tree_memory`` of the server (all its processes): {"rss_bytes", "hwm_bytes"}."""
        return tree_memory(self.pid)

    def rss(self) -> int:
        """Resident bytes of the server, summed over its processes."""
        return self.memory().get("rss_bytes", 0)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server, summed over its live processes."""
        return tree_cpu_seconds(self.pid)

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

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL when still running after ``timeout_s`` seconds."""
        self.terminate()
        if self.proc is not None and self.wait(timeout_s) is None:
            self.kill()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the server and its worker processes."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in reversed(process_tree(self.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the server's log ("" without a log file)."""
        if self._log is not None:
            self._log.flush()
        if self.log_path and self.log_path.is_file():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def __enter__(self) -> "ServerProcess":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
