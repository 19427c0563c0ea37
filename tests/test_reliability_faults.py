"""Reliability, faults: an exception in one batch, one slow batch, a client gone while its work is
queued (in-process, a batch hook through the model-runner seam), then SIGTERM under load and a disconnect
storm against the real process (short versions of ``python -m reliability.faults``)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from helpers import BatchHook, make_settings, request_then_disconnect, running_app, sample, wait_until

from loadtest.fixtures import random_checkpoint
from reliability.common import find_leaks
from reliability.faults import disconnect_storm, sigterm_under_load

GENERIC_500 = {"error": "internal_error", "message": "internal server error", "detail": None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


def pair(tag: str) -> dict:
    """A one-pair /similarity body whose texts name the request (to find it in the batches)."""
    return {"pairs": [{"text_a": f"{tag} the cat", "text_b": f"{tag} the dog"}]}


def in_batch(tag: str, batch: list[str]) -> bool:
    return any(t.startswith(f"{tag} ") for t in batch)


@pytest.mark.anyio
async def test_exception_in_one_batch_fails_only_that_batch(tiny):
    hook = BatchHook()
    s = make_settings(tiny, max_batch_size=8, max_wait_ms=20, queue_capacity=64, max_items_per_request=8)
    async with running_app(s, hook) as (app, _, client):
        hook.hold()
        plug = asyncio.create_task(client.post("/embeddings", json={"input": ["plug"]}))
        await hook.wait_entered()
        tags = [f"r{i}" for i in range(6)]  # 12 items queued behind the plug: batch 2 takes 8, batch 3 the rest
        tasks = {}
        for i, tag in enumerate(tags):
            tasks[tag] = asyncio.create_task(client.post("/similarity", json=pair(tag)))
            await wait_until(lambda: app.state.service.batcher.depth == 2 * (i + 1), what=f"{tag} queued")
        hook.fail = {2}
        hook.release()
        assert (await plug).status_code == 200
        resps = {tag: await t for tag, t in tasks.items()}
        failed_batch = hook.batches[1]
        assert 0 < len(failed_batch) <= 8
        for tag, r in resps.items():
            if in_batch(tag, failed_batch):
                assert r.status_code == 500 and r.json() == GENERIC_500, (tag, r.text)
                assert not find_leaks(r.text) and "injected" not in r.text
            else:
                assert r.status_code == 200, (tag, r.text)
        n_failed = sum(in_batch(tag, failed_batch) for tag in tags)
        assert 1 <= n_failed < len(tags)  # some in the failed batch, some in the next one
        assert (await client.post("/similarity", json=pair("after"))).status_code == 200
        assert sample(app, "pete_batch_failures_total") == 1
        assert sample(app, "pete_rejected_requests_total", reason="inference_error") == n_failed
        assert sample(app, "pete_dropped_items_total") == 0


@pytest.mark.anyio
async def test_slow_batch_gives_504_past_the_timeout_and_the_worker_recovers(tiny):
    hook = BatchHook()
    s = make_settings(tiny, request_timeout_s=0.3, max_wait_ms=1, max_batch_size=8)
    async with running_app(s, hook) as (app, _, client):
        hook.slow = {1: 1.0}
        t0 = time.perf_counter()
        slow = asyncio.create_task(client.post("/similarity", json=pair("slow")))
        await hook.wait_entered()
        queued = [asyncio.create_task(client.post("/similarity", json=pair(f"q{i}"))) for i in range(2)]
        r = await slow
        waited = time.perf_counter() - t0
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        assert 0.3 <= waited < 0.9  # answered at the timeout, not when the slow batch ended
        assert [(await q).status_code for q in queued] == [504, 504]
        assert sample(app, "pete_rejected_requests_total", reason="timeout") == 3
        # the slow batch ends (~1 s); the timed-out items still queued are skipped, not computed
        await wait_until(lambda: sample(app, "pete_dropped_items_total") == 4, timeout=5, what="dropped items")
        assert not any(in_batch(f"q{i}", b) for i in range(2) for b in hook.batches)
        lat = []
        for i in range(10):
            t = time.perf_counter()
            assert (await client.post("/similarity", json=pair(f"n{i}"))).status_code == 200
            lat.append(time.perf_counter() - t)
        assert max(lat) < 0.3 and app.state.service.batcher.depth == 0


@pytest.mark.anyio
async def test_client_gone_while_queued_is_skipped_and_nothing_else_is_affected(tiny):
    hook = BatchHook()
    async with running_app(make_settings(tiny, max_batch_size=8, max_wait_ms=1), hook) as (app, asgi, client):
        hook.hold()
        plug = asyncio.create_task(client.post("/embeddings", json={"input": ["plug"]}))
        await hook.wait_entered()
        gone = asyncio.Event()
        leaver = asyncio.create_task(request_then_disconnect(asgi, "/similarity", json.dumps(pair("gone")).encode(), gone))
        await wait_until(lambda: app.state.service.batcher.depth == 2, what="leaver queued")
        stayer = asyncio.create_task(client.post("/similarity", json=pair("stay")))
        await wait_until(lambda: app.state.service.batcher.depth == 4, what="stayer queued")
        gone.set()  # the client disconnects while its items wait in the queue
        await asyncio.wait_for(leaver, 5)
        assert sample(app, "pete_rejected_requests_total", reason="client_gone") == 1
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="499") == 1
        hook.release()
        assert (await plug).status_code == 200
        r = await stayer
        assert r.status_code == 200 and len(r.json()["scores"]) == 1
        await wait_until(lambda: sample(app, "pete_dropped_items_total") == 2, what="dropped items")
        assert not any(in_batch("gone", b) for b in hook.batches)
        assert any(in_batch("stay", b) for b in hook.batches)
        assert (await client.post("/similarity", json=pair("after"))).status_code == 200


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_under_load_loses_nothing_and_exits_0(tiny, tmp_path):
    r = asyncio.run(sigterm_under_load(tiny, tmp_path, entry="pete-serve", clients=12, pre_s=1.0, post_s=1.0,
                                       batch_delay_ms=30, graceful_s=20))
    failed = {k: c for k, c in r["checks"].items() if not c["ok"]}
    assert not failed, (failed, r["log_tail"])
    # what happens exactly (REPORT.md): in-flight requests complete with 200; within ~0.1 s uvicorn
    # closes its listening socket, so new requests are refused at connect; never a 503 or a 5xx. A
    # request written onto an idle keep-alive connection just as uvicorn closes it is reset unread.
    assert r["exit_code"] == 0 and r["lost"] == 0
    assert not [k for k in r["after_sigterm"] if k[0] in "345"], r["after_sigterm"]
    assert "connect ConnectionRefusedError" in r["after_sigterm"]


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_with_slow_uploads_exits_within_the_shutdown_bound(tiny, tmp_path):
    """Slow uploads (1 KB/s, 1 MB) do not hold the process: their body timeout (2 s, below the
    shutdown bound of 4 s, as the settings require) answers 408, the process exits within
    PETE_SHUTDOWN_TIMEOUT_S without hitting uvicorn's graceful timeout (which would cancel them: a
    500 and a stack trace), and every request the server answered reached its client."""
    r = asyncio.run(sigterm_under_load(tiny, tmp_path, entry="pete-serve", clients=8, pre_s=1.0, post_s=1.0,
                                       batch_delay_ms=30, graceful_s=4, slow_bodies=5, body_timeout_s=2.0))
    failed = {k: c for k, c in r["checks"].items() if not c["ok"]}
    assert not failed, (failed, r["log_tail"])
    assert r["slow_bodies_ended"] == {"408": 5} and r["slow_bodies_last_end_after_sigterm_s"] < 2.0
    assert "Traceback" not in r["log_tail"]


@pytest.mark.integration
@pytest.mark.slow
def test_disconnect_storm_skips_the_abandoned_work(tiny, tmp_path):
    # 200 ms batches: an abandoned request (closed 20 ms after sending) surely waits behind the batch
    # being computed (with continuous batching, work that arrives while the model is idle runs at once)
    r = asyncio.run(disconnect_storm(tiny, tmp_path, abandon=10, clients=4, duration_s=2.0, batch_delay_ms=200))
    failed = {k: c for k, c in r["checks"].items() if not c["ok"]}
    assert not failed, failed
