"""App factory and console entry point.

Run with ``pete-serve`` (``app.cli:main``), or ``uvicorn --factory app.main:create_app``.
``app.main:app`` also exists for tools that want an app object; building it reads settings from
the environment but loads nothing: the model is loaded by the lifespan, at server start-up.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import ApiKeyMiddleware, BodySizeLimitMiddleware, LoadSheddingMiddleware, RequestMetricsMiddleware
from app.routes import MIN_QUEUE_ITEMS, route_paths, router
from app.runner import RunnerFactory
from app.service import Service
from app.settings import Settings

__version__ = "0.1.0"

DESCRIPTION = """Sentence similarity, NLI and sentence embeddings from a PETE sentence encoder.

Requests are micro-batched: concurrent requests share forward passes, without changing results.
POST endpoints need an API key when `PETE_API_KEY` is set (`Authorization: Bearer <key>` or
`X-API-Key`); probes, /info and /metrics are open.
"""


def configure_logging(level: str) -> None:
    """Send the service's ``pete.*`` loggers to stderr at ``level`` unless logging is set up already
    (uvicorn configures only its own loggers)."""
    logger = logging.getLogger("pete")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)


def create_app(settings: Settings | None = None, *, runner: RunnerFactory | None = None,
               lean_handlers: bool = True) -> FastAPI:
    """Build the FastAPI app; cheap: nothing is loaded until the lifespan starts.

    Args:
        settings: defaults to ``Settings()`` (from ``PETE_*`` environment variables).
        runner: builds the model runner (``app.runner``: the seam for backends, baselines and fault
            injection); default: the backend ``settings.backend`` names (``app.service.default_runner``).
        lean_handlers: the POST routes validate and answer well-formed JSON requests themselves
            (``app.json_route``); False: FastAPI's handler for every request (same answers, slower).
    Raises:
        pydantic.ValidationError: invalid settings in the environment.
    """
    settings = settings if settings is not None else Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()
    service = Service(settings, metrics, runner=runner)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            metrics.worker_exit()

    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline package (under
    # /static-offline-docs), not from a CDN: the pages work without internet access.
    # No trailing-slash redirects: a redirect's Location would echo the client's Host header
    # (an open redirect); /similarity/ is simply not a route (404).
    app = FastAPIOffline(title="pete-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                         redirect_slashes=False)
    app.state.service = service
    app.state.lean_handlers = lean_handlers
    install_error_handlers(app, metrics, settings.retry_after_s)
    app.include_router(router)
    # Middleware added first runs innermost: metrics -> load shedding (429) -> body limits (413, 408)
    # -> API key (401) -> the routes.
    app.add_middleware(ApiKeyMiddleware, paths=route_paths("POST"),
                       api_key=settings.api_key.get_secret_value() if settings.api_key else None,
                       on_reject=lambda: metrics.rejected.labels(reason="unauthorized").inc())
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s,
                       on_reject=lambda reason: metrics.rejected.labels(reason=reason).inc())
    app.add_middleware(LoadSheddingMiddleware,
                       admits=lambda items, cost: service.batcher.admits(items, cost) if service.ready else None,
                       max_request_cost=settings.max_request_cost,
                       min_items=MIN_QUEUE_ITEMS, max_body_bytes=settings.max_body_bytes,
                       retry_after_s=settings.retry_after_s,
                       on_reject=lambda: metrics.rejected.labels(reason="queue_full").inc())
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, endpoints=route_paths())
    return app


app = create_app()

