"""loadtest/: statistics, the results writer, /proc readings, the Prometheus parser, request bodies,
random checkpoints, and the HTTP client and load loops against a real (tiny) service."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loadtest.fixtures import SIZES, pair_bodies, random_checkpoint, similarity_bodies
from loadtest.http import Conn, build_request, request
from loadtest.load import closed_loop, open_loop
from loadtest.prom import bucket_fraction, metric, parse_metrics, scrape
from loadtest.results import machine_info, write_json
from loadtest.server import (ServerProcess, free_port, proc_cpu_seconds, proc_memory, process_tree,
                             tree_cpu_seconds, tree_memory)
from loadtest.stats import latency_ms, percentile


# ---- statistics and results ------------------------------------------------------------------------
def test_percentile_hand_values():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 25) == pytest.approx(1.75)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_percentile_matches_numpy_linear():
    rng = random.Random(0)
    xs = [rng.expovariate(1.0) for _ in range(257)]
    for q in (1, 50, 95, 99, 99.9):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_latency_summary_in_ms():
    s = latency_ms([0.001, 0.002, 0.003, 0.004, 0.100])
    assert s["count"] == 5
    assert s["p50"] == pytest.approx(3.0)
    assert s["max"] == pytest.approx(100.0)
    assert s["mean"] == pytest.approx(22.0)
    assert latency_ms([]) == {"count": 0}


def test_write_json_is_atomic_and_turns_nan_into_null(tmp_path):
    p = write_json(tmp_path / "sub" / "r.json",
                   {"x": float("nan"), "y": [1.5, float("inf")], "p": tmp_path, "n": np.float32(0.5)})
    data = json.loads(p.read_text())
    assert data == {"x": None, "y": [1.5, None], "p": str(tmp_path), "n": 0.5}
    assert not list(p.parent.glob("*.tmp"))
    assert machine_info()["cpu_count"] == os.cpu_count()


def test_proc_helpers_on_this_process():
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    mem = proc_memory(os.getpid())
    assert mem["rss_bytes"] > 10 * 2**20 and mem["hwm_bytes"] >= mem["rss_bytes"]
    assert proc_cpu_seconds(os.getpid()) > 0
    assert proc_memory(2**22 + 12345) == {}  # no such process
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:  # a process tree: this process and its child, both counted
        assert child.pid in process_tree(os.getpid()) and os.getpid() in process_tree(os.getpid())
        assert tree_memory(os.getpid())["rss_bytes"] > mem["rss_bytes"]
        assert tree_cpu_seconds(os.getpid()) >= proc_cpu_seconds(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert 0 < free_port() < 65536


# ---- Prometheus, bodies, checkpoints --------------------------------------------------------------
METRICS = """# HELP x
pete_batch_size_sum 10.0
pete_batch_size_count 4.0
pete_request_duration_seconds_count{endpoint="/similarity",status="200"} 3.0
pete_request_duration_seconds_count{endpoint="/similarity",status="429"} 2.0
pete_request_duration_seconds_bucket{endpoint="/similarity",status="200",le="0.01"} 2.0
"""


def test_metrics_are_read_per_series_or_summed_over_labels():
    m = parse_metrics(METRICS)
    assert m['pete_request_duration_seconds_count{endpoint="/similarity",status="429"}'] == 2.0
    assert metric(m, "pete_batch_size_sum") == 10.0
    assert metric(m, "pete_request_duration_seconds_count") == 5.0  # summed over the labels
    assert metric(m, "pete_request_duration_seconds_count", status="200") == 3.0
    assert metric(m, "pete_nothing") == 0.0
    assert bucket_fraction(m, "pete_request_duration_seconds", "0.01", status="200") == pytest.approx(2 / 3)


def test_request_bodies():
    bodies = pair_bodies([("a", "b"), ("c", "d"), ("e", "f")], pairs_per_request=2)
    assert len(bodies) == 1
    assert json.loads(bodies[0]) == {"pairs": [{"text_a": "a", "text_b": "b"}, {"text_a": "c", "text_b": "d"}]}
    nli = pair_bodies([("a", "b")], pairs_per_request=1, endpoint="nli")
    assert json.loads(nli[0]) == {"pairs": [{"premise": "a", "hypothesis": "b"}]}
    syn = similarity_bodies(3, 4, seed=1)
    assert len(set(syn)) == 3 and all(len(json.loads(b)["pairs"]) == 4 for b in syn)
    assert build_request("POST", "/x", b"{}", port=9).startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")


def test_random_checkpoint_takes_a_preset_and_overrides(tmp_path):
    path = random_checkpoint(tmp_path / "a", "tiny", dim=16, embedding="learned")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["dim"] == 16 and cfg["n_layers"] == SIZES["tiny"]["n_layers"] and cfg["embedding_options"] == {}
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert random_checkpoint(path, "reference") == path  # present already: kept as it is
    assert (path / "model.safetensors").stat().st_mtime_ns == before


# ---- against a real service -----------------------------------------------------------------------
@pytest.mark.integration
def test_client_and_loops_against_the_service(tmp_path):
    ckpt = random_checkpoint(tmp_path / "tiny", "tiny")
    bodies = similarity_bodies(8, 1)

    async def drive(port: int):
        r = await request(port, "POST", "/similarity", bodies[0])
        conn = await Conn.open(port)
        try:  # keep-alive: two requests on one connection
            statuses = [(await conn.send(build_request("GET", "/healthz", port=port))).status for _ in range(2)]
        finally:
            conn.close()
        closed = await closed_loop(port, bodies, clients=2, duration_s=0.5, max_requests=40)
        opened = await open_loop(port, bodies, rate=40, duration_s=0.5, max_requests=100)
        return r, statuses, closed, opened, await scrape(port)

    with ServerProcess(ckpt, env={"PETE_TORCH_THREADS": "1"}, log_path=tmp_path / "server.log") as srv:
        r, statuses, closed, opened, m = asyncio.run(drive(srv.port))
        assert srv.rss() > 10 * 2**20 and srv.cpu_seconds() > 0
        pid = srv.pid
    assert srv.proc.poll() is not None and pid not in process_tree(os.getpid())  # stopped on exit
    assert r.status == 200 and len(json.loads(r.body)["scores"]) == 1
    assert statuses == [200, 200]
    assert 0 < closed.count(200) <= 40 and closed.statuses() == {"200": closed.count()}
    assert opened.count(200) > 5 and not opened.failures()
    assert opened.latencies(200, from_schedule=True)[0] >= 0
    answered = closed.count(200) + opened.count(200) + 1
    assert metric(m, "pete_request_duration_seconds_count", endpoint="/similarity", status="200") == answered
