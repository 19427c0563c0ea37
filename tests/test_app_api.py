"""HTTP tests of the app: lifespan on, httpx.AsyncClient over ASGITransport, a tiny checkpoint
built here. Slowness, blocking and failures are injected through the model-runner seam
(``create_app(runner=...)``: ``helpers.BatchHook``)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from asgi_lifespan import LifespanManager

from app.main import create_app
from app.schemas import ErrorResponse
from app.settings import Settings
from model.encoder import SentenceEncoder
from conftest import TINY_VOCAB, nan_checkpoint
from helpers import BatchHook, running_app, sample, wait_until
from loadtest.fixtures import random_checkpoint

torch.set_num_threads(1)

VOCAB = TINY_VOCAB
PAIR = {"text_a": "a man is playing a guitar", "text_b": "the man plays music"}
LONG = " ".join(["the cat sat on the mat"] * 10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", vocab=VOCAB)


def settings(checkpoint: Path, **overrides) -> Settings:
    base = dict(model_path=checkpoint, torch_threads=1, max_batch_size=8, max_wait_ms=1, queue_capacity=64,
                max_items_per_request=8, max_chars_per_text=500, max_tokens_per_text=16, request_timeout_s=10,
                shutdown_timeout_s=5, body_timeout_s=4, materialize_embeddings=True, quantize="none")
    return Settings(**{**base, **overrides})


def fields(resp: httpx.Response) -> list[str]:
    return [d["field"] for d in resp.json().get("detail", [])]


# ---- start-up, probes, happy paths -------------------------------------------------------------
@pytest.mark.anyio
async def test_readyz_before_and_after_startup(checkpoint):
    s = settings(checkpoint)
    async with running_app(s, lifespan=False) as (app, _, client):
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        assert (await client.get("/info")).status_code == 503
    async with running_app(s) as (app, _, client):
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.anyio
async def test_endpoints_answer_and_match_the_model(checkpoint):
    model = SentenceEncoder.from_pretrained(checkpoint)
    async with running_app(settings(checkpoint)) as (app, _, client):
        r = await client.post("/similarity", json={"pairs": [PAIR, {"text_a": "a cat", "text_b": "a cat"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["truncated"] == [False, False]
        ref = model.similarity([PAIR["text_a"]], [PAIR["text_b"]])[0].item()
        assert abs(body["scores"][0] - ref) < 1e-5 and abs(body["scores"][1] - 1.0) < 1e-5

        r = await client.post("/nli", json={"pairs": [{"premise": "a dog runs", "hypothesis": "a dog sleeps"}]})
        assert r.status_code == 200, r.text
        res = r.json()["results"][0]
        probs = res["probabilities"]
        assert set(probs) == {"entailment", "neutral", "contradiction"}
        assert abs(sum(probs.values()) - 1) < 1e-5 and res["label"] == max(probs, key=probs.get)
        ref = model.predict_nli(["a dog runs"], ["a dog sleeps"])[0].tolist()
        assert max(abs(a - b) for a, b in zip([probs[k] for k in ("entailment", "neutral", "contradiction")], ref)) < 1e-5

        r = await client.post("/embeddings", json={"input": ["a cat", "the dog runs"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [d["index"] for d in body["data"]] == [0, 1] and body["dimensions"] == 32
        assert len(body["data"][0]["embedding"]) == 32 and body["usage"]["total_tokens"] == 4 + 5
        ref = model.encode(["a cat"])[0].tolist()
        assert max(abs(a - b) for a, b in zip(body["data"][0]["embedding"], ref)) < 1e-5

        info = (await client.get("/info")).json()
        assert info["model"] == "tiny" and info["embedding_kind"] == "fourier_geo" and info["nli_head"] == "pair"
        assert info["parameters"]["total"] == model.parameter_counts()["total"]
        assert info["parameters"]["embedding"] == model.parameter_counts()["embedding"]
        assert info["materialized_embeddings"] is True and info["limits"]["max_tokens_per_text"] == 16

        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["schemas"]["SimilarityRequest"]["examples"]


@pytest.mark.anyio
async def test_v1_embeddings_takes_the_openai_request_shape(checkpoint):
    model = SentenceEncoder.from_pretrained(checkpoint)
    async with running_app(settings(checkpoint)) as (app, _, client):
        r = await client.post("/v1/embeddings", json={"input": "a cat", "model": "text-embedding-3-small",
                                                      "user": "u1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == "tiny" and len(body["data"]) == 1
        item = body["data"][0]
        assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 32
        assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        assert max(abs(a - b) for a, b in zip(item["embedding"], model.encode(["a cat"])[0].tolist())) < 1e-5

        r = await client.post("/v1/embeddings", json={"input": ["a cat", "the dog runs"], "encoding_format": "base64"})
        assert r.status_code == 200, r.text
        decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
        alias = (await client.post("/embeddings", json={"input": ["a cat", "the dog runs"]})).json()
        assert all(np.array_equal(v, np.asarray(d["embedding"], dtype=np.float32))
                   for v, d in zip(decoded, alias["data"]))  # same float32 vector, two encodings
        assert (await client.post("/v1/embeddings", json={"input": "a cat", "dimensions": 32})).status_code == 200

        for payload, field in (({"input": "a cat", "dimensions": 16}, "dimensions"),
                               ({"input": "a cat", "encoding_format": "int8"}, "encoding_format"),
                               ({"input": ""}, "input"), ({"input": []}, "input"),
                               ({"input": [1, 2, 3]}, "input"), ({"input": "a", "temperature": 1}, "temperature")):
            r = await client.post("/v1/embeddings", json=payload)
            assert r.status_code == 422 and field in " ".join(fields(r)), (payload, r.text)
        r = await client.post("/v1/embeddings", json={"input": ["a"] * 9})
        assert r.status_code == 413 and fields(r) == ["input"]
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/v1/embeddings", status="200") == 3


def test_the_route_table_is_read_from_the_router(checkpoint):
    from app import routes

    app = create_app(settings(checkpoint))
    assert set(routes.route_paths()) == set(app.openapi()["paths"])  # every served route, labelled by its path
    assert set(routes.MIN_QUEUE_ITEMS) == set(routes.route_paths("POST"))  # checked at import too


@pytest.mark.anyio
async def test_int8_service_stays_close_to_the_float32_model(checkpoint):
    model = SentenceEncoder.from_pretrained(checkpoint)
    async with running_app(settings(checkpoint, quantize="int8")) as (app, _, client):
        info = (await client.get("/info")).json()
        assert info["quantization"] == "int8"
        assert info["parameters"]["total"] == model.parameter_counts()["total"]  # int8 weights still counted
        texts = ["a man is playing a guitar", "the cat sat on the mat", "a woman eats food in the park"]
        r = await client.post("/embeddings", json={"input": texts})
        assert r.status_code == 200, r.text
        got = torch.tensor([d["embedding"] for d in r.json()["data"]])
        ref = model.encode(texts)
        assert not torch.equal(got, ref)  # it did run quantized ...
        assert torch.nn.functional.cosine_similarity(got, ref).min() > 0.99  # ... and close to float32
    async with running_app(settings(checkpoint)) as (app, _, client):
        assert (await client.get("/info")).json()["quantization"] == "none"


@pytest.mark.anyio
async def test_truncation_is_flagged_not_an_error(checkpoint):
    async with running_app(settings(checkpoint, max_tokens_per_text=8)) as (app, _, client):
        r = await client.post("/similarity", json={"pairs": [{"text_a": LONG, "text_b": "a cat"}, PAIR]})
        assert r.status_code == 200 and r.json()["truncated"] == [True, False]
        r = await client.post("/nli", json={"pairs": [{"premise": LONG, "hypothesis": "a cat"}]})
        assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True
        r = await client.post("/embeddings", json={"input": [LONG, "a cat"]})
        assert [d["truncated"] for d in r.json()["data"]] == [True, False]
        assert r.json()["usage"]["total_tokens"] == 8 + 4


# ---- batching ---------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_concurrent_requests_are_coalesced_without_changing_scores(checkpoint):
    s = settings(checkpoint, max_wait_ms=50, max_batch_size=32)
    others = ["the woman plays the piano in the park", "red", "a big blue dog runs in the street", "no"]
    async with running_app(s) as (app, _, client):
        alone = (await client.post("/similarity", json={"pairs": [PAIR]})).json()["scores"][0]
        passes_before = sample(app, "pete_batch_size_count")
        reqs = [{"pairs": [{"text_a": others[i % 4], "text_b": others[(i + 1) % 4]}]} for i in range(15)]
        reqs.insert(7, {"pairs": [PAIR]})
        resps = await asyncio.gather(*(client.post("/similarity", json=r) for r in reqs))
        assert all(r.status_code == 200 for r in resps)
        assert abs(resps[7].json()["scores"][0] - alone) < 1e-5
        passes = sample(app, "pete_batch_size_count") - passes_before
        assert 1 <= passes < 16  # 32 sequences in far fewer than 16 forward passes
        assert sample(app, "pete_batch_size_sum") >= 34 and sample(app, "pete_batch_size_bucket", le="1.0") == 0


def similarity_scope() -> dict:
    """The ASGI scope of a JSON POST /similarity, for driving the app with hand-made messages."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/similarity", "raw_path": b"/similarity", "root_path": "",
            "query_string": b"", "headers": [(b"host", b"t"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}


@pytest.mark.anyio
async def test_a_client_gone_mid_body_counts_as_499_never_500(checkpoint):
    async with running_app(settings(checkpoint)) as (app, _, client):
        messages = [{"type": "http.request", "body": b'{"pairs": [', "more_body": True}, {"type": "http.disconnect"}]
        sent: list[dict] = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(similarity_scope(), receive, send)
        assert sent == []  # nobody to answer
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="499") == 1
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="500") == 0


@pytest.mark.anyio
async def test_a_body_that_does_not_arrive_in_time_is_408_and_the_app_goes_on(checkpoint):
    """A slow upload (the first bytes, then nothing) gets 408 with Connection: close after
    body_timeout_s, counted as such; the service answers the next request."""
    async with running_app(settings(checkpoint, body_timeout_s=0.3)) as (app, _, client):
        sent: list[dict] = []
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"pairs": [', "more_body": True}
            await asyncio.sleep(3600)  # the rest never comes

        async def send(message):
            sent.append(message)

        start = time.perf_counter()
        await asyncio.wait_for(app(similarity_scope(), receive, send), 5)
        assert 0.25 < time.perf_counter() - start < 2
        assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
        assert json.loads(sent[1]["body"])["error"] == "body_timeout"
        assert sample(app, "pete_rejected_requests_total", reason="body_timeout") == 1
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="408") == 1
        assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200


@pytest.mark.anyio
async def test_a_checkpoint_with_nan_weights_fails_start_up(checkpoint, tmp_path):
    from app.outputs import NonFiniteOutput

    app = create_app(settings(nan_checkpoint(checkpoint, tmp_path / "nan")))
    with pytest.raises(NonFiniteOutput, match="corrupt"):
        async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
            pass
    assert not app.state.service.ready


class PoisonedEncoder(SentenceEncoder):
    """Once ``poison`` is set, the rows whose first word has an odd token id come out NaN."""

    poison = False

    def embed(self, ids, mask):
        out = super().embed(ids, mask)
        if self.poison:
            out[ids[:, 1] % 2 == 1] = float("nan")
        return out


@pytest.mark.anyio
async def test_a_non_finite_output_is_a_500_for_that_item_never_null_in_a_200(checkpoint):
    from app.inference import TorchRunner

    gate = BatchHook()
    runner = functools.partial(TorchRunner.from_settings, load_model=PoisonedEncoder.from_pretrained)
    async with running_app(settings(checkpoint), gate, runner=runner) as (app, _, client):
        model = app.state.service.runner.inner.model
        model.poison = True  # after the warm-up, which would refuse the model
        texts = ["cat", "dog", "man", "park", "red", "blue"]
        r = await client.post("/embeddings", json={"input": texts})
        assert r.status_code == 500 and r.json() == {"error": "internal_error", "message": "internal server error",
                                                     "detail": None}
        ok = [t for t in texts if model.tokenize([t]).input_ids[0, 1] % 2 == 0]
        bad = [t for t in texts if t not in ok]
        assert ok and bad, "the test needs both kinds of words"
        gate.hold()  # hold a first batch, so that the next requests queue up and share one batch
        plug = asyncio.create_task(client.post("/embeddings", json={"input": [ok[0]]}))
        await gate.wait_entered()
        tasks = [asyncio.create_task(client.post("/embeddings", json={"input": [t]})) for t in ok + bad]
        await wait_until(lambda: app.state.service.batcher.depth == len(ok + bad))
        batches_before = sample(app, "pete_batch_size_count")
        gate.release()
        assert (await plug).status_code == 200
        codes = [await t for t in tasks]
        assert sample(app, "pete_batch_size_count") - batches_before == 2  # the plug's pass, then one for all
        assert [c.status_code for c in codes] == [200] * len(ok) + [500] * len(bad)  # batch-mates still served
        assert all("null" not in c.text for c in codes if c.status_code == 200)
        assert sample(app, "pete_rejected_requests_total", reason="inference_error") == 1 + len(bad)


@pytest.mark.anyio
async def test_no_trailing_slash_redirect_echoes_the_host_header(checkpoint):
    async with running_app(settings(checkpoint)) as (app, _, client):
        r = await client.post("/similarity/", json={"pairs": [PAIR]}, headers={"host": "evil.example"})
        assert r.status_code == 404 and "location" not in r.headers and "evil" not in r.text


@pytest.mark.anyio
async def test_a_too_large_body_is_413_even_when_the_queue_is_full(checkpoint):
    async with busy_service(checkpoint) as (app, client, gate, first):
        queued = [asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]})) for _ in range(2)]
        await wait_until(lambda: app.state.service.batcher.depth == 4)
        big = b"x" * (2 << 20)  # over the default 1 MiB limit, declared in Content-Length
        r = await client.post("/similarity", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 429  # a normal request is still shed
        gate.release()
        await asyncio.gather(first, *queued)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_validation_errors_are_422_naming_the_field(checkpoint):
    cases = [
        (b'{"pairs": [', ["body"]),
        ({"pairs": [{"text_a": 1, "text_b": "x"}]}, ["pairs.0.text_a"]),
        ({"pairs": [{"text_a": "x", "text_b": ""}]}, ["pairs.0.text_b"]),
        ({"pairs": [{"text_a": "   ", "text_b": "x"}]}, ["pairs.0.text_a"]),
        ({"pairs": [{"text_a": "x"}]}, ["pairs.0.text_b"]),
        ({"pairs": []}, ["pairs"]),
        ({"pairs": "x"}, ["pairs"]),
        ({"pairs": [PAIR], "extra": 1}, ["extra"]),
        ({"pairs": [PAIR, {"text_a": "x", "text_b": "y" * 501}]}, ["pairs.1.text_b"]),
    ]
    async with running_app(settings(checkpoint)) as (app, _, client):
        for payload, expected in cases:
            if isinstance(payload, bytes):
                r = await client.post("/similarity", content=payload, headers={"content-type": "application/json"})
            else:
                r = await client.post("/similarity", json=payload)
            assert r.status_code == 422, (payload, r.text)
            assert r.json()["error"] == "invalid_request" and fields(r) == expected, (payload, r.text)
        r = await client.post("/nli", json={"pairs": [{"premise": "x", "hypothesis": None}]})
        assert r.status_code == 422 and fields(r) == ["pairs.0.hypothesis"]
        r = await client.post("/embeddings", json={"input": ["ok", ""]})
        assert r.status_code == 422 and fields(r) == ["input.1"]
        assert sample(app, "pete_rejected_requests_total", reason="invalid") == len(cases) + 2


@pytest.mark.anyio
async def test_too_many_pairs_and_too_large_body_are_413(checkpoint):
    async with running_app(settings(checkpoint, max_body_bytes=2000)) as (app, _, client):
        r = await client.post("/similarity", json={"pairs": [PAIR] * 9})
        assert r.status_code == 413 and fields(r) == ["pairs"]
        r = await client.post("/embeddings", json={"input": ["a"] * 9})
        assert r.status_code == 413 and fields(r) == ["input"]
        big = json.dumps({"pairs": [{"text_a": "x" * 1500, "text_b": "y" * 600}]}).encode()
        r = await client.post("/similarity", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"

        async def chunks():  # no Content-Length: the streamed bytes are counted
            for i in range(0, len(big), 500):
                yield big[i:i + 500]

        r = await client.post("/similarity", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        assert sample(app, "pete_rejected_requests_total", reason="body_too_large") == 2
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="413") == 3
        # a body within the limit, streamed, still works
        small = json.dumps({"pairs": [PAIR]}).encode()

        async def small_chunks():
            yield small[:10]
            yield small[10:]

        r = await client.post("/similarity", content=small_chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 200


@asynccontextmanager
async def busy_service(checkpoint: Path):
    """A service (batch size 2, queue capacity 4) whose first batch, /embeddings ["a", "b"], is held
    on the inference thread: the queue is empty and every new item waits in it until
    ``gate.release()``. Yields (app, client, gate, the first request's task)."""
    gate = BatchHook()
    s = settings(checkpoint, max_batch_size=2, queue_capacity=4, max_items_per_request=2)
    async with running_app(s, gate) as (app, _, client):
        gate.hold()
        first = asyncio.create_task(client.post("/embeddings", json={"input": ["a", "b"]}))
        await gate.wait_entered()
        yield app, client, gate, first


@pytest.mark.anyio
async def test_full_queue_is_429_with_retry_after(checkpoint):
    async with busy_service(checkpoint) as (app, client, gate, first):
        queued = [asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]})) for _ in range(2)]
        await wait_until(lambda: app.state.service.batcher.depth == 4)
        r = await client.post("/embeddings", json={"input": ["c"]})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"
        assert sample(app, "pete_queue_depth") == 4
        gate.release()
        assert (await first).status_code == 200
        assert [(await q).status_code for q in queued] == [200, 200]
        assert sample(app, "pete_rejected_requests_total", reason="queue_full") == 1


@pytest.mark.anyio
async def test_every_retry_after_comes_from_one_setting(checkpoint):
    s = settings(checkpoint, retry_after_s=7)
    async with running_app(s, lifespan=False) as (app, _, client):  # loading: 503 from a route and from /readyz
        assert (await client.post("/similarity", json={"pairs": [PAIR]})).headers["retry-after"] == "7"
        assert (await client.get("/readyz")).headers["retry-after"] == "7"
    gate = BatchHook()
    async with running_app(settings(checkpoint, retry_after_s=7, max_batch_size=2, queue_capacity=4,
                              max_items_per_request=2), gate) as (app, _, client):
        gate.hold()
        first = asyncio.create_task(client.post("/embeddings", json={"input": ["a", "b"]}))
        await gate.wait_entered()
        queued = [asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]})) for _ in range(2)]
        await wait_until(lambda: app.state.service.batcher.depth == 4)
        shed = await client.post("/similarity", json={"pairs": [PAIR]})  # refused by the middleware
        full = await client.post("/embeddings", json={"input": ["c"]})  # refused by the batcher
        assert (shed.status_code, full.status_code) == (429, 429)
        assert shed.headers["retry-after"] == full.headers["retry-after"] == "7"
        stopping = asyncio.create_task(app.state.service.stop())
        await asyncio.sleep(0.01)
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert (await client.get("/readyz")).headers["retry-after"] == "7"
        gate.release()
        await asyncio.gather(first, *queued, stopping)


@pytest.mark.anyio
async def test_full_queue_sheds_load_before_parsing_and_keeps_what_fits(checkpoint):
    async with busy_service(checkpoint) as (app, client, gate, first):
        queued = [asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]})),
                  asyncio.create_task(client.post("/nli", json={"pairs": [{"premise": "a", "hypothesis": "b"}]}))]
        await wait_until(lambda: app.state.service.batcher.depth == 3)  # 1 slot left
        # a /similarity request needs 2 slots whatever its body: refused before it is even parsed
        r = await client.post("/similarity", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"
        assert sample(app, "pete_rejected_requests_total", reason="queue_full") == 1
        assert sample(app, "pete_request_duration_seconds_count", endpoint="/similarity", status="429") == 1
        # ... while a body that fits the last slot is still taken, and a bad one still gets its 422
        assert (await client.post("/embeddings", content=b"{not json",
                                  headers={"content-type": "application/json"})).status_code == 422
        last = asyncio.create_task(client.post("/embeddings", json={"input": ["c"]}))
        await wait_until(lambda: app.state.service.batcher.depth == 4)
        gate.release()
        assert [(await t).status_code for t in (first, *queued, last)] == [200, 200, 200, 200]
        assert (await client.get("/healthz")).status_code == 200  # GETs are never shed


@pytest.mark.anyio
async def test_slow_batch_is_504_and_service_recovers(checkpoint):
    gate = BatchHook()
    async with running_app(settings(checkpoint, request_timeout_s=0.1), gate) as (app, _, client):
        gate.sleep_s = 0.4
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 504 and r.json()["error"] == "timeout"
        gate.sleep_s = 0.0
        await asyncio.sleep(0.4)  # let the slow batch finish
        assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200
        assert sample(app, "pete_rejected_requests_total", reason="timeout") == 1


@pytest.mark.anyio
async def test_api_key_required_on_post_routes_only(checkpoint):
    async with running_app(settings(checkpoint, api_key="s3cret")) as (app, _, client):
        body = {"pairs": [PAIR]}
        r = await client.post("/similarity", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (await client.post("/nli", json={"pairs": [{"premise": "a", "hypothesis": "b"}]},
                                  headers={"X-API-Key": "wrong"})).status_code == 401
        assert (await client.post("/embeddings", json={"input": ["a"]},
                                  headers={"Authorization": "Bearer s3cre"})).status_code == 401
        assert (await client.post("/similarity", json=body, headers={"Authorization": "Bearer s3cret"})).status_code == 200
        assert (await client.post("/similarity", json=body, headers={"X-API-Key": "s3cret"})).status_code == 200
        for path in ("/healthz", "/readyz", "/info", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        assert sample(app, "pete_rejected_requests_total", reason="unauthorized") == 3


@pytest.mark.anyio
async def test_failed_batch_is_generic_500_and_next_batch_succeeds(checkpoint):
    gate = BatchHook()
    async with running_app(settings(checkpoint), gate) as (app, _, client):
        gate.fail_next = True
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "internal server error", "detail": None}
        assert "Traceback" not in r.text and ".py" not in r.text and "injected" not in r.text
        assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200
        assert sample(app, "pete_batch_failures_total") == 1
        r = await client.get("/nope")
        assert r.status_code == 404 and r.json()["error"] == "http_404"


def assert_one_error_shape(r: httpx.Response) -> str:
    """Every error body: exactly error, message, detail, valid against ErrorResponse, rendered the one
    way (JSONResponse's compact separators). Returns the error code."""
    body = r.json()
    assert r.headers["content-type"] == "application/json", r.headers
    assert set(body) == {"error", "message", "detail"}, body
    ErrorResponse.model_validate(body)
    assert r.content == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), r.content
    return body["error"]


@pytest.mark.anyio
async def test_every_error_status_has_one_shape(checkpoint):
    """400 (two kinds), 401, 404, 405, 413 (two kinds), 422, 429 (two kinds), 500, 503 (two kinds), 504."""
    seen: list[tuple[int, str, httpx.Response]] = []

    def keep(r: httpx.Response) -> None:
        seen.append((r.status_code, assert_one_error_shape(r), r))

    async with running_app(settings(checkpoint), lifespan=False) as (app, _, client):
        keep(await client.post("/similarity", json={"pairs": [PAIR]}))  # 503 not_ready
    gate = BatchHook()
    async with running_app(settings(checkpoint, api_key="k", max_body_bytes=2000, request_timeout_s=0.2), gate) as (app, _, c):
        key = {"X-API-Key": "k"}
        keep(await c.post("/similarity", json={"pairs": [PAIR]}))  # 401
        keep(await c.post("/similarity", content=b"{}", headers={**key, "content-length": "x"}))  # 400, middleware
        keep(await c.post("/similarity", content=b'{"pairs": [{"text_a": "\xff", "text_b": "b"}]}',
                          headers={**key, "content-type": "application/json"}))  # 400, not UTF-8
        keep(await c.get("/nope"))  # 404
        keep(await c.get("/similarity"))  # 405
        keep(await c.post("/similarity", json={"pairs": [PAIR] * 9}, headers=key))  # 413 too_many_items
        keep(await c.post("/similarity", content=b"x" * 3000, headers=key))  # 413 body_too_large (middleware)
        keep(await c.post("/similarity", json={"pairs": []}, headers=key))  # 422
        gate.fail_next = True
        keep(await c.post("/similarity", json={"pairs": [PAIR]}, headers=key))  # 500
        gate.sleep_s = 0.5
        keep(await c.post("/similarity", json={"pairs": [PAIR]}, headers=key))  # 504
        gate.sleep_s = 0.0
    async with busy_service(checkpoint) as (app, client, gate, first):
        queued = [asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]})) for _ in range(2)]
        await wait_until(lambda: app.state.service.batcher.depth == 4)
        keep(await client.post("/embeddings", json={"input": ["c"]}))  # 429 from the batcher
        keep(await client.post("/similarity", json={"pairs": [PAIR]}))  # 429 shed by the middleware
        stopping = asyncio.create_task(app.state.service.stop())
        await asyncio.sleep(0.01)
        gate.release()
        await asyncio.gather(first, *queued, stopping)
        keep(await client.post("/similarity", json={"pairs": [PAIR]}))  # 503 shutting_down
    assert [(status, code) for status, code, _ in seen] == [
        (503, "not_ready"), (401, "unauthorized"), (400, "bad_request"), (400, "http_400"), (404, "http_404"),
        (405, "http_405"), (413, "too_many_items"), (413, "body_too_large"), (422, "invalid_request"),
        (500, "internal_error"), (504, "timeout"), (429, "overloaded"), (429, "overloaded"), (503, "shutting_down")]
    assert seen[-3][2].content == seen[-2][2].content  # the batcher's and the middleware's 429: one body
    assert [d["field"] for d in seen[6][2].json()["detail"]] == ["pairs"]
    assert all(r.json()["detail"] is None for _, code, r in seen if code not in ("too_many_items", "invalid_request"))


@pytest.mark.anyio
async def test_shutdown_drains_in_flight_and_refuses_new_with_503(checkpoint):
    gate = BatchHook()
    async with running_app(settings(checkpoint), gate) as (app, _, client):
        svc = app.state.service
        gate.hold()
        in_flight = asyncio.create_task(client.post("/similarity", json={"pairs": [PAIR]}))
        await gate.wait_entered()
        stopping = asyncio.create_task(svc.stop())  # what the lifespan does on shutdown
        await asyncio.sleep(0.01)
        r = await client.post("/similarity", json={"pairs": [PAIR]})
        assert r.status_code == 503 and r.json()["error"] == "shutting_down" and r.headers["retry-after"] == "1"
        r = await client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        gate.release()
        assert (await in_flight).status_code == 200
        await stopping


# ---- metrics ----------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_metrics_exposed_and_moving(checkpoint):
    async with running_app(settings(checkpoint)) as (app, _, client):
        before = (await client.get("/metrics")).text
        for _ in range(2):
            assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200
        await client.post("/similarity", json={"pairs": []})
        r = await client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        for name in ("pete_request_duration_seconds_bucket", "pete_queue_wait_seconds_count",
                     "pete_inference_duration_seconds_count", "pete_batch_size_count", "pete_batch_tokens_count",
                     "pete_queue_depth", "pete_dropped_items_total", "pete_batch_failures_total",
                     "process_resident_memory_bytes", "pete_process_peak_rss_bytes", "python_info"):
            assert re.search(rf"^{name}", text, re.M), name

        def value(t: str, series: str) -> float:
            m = re.search(rf"^{re.escape(series)} (\S+)$", t, re.M)
            return float(m.group(1)) if m else 0.0

        sim_ok = 'pete_request_duration_seconds_count{endpoint="/similarity",status="200"}'
        assert value(before, sim_ok) == 0 and value(text, sim_ok) == 2
        assert value(text, 'pete_request_duration_seconds_count{endpoint="/similarity",status="422"}') == 1
        assert value(text, 'pete_rejected_requests_total{reason="invalid"}') == 1
        assert value(text, "pete_inference_duration_seconds_count") == 2
        assert value(text, "pete_queue_wait_seconds_count") == 4
        assert value(text, 'pete_model_parameters{part="total"}') > value(text, 'pete_model_parameters{part="embedding"}') > 0
        assert value(text, "pete_model_bytes") > 0 and value(text, "pete_process_peak_rss_bytes") > 1e6


@pytest.mark.anyio
async def test_request_cancelled_while_queued_is_dropped_before_compute(checkpoint):
    gate = BatchHook()
    async with running_app(settings(checkpoint, max_batch_size=2), gate) as (app, _, client):
        gate.hold()
        first = asyncio.create_task(client.post("/embeddings", json={"input": ["a cat", "a dog"]}))
        await gate.wait_entered()
        gone = asyncio.create_task(client.post("/similarity", json={"pairs": [{"text_a": "red", "text_b": "blue"}]}))
        await wait_until(lambda: app.state.service.batcher.depth == 2)
        gone.cancel()  # the client goes away while its items wait in the queue
        await asyncio.wait({gone})
        gate.release()
        assert (await first).status_code == 200
        await wait_until(lambda: sample(app, "pete_dropped_items_total") == 2)
        assert gate.batches == [["a cat", "a dog"]]
        assert (await client.post("/similarity", json={"pairs": [PAIR]})).status_code == 200


@pytest.mark.anyio
async def test_missing_checkpoint_fails_startup(tmp_path):
    app = create_app(settings(tmp_path))
    with pytest.raises(FileNotFoundError):
        async with LifespanManager(app):
            pass


@pytest.mark.anyio
async def test_unexpected_exception_is_generic_500(checkpoint):
    app = create_app(settings(checkpoint))
    async with LifespanManager(app) as manager:
        async def broken(*args, **kwargs):
            raise RuntimeError("secret detail in /srv/app/x.py line 3")

        app.state.service.run = broken
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/embeddings", json={"input": ["a cat"]})
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "internal server error", "detail": None}
        assert "secret" not in r.text and ".py" not in r.text
