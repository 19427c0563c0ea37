"""Several worker processes (PETE_WORKERS > 1): /metrics merges every worker's values through
prometheus-client's multiprocess mode (app.metrics, set up by pete-serve: app.cli.metrics_directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from app.cli import metrics_directory, shared_quantization
from conftest import wait_ready
from loadtest.fixtures import random_checkpoint
from loadtest.prom import parse_metrics
from loadtest.server import free_port

ROOT = Path(__file__).resolve().parents[1]
PETE_SERVE = Path(sys.executable).parent / "pete-serve"
WORKER = r'''
import sys
from app.metrics import Metrics
m = Metrics()
n = int(sys.argv[1])
m.rejected.labels(reason="queue_full").inc(n)
m.queue_depth.set(n)
m.queue_depth_max.set(10 * n)
m.request_duration.labels(endpoint="/nli", status="200").observe(0.01)
if sys.argv[2:] == ["exit"]:
    m.worker_exit()
'''
RENDER = "from app.metrics import Metrics; print(Metrics().render()[0].decode())"


def sample(text: str, series: str) -> float:
    """The value of one exposed series (KeyError when it is not there)."""
    return parse_metrics(text)[series]


def test_counters_from_two_worker_processes_read_as_their_sum(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for args in (["3"], ["4"]):
        subprocess.run([sys.executable, "-c", WORKER, *args], env=env, check=True, cwd=ROOT)
    text = subprocess.run([sys.executable, "-c", RENDER], env=env, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout
    assert sample(text, 'pete_rejected_requests_total{reason="queue_full"}') == 7
    assert sample(text, 'pete_request_duration_seconds_count{endpoint="/nli",status="200"}') == 2
    assert sample(text, "pete_queue_depth") == 7  # live workers summed
    assert sample(text, "pete_queue_depth_max") == 40  # the larger high-water mark
    assert sample(text, "process_resident_memory_bytes") > 1e6
    subprocess.run([sys.executable, "-c", WORKER, "5", "exit"], env=env, check=True, cwd=ROOT)
    text = subprocess.run([sys.executable, "-c", RENDER], env=env, capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout
    assert sample(text, 'pete_rejected_requests_total{reason="queue_full"}') == 12  # counts outlive a worker
    assert sample(text, "pete_queue_depth") == 7  # ... its live gauges do not


def test_metrics_directory_is_fresh_per_run_and_only_for_several_workers(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with metrics_directory(1) as d:
        assert d is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with metrics_directory(2) as d:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == d and Path(d).is_dir() and not any(Path(d).iterdir())
    assert not Path(d).exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # removed afterwards
    own = tmp_path / "own"
    own.mkdir()
    (own / "counter_123.db").write_bytes(b"stale")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(own))
    with metrics_directory(2) as d:
        assert d == str(own) and not (own / "counter_123.db").exists()  # a previous run's values are gone
    assert own.is_dir()  # the operator's own directory stays


def test_pete_serve_with_two_workers_reports_every_request_from_any_worker(tmp_path):
    ckpt = random_checkpoint(tmp_path / "tiny")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PETE_", "PROMETHEUS_"))}
    env.update(PETE_TORCH_THREADS="1", PETE_LOG_LEVEL="warning", TMPDIR=str(tmp_path))
    proc = subprocess.Popen([str(PETE_SERVE), "--workers", "2", "--port", str(port), "--model", str(ckpt)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=lambda: proc.poll() is None)
        n = 40
        for i in range(n):  # a new connection each: the kernel spreads them over both workers
            r = httpx.post(f"{url}/similarity", json={"pairs": [{"text_a": "a cat", "text_b": f"dog {i}"}]},
                           headers={"connection": "close"}, timeout=30)
            assert r.status_code == 200
        series = 'pete_request_duration_seconds_count{endpoint="/similarity",status="200"}'
        modes = {httpx.get(f"{url}/info", headers={"connection": "close"}, timeout=30).json()["quantization"]
                 for _ in range(8)}
        assert len(modes) == 1  # auto resolved once for both workers (app.cli.shared_quantization)
        for _ in range(8):  # whichever worker answers the scrape, it reports both workers' requests
            text = httpx.get(f"{url}/metrics", headers={"connection": "close"}, timeout=30).text
            assert sample(text, series) == n
        assert list(tmp_path.glob("pete-metrics-*"))  # the run's own multiprocess directory
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert not list(tmp_path.glob("pete-metrics-*"))  # removed at exit


def test_auto_quantization_is_resolved_once_for_all_workers(tmp_path):
    """PETE_QUANTIZE=auto with several workers: a child process loads the model once and times it; its
    choice goes into the environment every worker inherits. One worker or an explicit mode: untouched."""
    ckpt = random_checkpoint(tmp_path / "tiny")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETE_")}
    env.update(PETE_MODEL_PATH=str(ckpt), PETE_TORCH_THREADS="1", PYTHONPATH=str(ROOT))
    assert shared_quantization(1, "auto", environ=env) is None and "PETE_QUANTIZE" not in env
    assert shared_quantization(2, "int8", environ=env) is None and "PETE_QUANTIZE" not in env
    mode = shared_quantization(2, "auto", environ=env)
    assert mode in ("none", "int8") and env["PETE_QUANTIZE"] == mode
    broken = {**env, "PETE_MODEL_PATH": str(tmp_path / "missing")}
    broken.pop("PETE_QUANTIZE")
    assert shared_quantization(2, "auto", environ=broken) is None and "PETE_QUANTIZE" not in broken
