"""A lean request handler for the JSON POST routes (``JsonBodyRoute``), the common case only.

FastAPI's own handler decodes the body with ``json.loads``, solves the route's dependencies,
validates the decoded objects against the body model, and revalidates and re-encodes the response
model; at a few hundred requests a second that is a large share of the event loop's time, which
the load shedding (429) and every other request share. This handler, for a well-formed request
(a non-empty body, a JSON content type), validates the raw bytes with pydantic's
``TypeAdapter.validate_json`` (one pass in Rust, no Python dict in between), calls the endpoint
with the body model and the request, and writes the returned model with ``TypeAdapter.dump_json``.
Everything else (no or another content type, an empty body, invalid JSON, a body that fails
validation) goes to FastAPI's own handler, so those answers are FastAPI's, unchanged.

The routes are declared as usual (body model parameter, ``response_model``, dependencies), so the
OpenAPI schema is what FastAPI generates from them. Dependencies are not run on the lean path:
the only one allowed is ``app.auth.api_key_schemes``, which only documents the API key (the key
is checked by ``app.middleware.ApiKeyMiddleware`` before the body is read); a route with any
other dependency or parameter keeps FastAPI's handler.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from app.auth import api_key_schemes

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def is_json_content_type(value: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, parameters ignored (what FastAPI
    decodes as JSON)."""
    if not value:
        return False
    mime = value.split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


class JsonBodyRoute(APIRoute):
    """An ``APIRoute`` whose handler takes the lean path (module docstring) for well-formed JSON
    requests when the route has the shape it supports: one body model parameter, the ``Request``,
    a ``response_model``, and no dependency but ``api_key_schemes``. An app whose
    ``state.lean_handlers`` is false (``create_app(lean_handlers=False)``) uses FastAPI's handler
    for every request (tests/test_app_json_route.py compares the two)."""

    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        d = self.dependant
        supported = (len(d.body_params) == 1 and d.request_param_name is not None and self.response_model is not None
                     and not (d.path_params or d.query_params or d.header_params or d.cookie_params)
                     and all(sub.call is api_key_schemes for sub in d.dependencies)
                     and self.status_code in (None, 200))
        if not supported:
            return standard
        body_name, request_name = d.body_params[0].name, d.request_param_name
        body_adapter = TypeAdapter(d.body_params[0].field_info.annotation)
        response_adapter = TypeAdapter(self.response_model)
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if not request.app.state.lean_handlers:
                return await standard(request)
            raw = await request.body()
            if not raw or not is_json_content_type(request.headers.get("content-type")):
                return await standard(request)
            try:
                body = body_adapter.validate_json(raw)
            except ValidationError:
                # FastAPI's answer, exactly: JSON-mode messages differ from the Python-mode ones
                # FastAPI gives (a non-object body: "Input should be an object" against "Input should
                # be a valid dictionary or object to extract fields from"), and a client error is
                # not the case to make fast
                return await standard(request)
            result = await endpoint(**{body_name: body, request_name: request})
            return Response(response_adapter.dump_json(result), media_type="application/json")

        return handler
