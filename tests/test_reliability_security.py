"""Security: with an API key set, no POST route answers without it (and unauthenticated requests
never reach the model); the open routes are exactly the documented ones; keys are compared in
constant time; the body limit applies before JSON parsing (and before auth), on Content-Length and
on chunked bodies, in-process and through real uvicorn; the container runs as non-root; pip-audit
over requirements.lock (skips with the reason when it cannot audit)."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from helpers import BatchHook, make_settings, running_app, sample

from loadtest.fixtures import random_checkpoint
from loadtest.server import ServerProcess
from reliability.common import find_leaks
from reliability.security import (GOOD_CREDENTIALS, OPEN_ROUTES, SAMPLE_BODIES, auth_sweep, bad_credentials,
                                  body_limit_cases, dockerfile_user, iter_routes, key_comparison_findings,
                                  run_pip_audit)

KEY = "s3cret-Key-42"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


def post_routes(app) -> list[str]:
    return sorted(path for path, methods, _ in iter_routes(app.routes) if "POST" in methods)


@pytest.mark.anyio
async def test_every_post_route_answers_401_without_the_key_and_never_reaches_the_model(tiny):
    hook = BatchHook()
    async with running_app(make_settings(tiny, api_key=KEY), hook) as (app, _, client):
        routes = post_routes(app)
        assert routes == sorted(SAMPLE_BODIES), "a new POST route: add a sample body to reliability.security"
        refused = 0
        for path in routes:
            for name, headers in bad_credentials(KEY).items():
                r = await client.post(path, json=SAMPLE_BODIES[path], headers=headers)
                assert r.status_code == 401, (path, name, r.status_code)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json() == {"error": "unauthorized", "message": "missing or invalid API key", "detail": None}
                assert KEY not in r.text
                refused += 1
            r = await client.post(f"{path}?api_key={KEY}", json=SAMPLE_BODIES[path])
            assert r.status_code == 401, (path, "query")
            # a body that fails validation, without the key: still 401 (auth runs before validation)
            r = await client.post(path, json={"nope": 1})
            assert r.status_code == 401, (path, "invalid body")
            refused += 2
        assert hook.batches == []  # nothing unauthenticated reached the batcher
        for path in routes:
            for name, make in GOOD_CREDENTIALS.items():
                r = await client.post(path, json=SAMPLE_BODIES[path], headers=make(KEY))
                assert r.status_code == 200, (path, name, r.text)
        assert len(hook.batches) >= 1
        assert sample(app, "pete_rejected_requests_total", reason="unauthorized") == refused
        # the key is checked before the body is read (ApiKeyMiddleware): a body that is not JSON at
        # all gets 401 too, never parsed (it got 422 while the check was a dependency, which runs
        # after FastAPI has decoded the body)
        n = len(hook.batches)
        r = await client.post("/similarity", content=b'{"pairs": [', headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and len(hook.batches) == n
        assert sample(app, "pete_rejected_requests_total", reason="unauthorized") == refused + 1


@pytest.mark.anyio
async def test_open_routes_are_exactly_the_documented_ones(tiny):
    async with running_app(make_settings(tiny, api_key=KEY)) as (app, _, client):
        open_paths = set()
        routes = iter_routes(app.routes)
        assert len(routes) == len(OPEN_ROUTES) + len(SAMPLE_BODIES), [p for p, _, _ in routes]
        for path, methods, _ in routes:
            if methods == {"POST"}:
                continue
            assert methods <= {"GET", "HEAD"}, (path, methods)
            open_paths.add(path)
        assert open_paths == OPEN_ROUTES
        for path in sorted(OPEN_ROUTES):
            r = await client.get(path)
            assert r.status_code == 200, path
            assert KEY not in r.text and not find_leaks(r.text), path
        assert (await client.get("/info")).json()["auth_required"] is True


@pytest.mark.anyio
async def test_key_comparison_is_constant_time(tiny):
    found = key_comparison_findings()
    assert found["compare_digest_calls"] >= 1, found
    assert not found["plain_comparisons"] and not found["startswith_calls"], found

    import hmac

    calls = []

    def watch(frame, event, arg):  # observe, don't replace: a profile hook sees every C call of this thread
        if event == "c_call" and arg is hmac.compare_digest:
            calls.append(1)

    async with running_app(make_settings(tiny, api_key=KEY)) as (_, __, client):
        sys.setprofile(watch)  # the key check is an async dependency: it runs on this (the event loop's) thread
        try:
            await _check_every_key_is_compared(client, calls)
        finally:
            sys.setprofile(None)


async def _check_every_key_is_compared(client, calls) -> None:
    body = SAMPLE_BODIES["/embeddings"]
    assert (await client.post("/embeddings", json=body, headers={"X-API-Key": "x"})).status_code == 401
    assert len(calls) == 1
    both = {"Authorization": "Bearer wrong", "X-API-Key": KEY}
    assert (await client.post("/embeddings", json=body, headers=both)).status_code == 200
    assert len(calls) == 3  # every presented key is compared, the right one last


@pytest.mark.anyio
async def test_body_limit_applies_before_json_parsing_and_before_auth(tiny):
    limit = 1000
    async with running_app(make_settings(tiny, api_key=KEY, max_body_bytes=limit)) as (app, _, client):
        junk = b"{" + b"x" * (limit + 50)  # not JSON
        for path in sorted(SAMPLE_BODIES):
            r = await client.post(path, content=junk, headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"] == "body_too_large", (path, r.text)

        async def chunks():  # no Content-Length: the received bytes are counted
            for i in range(0, len(junk), 100):
                yield junk[i:i + 100]

        r = await client.post("/similarity", content=chunks(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert sample(app, "pete_rejected_requests_total", reason="body_too_large") == len(SAMPLE_BODIES) + 1
        assert sample(app, "pete_rejected_requests_total", reason="invalid") == 0
        assert sample(app, "pete_rejected_requests_total", reason="unauthorized") == 0
        ok = json.dumps(SAMPLE_BODIES["/similarity"]).encode()
        r = await client.post("/similarity", content=ok, headers={"content-type": "application/json", "X-API-Key": KEY})
        assert r.status_code == 200


@pytest.mark.integration
def test_live_server_auth_sweep_and_body_limit(tiny, tmp_path):
    """The same through real uvicorn: every credential variant on every POST route of the served
    /openapi.json, and raw-socket oversize bodies (with Content-Length, chunked, declared only)."""
    limit = 4096
    with ServerProcess(tiny, env={"PETE_API_KEY": KEY, "PETE_MAX_BODY_BYTES": str(limit)},
                       log_path=tmp_path / "server.log") as srv:
        sweep = asyncio.run(auth_sweep(srv.port, KEY))
        limits = body_limit_cases(srv.port, limit, key=KEY)
    assert sweep["post_routes"] == sorted(SAMPLE_BODIES) and not sweep["other_methods"]
    for path, row in sweep["post"].items():
        for name, status in row.items():
            assert status == (200 if name.startswith("good:") else 401), (path, name, status)
    assert set(sweep["get_routes"]) <= OPEN_ROUTES and all(s == 200 for s in sweep["get"].values()), sweep["get"]
    assert not sweep["key_leaks"]
    assert all(c["ok"] for c in limits.values()), limits


def test_container_runs_as_non_root():
    user = dockerfile_user()
    if user is None:
        pytest.skip("no top-level Dockerfile")
    assert user["non_root"], user


def test_pip_audit_of_the_locked_dependencies():
    r = run_pip_audit(timeout_s=120)
    if r["status"] in ("no_lock", "missing_tool", "unreachable", "not_audited"):
        pytest.skip(f"pip-audit could not audit: {r['status']}: {r.get('reason')}")
    assert r["status"] == "ok", ("unaccepted findings: fix them or list them in reliability.security.ACCEPTED_VULNS "
                                 "and reliability/REPORT.md", r["vulns"])
