"""Optional API key for the POST endpoints.

When ``Settings.api_key`` is set, a request must carry it as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; keys are compared in constant time (``hmac.compare_digest``). /healthz,
/readyz, /info and /metrics stay open on purpose: probes and scrapers must not need the key, and
they expose nothing a client could not learn from a response (model name, sizes, counters).
"""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` (when an API key is set)")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>` (when an API key is set)")


async def require_api_key(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    header_key: str | None = Security(_header),
) -> None:
    """FastAPI dependency: pass when no key is configured or a presented key matches.

    Raises:
        Unauthorized: a key is configured and none of the presented ones matches (401).
    """
    secret = request.app.state.service.settings.api_key
    if secret is None:
        return
    expected = secret.get_secret_value().encode()
    presented = [k for k in (bearer.credentials if bearer else None, header_key) if k]
    ok = False
    for key in presented:  # check every presented key so timing does not tell which one failed
        ok |= hmac.compare_digest(key.encode(), expected)
    if not ok:
        raise Unauthorized()
