"""Optional API key for the POST endpoints.

When ``Settings.api_key`` is set, a request must carry it as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; keys are compared in constant time (``hmac.compare_digest``), by
``app.middleware.ApiKeyMiddleware`` before the body is read. /healthz,
/readyz, /info and /metrics stay open on purpose: probes and scrapers must not need the key, and
they expose nothing a client could not learn from a response (model name, sizes, counters).
"""

from __future__ import annotations

import hmac

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` (when an API key is set)")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>` (when an API key is set)")


def bearer_credentials(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization`` header whose scheme is Bearer (any case), stripped;
    None without one (as ``HTTPBearer(auto_error=False)`` reads it)."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.partition(" ")
    credentials = credentials.strip()
    return credentials if scheme and credentials and scheme.lower() == "bearer" else None


def key_matches(bearer: str | None, x_api_key: str | None, expected: bytes) -> bool:
    """Whether a presented key equals ``expected`` (UTF-8 bytes of the configured key), compared in
    constant time: the Bearer credentials (``bearer_credentials``) and the ``X-API-Key`` header,
    each when present and non-empty; every presented key is compared, so timing does not tell which
    one failed."""
    ok = False
    for key in (bearer, x_api_key):
        if key:
            ok |= hmac.compare_digest(key.encode(), expected)
    return ok


async def api_key_schemes(
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_header),
) -> None:
    """FastAPI dependency of the POST routes that only declares the two ways to send the key in the
    OpenAPI schema (``HTTPBearer``, ``APIKeyHeader``). The key itself is checked before the body is
    read, by ``app.middleware.ApiKeyMiddleware`` with ``key_matches``."""
