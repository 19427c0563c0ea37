"""Pure ASGI middleware: early load shedding, request body size limit, API key and request metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Collection, Mapping

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth import bearer_credentials, key_matches
from app.errors import OVERLOADED_MESSAGE, Unauthorized, error_body
from app.metrics import Metrics

_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# Bodies from this size on are shed by their most possible cost before parsing (LoadSheddingMiddleware).
SIZE_SHED_MIN_BYTES = 65_536


async def _send_json(scope: Scope, receive: Receive, send: Send, status: int, body: dict,
                     headers: dict[str, str] | None = None, close: bool = True) -> None:
    """Answer with ``body`` rendered exactly as the app's error handlers render theirs (JSONResponse)."""
    headers = {**(headers or {}), **({"connection": "close"} if close else {})}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` in bytes, None without one.

    Raises:
        ValueError: the header is not a number.
    """
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value)
    return None


def _number_or_none(scope: Scope) -> int | None:
    """``_declared_length``, None also when the header is not a number (BodySizeLimitMiddleware
    answers that one 400)."""
    try:
        return _declared_length(scope)
    except ValueError:
        return None


class LoadSheddingMiddleware:
    """Answer 429 (``Retry-After``) before any parsing when the batch queue cannot take the request.

    ``admits(items, cost)`` says whether the queue would take a request of that many items and
    estimated tokens now (None while there is no batcher, at start-up: nothing is shed then).
    ``min_items`` maps a POST path to the fewest queue items any request to it needs (a /similarity
    pair takes 2, an NLI pair or an /embeddings input 1); when even that does not fit, no body
    could be accepted, so the request is refused at once, the same 429 ``overloaded`` answer the
    batcher would give after FastAPI had parsed, authenticated and validated it, at a fraction of
    the event loop's time (under 4x overload the event loop otherwise spends most of its time
    producing 429s, and their p99 grew past 10 ms: reliability/REPORT.md).

    Bodies of ``SIZE_SHED_MIN_BYTES`` or more are also checked at their most possible cost:
    ``max_request_cost`` tokens, and no more than their bytes (every token takes at least one byte
    of JSON, the two special tokens of a text its two quotes); one that may not fit is refused
    before parsing. A client re-sending 1 MB bodies of worst-case texts as fast as it gets 429s
    otherwise has each one parsed (~5 ms of event loop), and six such clients stalled everyone else
    (reliability/attacks.py); smaller bodies cost little to parse and get the exact check, so a
    short request is never refused for what it might have cost. Requests that might fit go on to
    the app, which decides exactly. A request declaring a body over ``max_body_bytes`` is not shed:
    it goes on to get its 413. ``on_reject()`` is called for each refusal (metrics). The connection
    stays open (keep-alive), but for a large body, which is left unread: closing costs less than
    draining it.
    """

    def __init__(self, app: ASGIApp, admits: Callable[[int, int], bool | None], min_items: Mapping[str, int],
                 retry_after_s: int, on_reject: Callable[[], None] | None = None,
                 max_body_bytes: int | None = None, max_request_cost: int | None = None) -> None:
        self.app, self.admits, self.min_items = app, admits, dict(min_items)
        self.max_body_bytes, self.max_request_cost = max_body_bytes, max_request_cost
        self.retry_after = {"retry-after": str(retry_after_s)}
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            need = self.min_items.get(scope.get("path", ""))
            bound = self._bound_cost(scope) if need is not None else 0
            if need is not None and self.admits(need, bound) is False and not self._too_large(scope):
                if self.on_reject is not None:
                    self.on_reject()
                # a large body left unread is not drained for keep-alive: the connection is closed
                await _send_json(scope, receive, send, 429, error_body("overloaded", OVERLOADED_MESSAGE),
                                 self.retry_after, close=bound > 0)
                return
        await self.app(scope, receive, send)

    def _bound_cost(self, scope: Scope) -> int:
        """The most tokens a body of ``SIZE_SHED_MIN_BYTES`` or more may cost; 0 for a smaller one."""
        declared = _number_or_none(scope)
        if declared is None or declared < SIZE_SHED_MIN_BYTES:
            return 0
        return min(declared, self.max_request_cost or declared)

    def _too_large(self, scope: Scope) -> bool:
        """A declared Content-Length over ``max_body_bytes``: such a request is refused with 413 by
        ``BodySizeLimitMiddleware`` (too big is the more useful answer than "retry later")."""
        declared = _number_or_none(scope)
        return self.max_body_bytes is not None and declared is not None and declared > self.max_body_bytes


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, and bodies not received within
    ``timeout_s`` seconds with 408, before the app parses anything.

    Checks the ``Content-Length`` header first, then reads the body while counting the bytes
    actually received (a client may lie about, or omit, Content-Length), stopping at the first byte
    over the limit. The whole body must arrive within ``timeout_s`` of the app starting to read it
    (a slow upload, or ``Expect: 100-continue`` with no body, otherwise holds a connection and a
    task for as long as the client likes, and delays shutdown by as much; uvicorn has no body
    timeout of its own): past it the client gets 408 and the connection is closed. A body within
    the limits is buffered (at most ``max_bytes``) and replayed to the app; later ``receive`` calls
    (disconnect detection) go to the server. ``on_reject(code)`` is called for each refusal
    (metrics; the error code, ``body_too_large`` or ``body_timeout``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None,
                 on_reject: Callable[[str], None] | None = None) -> None:
        self.app, self.max_bytes, self.timeout_s, self.on_reject = app, max_bytes, timeout_s, on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in _NO_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            declared = _declared_length(scope)
        except ValueError:
            return await self._refuse(scope, receive, send, 400, "bad_request", "invalid Content-Length")
        if declared is not None and declared > self.max_bytes:
            return await self._too_large(scope, receive, send)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # client gone before the body arrived; nothing to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        return await self._too_large(scope, receive, send)
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return await self._refuse(scope, receive, send, 408, "body_timeout",
                                      f"request body not received within {self.timeout_s:g} s")
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._refuse(scope, receive, send, 413, "body_too_large",
                           f"request body larger than {self.max_bytes} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        if self.on_reject is not None:
            self.on_reject(code)
        await _send_json(scope, receive, send, status, error_body(code, message))


class ApiKeyMiddleware:
    """Refuse POST requests to ``paths`` that lack the API key with 401 (``WWW-Authenticate:
    Bearer``, the ``unauthorized`` error), before their body is read or parsed.

    ``api_key``: the configured key (None: nothing is checked). The key is read from the request
    headers as FastAPI's ``HTTPBearer`` and ``APIKeyHeader`` read them (``app.auth.key_matches``);
    running before the body is read, an unauthenticated client cannot make the service parse a
    JSON body (it could while the check was a route dependency, which runs after the body is
    decoded), and the routes need no dependency solving for it (``app.auth.api_key_schemes``
    only documents the key). ``on_reject()`` is called for each
    refusal (metrics).
    """

    def __init__(self, app: ASGIApp, api_key: str | None, paths: Collection[str],
                 on_reject: Callable[[], None] | None = None) -> None:
        self.app, self.paths, self.on_reject = app, frozenset(paths), on_reject
        self.expected = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self.expected is not None and scope["type"] == "http" and scope.get("method") == "POST"
                and scope.get("path") in self.paths and not self._authorized(scope)):
            if self.on_reject is not None:
                self.on_reject()
            err = Unauthorized()
            await _send_json(scope, receive, send, err.status_code, error_body(err.code, err.message), err.headers,
                             close=False)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        authorization = x_api_key = None
        for name, value in scope.get("headers", ()):  # the first of each, as Starlette's Headers.get
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"x-api-key" and x_api_key is None:
                x_api_key = value.decode("latin-1")
        return key_matches(bearer_credentials(authorization), x_api_key, self.expected)


class RequestMetricsMiddleware:
    """Observe ``pete_request_duration_seconds{endpoint,status}`` for every HTTP request.

    ``endpoint`` is the request path when it is one of ``endpoints`` and ``"other"`` otherwise (so
    arbitrary paths cannot blow up label cardinality). A request that ends in an exception before
    a response started counts as status 500; one whose client went away first (cancelled, a
    disconnect seen while reading its body, or a connection found closed when writing the answer)
    as 499 (client closed request). Writes to a closed connection are dropped, not raised: no stack
    trace or internal-error count for an answer nobody can read.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Collection[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = 500
        disconnected = False
        start = time.perf_counter()

        async def receive_wrapper() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, disconnected
            if message["type"] == "http.response.start":
                status = message["status"]
            if disconnected:
                return
            try:
                await send(message)
            except (ConnectionError, RuntimeError) as e:
                if isinstance(e, RuntimeError) and "closed" not in str(e):
                    raise  # not a closed connection: a real error
                # The connection is gone (e.g. a pipelined request whose client left: the server marks
                # only the newest request as disconnected). Nobody reads this answer; not an error.
                disconnected = True

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
            if disconnected:
                status = 499  # the client went away before the answer was delivered: not a 5xx
        except asyncio.CancelledError:
            status = 499  # the request task was cancelled (client gone), nothing was sent
            raise
        finally:
            self.metrics.request_duration.labels(endpoint=endpoint, status=str(status)).observe(
                time.perf_counter() - start)
