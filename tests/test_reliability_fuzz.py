"""Reliability, bad input: schemathesis against the app's own /openapi.json (its Python API over
ASGI: the short version of ``python -m reliability.fuzz``), and the Unicode / size edge cases, with
the app's default limits and with raised ones. No 5xx, every response as documented, no stack
trace or file path in any response."""

from __future__ import annotations

import json

import pytest

from helpers import make_settings, running_app

from loadtest.fixtures import random_checkpoint
from reliability.fuzz import edge_cases, fuzz_schema, judge_edge


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny")


@pytest.fixture
def schemathesis():
    st = pytest.importorskip("schemathesis", reason="schemathesis not installed (.venv/bin/pip install schemathesis)")
    yield st
    st.python.asgi.shutdown_lifespans()  # the lifespans schemathesis started for the ASGI apps


def test_schemathesis_open_app_no_5xx_and_schema_conformance(tiny, schemathesis):
    from app.main import create_app

    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(tiny)))
    r = fuzz_schema(schema, cases_per_op=25, derandomize=True)
    assert r["cases"] >= 175, r["by_operation"]
    assert r["server_errors"] == 0 and r["failure_count"] == 0, r["failures"]
    assert not r["leaks"], r["leaks"]
    ops = {k.rsplit(" ", 1)[0] for k in r["by_operation"]}
    assert ops == {"POST /similarity", "POST /nli", "POST /v1/embeddings", "POST /embeddings", "GET /healthz",
                   "GET /readyz", "GET /info", "GET /metrics"}
    for op in ("POST /similarity", "POST /nli", "POST /v1/embeddings", "POST /embeddings"):
        assert "200" in r["by_operation"][f"{op} positive"] and "422" in r["by_operation"][f"{op} negative"]


def test_schemathesis_keyed_app_enforces_the_key(tiny, schemathesis):
    from app.main import create_app

    key = "fuzz-key"
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(make_settings(tiny, api_key=key)))
    # the key in both declared schemes, so no generated credential rides along with the real one
    headers = {"Authorization": f"Bearer {key}", "X-API-Key": key}
    with_key = fuzz_schema(schema, cases_per_op=8, modes=("positive",), headers=headers, check_auth=True,
                           derandomize=True)
    assert with_key["failure_count"] == 0 and with_key["server_errors"] == 0, with_key["failures"]
    without = fuzz_schema(schema, cases_per_op=8, forbid_success_on_post=True, derandomize=True)
    assert without["failure_count"] == 0 and without["server_errors"] == 0, without["failures"]
    for label, statuses in without["by_operation"].items():
        if label.startswith("POST"):
            # 401, or 400/422 for a body that is not even JSON (FastAPI decodes it before auth runs)
            assert set(statuses) <= {"401", "400", "422"}, (label, statuses)
    assert not with_key["leaks"] and not without["leaks"]


async def _send_all(client) -> list[dict]:
    rows = []
    for name, path, body in edge_cases():
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
        rows.append(judge_edge(name, r.status_code, r.content))
    return rows


def _row(rows: list[dict], case: str) -> dict:
    return next(r for r in rows if r["case"] == case)


@pytest.mark.anyio
async def test_unicode_edge_cases_default_limits(tiny):
    async with running_app(make_settings(tiny)) as (app, _, client):  # the app's default limits
        rows = await _send_all(client)
        assert (await client.get("/healthz")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
    # every status a POST route answers here is documented (400: a body that is not even decodable)
    for path in ("/similarity", "/nli", "/embeddings", "/v1/embeddings"):
        documented = set(spec["paths"][path]["post"]["responses"])
        seen = {str(r["status"]) for r in rows if r["case"].endswith(f" {path}")}
        seen |= {str(r["status"]) for r in rows if " " not in r["case"]}
        assert seen <= documented, (path, seen - documented)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
    for route, field in (("/embeddings", "input.0"), ("/v1/embeddings", "input.0"), ("/similarity", "pairs.0.text_a"),
                         ("/nli", "pairs.0.premise")):
        for case in ("lone_high_surrogate", "lone_low_surrogate", "reversed_surrogates", "high_surrogate_at_end",
                     "one_1MB_token", "newlines_10000", "text_newlines_10000"):
            r = _row(rows, f"{case} {route}")
            assert r["status"] == 422 and r["field"] == field, r
        for case in ("nul_inside", "nul_only", "control_chars", "valid_surrogate_pair", "rtl_marks", "rtl_override_only",
                     "emoji_zwj_family", "zero_width_joiner_only", "zero_width_space_only", "bom_inside",
                     "combining_marks_5000", "max_chars_text", "arabic_hebrew", "cjk_devanagari"):
            assert _row(rows, f"{case} {route}")["status"] == 200, case
    assert _row(rows, "invalid_utf8")["status"] == 400 and _row(rows, "nested_100000")["status"] == 400
    assert _row(rows, "surrogate_in_key")["status"] == 422


@pytest.mark.anyio
async def test_unicode_edge_cases_raised_limits_reach_the_model(tiny):
    s = make_settings(tiny, max_chars_per_text=2_000_000, max_body_bytes=8 << 20)
    async with running_app(s) as (app, _, client):
        rows = await _send_all(client)
        r = await client.post("/embeddings", content=json.dumps({"input": ["x" * 1_000_000, "a\n" + "\n" * 10_000 + "b"]}),
                              headers={"content-type": "application/json"})
        # both texts pass the character budget (max tokens x model.tokenizer.CHARS_PER_TOKEN), so they are
        # cut before tokenizing and flagged: the 1 MB token is still one [UNK]; the trailing "b" is
        # beyond the budget
        assert r.status_code == 200 and [d["truncated"] for d in r.json()["data"]] == [True, True]
        assert r.json()["usage"]["total_tokens"] == 3 + 3
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad
    for route in ("/embeddings", "/v1/embeddings", "/similarity", "/nli"):
        assert _row(rows, f"one_1MB_token {route}")["status"] == 200
        assert _row(rows, f"text_newlines_10000 {route}")["status"] == 200
        assert _row(rows, f"newlines_10000 {route}")["status"] == 422  # blank
