"""Error responses: one JSON shape for every error, no stack trace or file path ever.

Body: ``{"error": <code>, "message": <text>, "detail": [{"field": "pairs.0.text_a", "message": ...}]}``,
always these three keys (``detail`` is null unless fields are at fault: 422 and field-specific 413),
always rendered by ``JSONResponse`` (the ASGI middleware's early answers included). Status codes:

- 400 ``http_400`` / ``bad_request``: the body is not decodable (not UTF-8, nested too deep) or the
  ``Content-Length`` header is not a number.
- 401 ``unauthorized``: API key set and missing or wrong (``WWW-Authenticate: Bearer``).
- 413 ``too_many_items`` / ``body_too_large``: more pairs/inputs than allowed, body over the limit.
- 422 ``invalid_request``: malformed JSON, wrong types, empty strings or lists, unknown fields, a
  text longer than ``max_chars_per_text`` (a client error in one field, so 422 naming the field).
- 429 ``overloaded``: the queue is full (``Retry-After``).
- 500 ``internal_error``: anything unexpected, the batch holding the request failed, or the model
  gave a non-finite (NaN/Inf) output for one of its items (never ``null`` in a 200).
- 503 ``not_ready`` / ``shutting_down``: model not loaded yet, or draining (``Retry-After``).
- 504 ``timeout``: results not ready within ``request_timeout_s``.
Every refusal also counts in ``pete_rejected_requests_total{reason}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import BatchFailed, Closed, DeadlineExceeded, Overloaded
from app.outputs import NonFiniteOutput
from app.metrics import Metrics

log = logging.getLogger("pete.errors")


class ApiError(Exception):
    """An error with a status code, a stable code string, a safe message and optional headers.

    ``field`` (dotted path such as ``pairs.3.text_a``) names the offending input where there is one.
    ``reason`` is the ``pete_rejected_requests_total`` label (None: not counted). ``retry_later``:
    the answer carries ``Retry-After`` (the ``retry_after_s`` setting).
    """

    status_code = 500
    code = "internal_error"
    reason: str | None = None
    retry_later = False

    def __init__(self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.headers = message, field, headers


class Unauthorized(ApiError):
    status_code, code, reason = 401, "unauthorized", "unauthorized"

    def __init__(self) -> None:
        super().__init__("missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


class TooManyItems(ApiError):
    status_code, code, reason = 413, "too_many_items", "too_many_items"


class InvalidInput(ApiError):
    status_code, code, reason = 422, "invalid_request", "invalid"


class NotReady(ApiError):
    status_code, code, reason, retry_later = 503, "not_ready", "not_ready", True

    def __init__(self) -> None:
        super().__init__("model is loading")


class ShuttingDown(ApiError):
    status_code, code, reason, retry_later = 503, "shutting_down", "shutting_down", True

    def __init__(self) -> None:
        super().__init__("server is shutting down")


class ClientDisconnected(ApiError):
    """The client went away while its request waited; nobody reads this response."""

    status_code, code, reason = 499, "client_closed_request", "client_gone"

    def __init__(self) -> None:
        super().__init__("client closed request")


OVERLOADED_MESSAGE = "too many requests queued, retry later"


def error_body(code: str, message: str, detail: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The JSON error body shared by every error response (``app.schemas.ErrorResponse``): error,
    message and detail (None when no field is at fault)."""
    return {"error": code, "message": message, "detail": detail}


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI, metrics: Metrics, retry_after_s: int) -> None:
    """Register the handlers that map every exception to the JSON shape above; 429 and 503 answers
    carry ``Retry-After: retry_after_s`` (seconds, the ``retry_after_s`` setting)."""
    retry = {"Retry-After": str(retry_after_s)}

    def reject(reason: str) -> None:
        metrics.rejected.labels(reason=reason).inc()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        reject("invalid")
        detail = []
        for e in exc.errors():
            field, msg = _field(tuple(e.get("loc", ()))), e.get("msg", "invalid value")
            if e.get("type") == "json_invalid":
                field, msg = "body", "request body is not valid JSON"
            detail.append({"field": field, "message": msg})
        fields = ", ".join(sorted({d["field"] for d in detail}))
        return JSONResponse(error_body("invalid_request", f"invalid request: {fields}", detail), status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.reason:
            reject(exc.reason)
        detail = [{"field": exc.field, "message": exc.message}] if exc.field else None
        headers = {**(exc.headers or {}), **(retry if exc.retry_later else {})}
        return JSONResponse(error_body(exc.code, exc.message, detail), status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        reject("queue_full")
        return JSONResponse(error_body("overloaded", OVERLOADED_MESSAGE), status_code=429, headers=retry)

    @app.exception_handler(Closed)
    async def _closed(request: Request, exc: Closed) -> JSONResponse:
        reject("shutting_down")
        return JSONResponse(error_body("shutting_down", "server is shutting down"), status_code=503, headers=retry)

    @app.exception_handler(DeadlineExceeded)
    async def _timeout(request: Request, exc: DeadlineExceeded) -> JSONResponse:
        reject("timeout")
        return JSONResponse(error_body("timeout", "request timed out"), status_code=504)

    @app.exception_handler(NonFiniteOutput)
    async def _non_finite(request: Request, exc: NonFiniteOutput) -> JSONResponse:
        log.error("non-finite model output on %s: %s", request.url.path, exc)
        reject("inference_error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)

    @app.exception_handler(BatchFailed)
    async def _batch_failed(request: Request, exc: BatchFailed) -> JSONResponse:
        reject("inference_error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(error_body(f"http_{exc.status_code}", message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        reject("internal_error")
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
