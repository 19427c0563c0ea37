"""The lean JSON handler (app.json_route) answers exactly as FastAPI's own handler: the same
status, JSON body and headers for valid requests and for every kind of bad one (the fuzzing
edge cases, validation errors, content types, empty and invalid bodies), with and without an API
key; the OpenAPI schema is the recorded one (tests/data/openapi.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.json_route import is_json_content_type
from app.main import create_app
from app.settings import Settings
from loadtest.fixtures import VOCAB, random_checkpoint
from reliability.fuzz import edge_cases
from helpers import running_app

KEY = "s3cret-key"
OPENAPI = Path(__file__).parent / "data" / "openapi.json"
PAIR = {"text_a": "a man plays a guitar", "text_b": "a dog runs"}
NLI = {"premise": "a man plays a guitar", "hypothesis": "a dog runs"}

# (name, path, raw body, content type or None for no header); the valid ones first
CASES: list[tuple[str, str, bytes, str | None]] = [
    ("similarity", "/similarity", json.dumps({"pairs": [PAIR, PAIR]}).encode(), "application/json"),
    ("nli", "/nli", json.dumps({"pairs": [NLI]}).encode(), "application/json"),
    ("embeddings", "/embeddings", json.dumps({"input": ["a cat", "a dog"]}).encode(), "application/json"),
    ("v1 one text base64", "/v1/embeddings", json.dumps({"input": "a cat", "encoding_format": "base64",
                                                         "model": "x", "user": "u"}).encode(), "application/json"),
    ("charset", "/similarity", json.dumps({"pairs": [PAIR]}).encode(), "application/json; charset=utf-8"),
    ("+json", "/similarity", json.dumps({"pairs": [PAIR]}).encode(), "application/vnd.api+json"),
    ("no content type", "/similarity", json.dumps({"pairs": [PAIR]}).encode(), None),
    ("text/plain", "/similarity", json.dumps({"pairs": [PAIR]}).encode(), "text/plain"),
    ("empty body", "/nli", b"", "application/json"),
    ("invalid json", "/nli", b'{"pairs": [', "application/json"),
    ("extra field", "/similarity", json.dumps({"pairs": [{**PAIR, "x": 1}], "y": 2}).encode(), "application/json"),
    ("wrong types", "/similarity", json.dumps({"pairs": [{"text_a": 1, "text_b": None}]}).encode(), "application/json"),
    ("empty list", "/nli", json.dumps({"pairs": []}).encode(), "application/json"),
    ("blank text", "/nli", json.dumps({"pairs": [{"premise": "  ", "hypothesis": "x"}]}).encode(), "application/json"),
    ("missing field", "/nli", json.dumps({"pairs": [{"premise": "x"}]}).encode(), "application/json"),
    ("not an object", "/similarity", b"[1, 2]", "application/json"),
    ("too many pairs", "/similarity", json.dumps({"pairs": [PAIR] * 9}).encode(), "application/json"),
    ("text too long", "/embeddings", json.dumps({"input": ["a" * 501]}).encode(), "application/json"),
    ("dimensions wrong", "/embeddings", json.dumps({"input": "a", "dimensions": 7}).encode(), "application/json"),
    ("dimensions string", "/embeddings", json.dumps({"input": "a", "dimensions": "16"}).encode(), "application/json"),
    ("dimensions float", "/embeddings", json.dumps({"input": "a", "dimensions": 2.5}).encode(), "application/json"),
    ("format wrong", "/embeddings", json.dumps({"input": "a", "encoding_format": "hex"}).encode(), "application/json"),
    ("token ids", "/embeddings", json.dumps({"input": [[1, 2, 3]]}).encode(), "application/json"),
    ("null input", "/embeddings", json.dumps({"input": None}).encode(), "application/json"),
    ("huge int", "/embeddings", b'{"input": "a", "dimensions": 1' + b"0" * 400 + b"}", "application/json"),
    ("many errors", "/nli", json.dumps({"pairs": [{"premise": "", "hypothesis": 3}, {}, "x"]}).encode(),
     "application/json"),
] + [(f"edge {name}", path, body, "application/json") for name, path, body in edge_cases()]


def settings(checkpoint: Path, **overrides) -> Settings:
    return Settings(**{"model_path": checkpoint, "torch_threads": 1, "max_items_per_request": 8,
                       "max_chars_per_text": 500, "quantize": "none", "materialize_embeddings": True, **overrides})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", vocab=VOCAB)


async def _answers(s: Settings, lean: bool, headers: dict[str, str]) -> list[tuple]:
    async with running_app(s, lean_handlers=lean) as (_, __, client):
        out = []
        for name, path, body, content_type in CASES:
            h = dict(headers, **({"content-type": content_type} if content_type else {}))
            r = await client.post(path, content=body, headers=h)
            kept = {k: r.headers[k] for k in ("content-type", "www-authenticate", "retry-after") if k in r.headers}
            out.append((name, r.status_code, r.json(), kept))
        return out


@pytest.mark.anyio
@pytest.mark.parametrize("key", [None, KEY], ids=["open", "keyed"])
async def test_lean_handler_answers_exactly_as_fastapi(checkpoint, key):
    s = settings(checkpoint, api_key=key)
    headers = {"x-api-key": KEY} if key else {}
    lean, plain = await _answers(s, True, headers), await _answers(s, False, headers)
    assert len(lean) == len(CASES)
    for a, b in zip(lean, plain):
        assert a == b, (a, b)
    statuses = {name: status for name, status, _, _ in lean}
    # the corpus exercises both paths and every kind of answer
    assert statuses["similarity"] == statuses["v1 one text base64"] == statuses["+json"] == 200
    assert statuses["invalid json"] == statuses["extra field"] == statuses["text too long"] == 422
    assert statuses["too many pairs"] == 413 and statuses["edge invalid_utf8"] == 400


@pytest.mark.anyio
async def test_the_lean_path_is_taken_for_well_formed_requests(checkpoint):
    """FastAPI's response serialization runs for a valid request only with the lean handlers off
    (watched with a profile hook, not replaced)."""
    import sys

    import fastapi.routing

    target = fastapi.routing.serialize_response.__code__
    calls = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code is target:
            calls.append(1)

    for lean in (True, False):
        async with running_app(settings(checkpoint), lean_handlers=lean) as (_, __, client):
            sys.setprofile(watch)  # the handler runs on this (the event loop's) thread
            try:
                assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200
                assert (await client.post("/embeddings", json={"input": "a cat"})).status_code == 200
            finally:
                sys.setprofile(None)
        assert len(calls) == (0 if lean else 2), (lean, calls)


def test_json_content_types():
    for ok in ("application/json", "Application/JSON; charset=utf-8", "application/problem+json"):
        assert is_json_content_type(ok), ok
    for bad in (None, "", "text/json", "application/jsonx", "application/x-www-form-urlencoded", "json"):
        assert not is_json_content_type(bad), bad


def test_openapi_schema_is_the_recorded_one():
    """The schema clients generate code from: changed only on purpose (regenerate the file with
    ``python -c 'import json; from app.main import create_app; print(json.dumps(create_app().openapi(),
    indent=1, sort_keys=True))' > tests/data/openapi.json``)."""
    assert create_app(Settings()).openapi() == json.loads(OPENAPI.read_text())
