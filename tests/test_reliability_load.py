"""Reliability under load, short versions of ``python -m reliability.soak`` and ``python -m
reliability.overload`` (same code, seconds instead of minutes) against the real service in a
subprocess, with a synthetic checkpoint of the default config's compute shape (so the model, not
HTTP, is the bottleneck, as with the bundled one).

Relaxed here, enforced by the long runs (REPORT.md): the 429 p99 (< 50 ms here, p50 < 10 ms; < 10 ms
in the script), the soak's latency drift (p50 within 2x here, 20% in the script) and its load (half
of saturation here, 0.7 in the script): saturation is measured here in 3 s at 32 closed-loop clients,
whose full batches the soak's Poisson arrivals do not form, so on a busy 2-core CI machine 0.7 of it
was at times more than the service could take and the p50 grew 4x within 9 s (18.8 -> 55.3 ms). The queue
capacity is 512 items (the app default is 768): ~0.25 s of work for the packed int8 encoder on the
reference shape, so the backlog left by the overload drains well within a second. (256 held only
~0.13 s of work since the serving speed-up, and a short stall of a busy machine then turned bursts
of the 70% soak into 429s: 1 run in 3 failed with the d=512 study training beside it.)"""

from __future__ import annotations

import asyncio

import pytest

from loadtest.fixtures import random_checkpoint, similarity_bodies
from loadtest.load import saturation
from loadtest.server import ServerProcess
from reliability.overload import run_overload
from reliability.soak import run_soak

CAPACITY = 512
PAIRS = 4
SOAK_LOAD = 0.5
_SAT: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("load")
    ckpt = random_checkpoint(work / "reference", "reference")
    with ServerProcess(ckpt, env={"PETE_QUEUE_CAPACITY": str(CAPACITY)}, log_path=work / "server.log") as srv:
        yield srv


def saturation_rps(srv: ServerProcess) -> float:
    if "rps" not in _SAT:
        bodies = similarity_bodies(100, PAIRS)

        async def measure() -> float:
            await saturation(srv.port, bodies, clients=(8,), duration_s=1.0)  # warm-up
            return (await saturation(srv.port, bodies, clients=(32,), duration_s=3.0))["rps"]

        _SAT["rps"] = asyncio.run(measure())
    return _SAT["rps"]


@pytest.mark.integration
@pytest.mark.slow
def test_soak_short_no_errors_flat_memory_stable_latency(server):
    sat = saturation_rps(server)
    assert sat > 5, sat
    r = asyncio.run(run_soak(server, pairs=PAIRS, load=SOAK_LOAD, duration_s=9.0, window_s=3.0, sat_rps=sat,
                             rss_every_s=0.25, rss_span_s=1.0, latency_tolerance=1.0))
    assert r["checks"]["zero_errors"]["ok"], r["checks"]["zero_errors"]
    assert r["checks"]["rss_growth_window2_to_end"]["ok"], r["rss_series_mb"]
    assert 0.5 <= r["latency_late_over_early"]["p50"] <= 2.0, r["windows"]
    assert all(w["requests"] > 0 for w in r["windows"])


@pytest.mark.integration
@pytest.mark.slow
def test_overload_short_only_fast_429s_bounded_queue_quick_recovery(server):
    sat = saturation_rps(server)
    r = asyncio.run(run_overload(server, pairs=PAIRS, factor=4.0, duration_s=5.0, sat_rps=sat, capacity=CAPACITY))
    c = r["checks"]
    for name in ("offered_about_factor_x_saturation", "overload_reached_429", "no_5xx", "every_non_200_is_429",
                 "every_429_has_retry_after", "queue_within_capacity", "healthy_during_and_after"):
        assert c[name]["ok"], (name, c[name])
    assert r["queue_depth_max_metric"] >= CAPACITY - 2 * 2 * PAIRS  # it did fill up (one request short at most)
    assert r["retry_after_values"] == ["1"]
    assert r["latency_429_ms"]["p50"] < 10 and r["latency_429_ms"]["p99"] < 50, r["latency_429_ms"]
    if r["queue_drain_bound_s"] < 0.8:
        assert c["answers_normally_within_1s_of_stop"]["ok"], (r["recovery_after_stop"], r["queue_drain_bound_s"])
    assert r["recovery_after_drain"]["first_normal_answer_s"] is not None
    assert r["recovery_after_drain"]["first_normal_answer_s"] < 1.0


@pytest.mark.anyio
async def test_startup_freezes_the_loaded_objects_out_of_the_gc(tmp_path):
    """Regression (REPORT.md): a full GC walked ~200k start-up objects and stalled every request
    ~0.1 s under load (429 p99 114-215 ms before, 13-14 ms after, on a busy 2-core machine)."""
    import gc

    from helpers import make_settings, running_app

    ckpt = random_checkpoint(tmp_path / "tiny", "tiny")
    gc.unfreeze()
    async with running_app(make_settings(ckpt)) as (app, _, client):
        assert (await client.get("/readyz")).status_code == 200
        assert gc.get_freeze_count() > 10_000  # torch, the model, the app: out of the collector's reach
    assert gc.get_freeze_count() == 0  # unfrozen again on shutdown
