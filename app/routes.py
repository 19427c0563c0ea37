"""HTTP endpoints. Thin: validate limits, build work items, await the batcher, shape the response.

POST /similarity, /nli, /v1/embeddings (alias /embeddings) need the API key when one is set;
GET /healthz, /readyz, /info, /metrics are open (see ``app.auth``).
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from fastapi.responses import JSONResponse, Response

from app.auth import api_key_schemes
from app.batching import WorkItem
from app.errors import InvalidInput, NotReady
from app.json_route import JsonBodyRoute
from app.outputs import cosine, nli_label
from app.limits import check_limits
from app.schemas import (Embedding, EmbeddingsRequest, EmbeddingsResponse, ErrorResponse, InfoResponse, Limits,
                         NliProbabilities, NliRequest, NliResponse, NliResult, Parameters, SimilarityRequest,
                         SimilarityResponse, Status, Usage)
from app.service import Service
from model.config import NLI_LABELS

_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 408, 413, 422, 429, 500, 503, 504)}

# Fewest queue items one request to each POST endpoint enqueues (the work items built below: a
# /similarity pair is two texts to embed, an NLI pair or an /embeddings input one item), for
# shedding load before parsing (app.middleware.LoadSheddingMiddleware).
MIN_QUEUE_ITEMS = {"/similarity": 2, "/nli": 1, "/v1/embeddings": 1, "/embeddings": 1}

router = APIRouter()
# the POST routes: FastAPI's declaration (and OpenAPI schema), a lean handler for well-formed JSON (app.json_route)
protected = APIRouter(dependencies=[Depends(api_key_schemes)], responses=_ERRORS, route_class=JsonBodyRoute)


def _service(request: Request) -> Service:
    return request.app.state.service


def _disconnect_watcher(request: Request):
    """``await watcher()`` returns once the client has disconnected (the body was read already, so
    the server's ``receive`` only reports the disconnect, or the end of the response)."""
    async def wait_for_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            await asyncio.sleep(0.01)  # an unexpected message: do not spin
    return wait_for_disconnect


@protected.post("/similarity", response_model=SimilarityResponse, summary="Cosine similarity of text pairs")
async def similarity(body: SimilarityRequest, request: Request) -> SimilarityResponse:
    svc = _service(request)
    check_limits(svc.settings, "pairs", len(body.pairs),
                 ((f"pairs.{i}.{k}", getattr(p, k)) for i, p in enumerate(body.pairs) for k in ("text_a", "text_b")))
    items = [WorkItem("embed", t) for p in body.pairs for t in (p.text_a, p.text_b)]
    outs = await svc.run(items, _disconnect_watcher(request))
    a, b = outs[0::2], outs[1::2]
    return SimilarityResponse(scores=[cosine(x.vector, y.vector) for x, y in zip(a, b)],
                              truncated=[x.truncated or y.truncated for x, y in zip(a, b)], model=svc.model_name)


@protected.post("/nli", response_model=NliResponse, summary="Entailment / neutral / contradiction")
async def nli(body: NliRequest, request: Request) -> NliResponse:
    svc = _service(request)
    check_limits(svc.settings, "pairs", len(body.pairs),
                 ((f"pairs.{i}.{k}", getattr(p, k)) for i, p in enumerate(body.pairs) for k in ("premise", "hypothesis")))
    outs = await svc.run([WorkItem("nli", p.premise, p.hypothesis) for p in body.pairs], _disconnect_watcher(request))
    results = [NliResult(label=nli_label(o.probabilities), truncated=o.truncated,
                         probabilities=NliProbabilities(**{k: float(v) for k, v in zip(NLI_LABELS, o.probabilities)}))
               for o in outs]
    return NliResponse(results=results, model=svc.model_name)


def _vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """A sentence vector as OpenAI returns it: floats, or base64 of its little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


@protected.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="Sentence vectors (OpenAI-compatible)")
@protected.post("/embeddings", response_model=EmbeddingsResponse, summary="Sentence vectors (alias of /v1/embeddings)")
async def embeddings(body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
    svc = _service(request)
    texts = body.input
    check_limits(svc.settings, "input", len(texts), ((f"input.{i}", t) for i, t in enumerate(texts)))
    if body.dimensions is not None:
        if svc.model_info is None:
            raise NotReady()
        if body.dimensions != (dims := svc.model_info.dimensions):
            raise InvalidInput(f"this model's vectors have {dims} dimensions; omit dimensions or send {dims}",
                               field="dimensions")
    outs = await svc.run([WorkItem("embed", t) for t in texts], _disconnect_watcher(request))
    data = [Embedding(index=i, embedding=_vector(o.vector, body.encoding_format), truncated=o.truncated)
            for i, o in enumerate(outs)]
    tokens = sum(o.tokens for o in outs)
    return EmbeddingsResponse(data=data, model=svc.model_name, dimensions=len(outs[0].vector),
                              usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


@router.get("/healthz", response_model=Status, summary="Liveness: the process answers")
async def healthz() -> Status:
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": Status}},
            summary="Readiness: model loaded and warmed up, not draining")
async def readyz(request: Request):
    svc = _service(request)
    if svc.ready and not svc.draining:
        return Status(status="ready")
    status = "draining" if svc.draining else "loading"
    return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": str(svc.settings.retry_after_s)})


@router.get("/info", response_model=InfoResponse, responses={503: {"model": ErrorResponse}},
            summary="Model and limits")
async def info(request: Request) -> InfoResponse:
    svc = _service(request)
    if svc.model_info is None:
        raise NotReady()
    s, m = svc.settings, svc.model_info
    return InfoResponse(
        model=svc.model_name, embedding_kind=m.embedding_kind, nli_head=m.nli_head, dimensions=m.dimensions,
        parameters=Parameters(**svc.runner.parameter_counts()), model_bytes=m.model_bytes,
        materialized_embeddings=m.materialized_embeddings, quantization=m.quantization, labels=list(NLI_LABELS),
        limits=Limits(max_items_per_request=s.max_items_per_request, max_pairs_per_request=s.max_items_per_request,
                      max_chars_per_text=s.max_chars_per_text,
                      max_tokens_per_text=m.max_tokens_per_text, max_body_bytes=s.max_body_bytes,
                      request_timeout_s=s.request_timeout_s),
        auth_required=s.api_key is not None)


@router.get("/metrics", summary="Prometheus metrics (text exposition format)",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    body, content_type = _service(request).metrics.render()
    return Response(body, media_type=content_type)


router.include_router(protected)


def route_paths(method: str | None = None) -> tuple[str, ...]:
    """The paths ``router`` serves, its included ``protected`` routes first (only those answering
    ``method`` when given): the one route table (metrics label requests by these paths, everything
    else is "other")."""
    routes = [r for group in (protected, router) for r in group.routes if isinstance(r, APIRoute)]
    return tuple(r.path for r in routes if method is None or method in r.methods)


if set(MIN_QUEUE_ITEMS) != set(route_paths("POST")):  # a new POST route must say what it enqueues
    raise RuntimeError(f"MIN_QUEUE_ITEMS {sorted(MIN_QUEUE_ITEMS)} != POST routes {sorted(route_paths('POST'))}")
