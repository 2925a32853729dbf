"""Dependencies as ``Annotated`` aliases: the gateway state and the API-key check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.gateway.errors import Unauthorized
from service.gateway.state import Gateway

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                               description="required on inference endpoints when ANYSAT_API_KEYS is set")


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def require_api_key(gateway: GatewayDep, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    keys = gateway.settings.api_keys
    if not keys:
        return
    if key is None:
        raise Unauthorized("X-API-Key", "missing API key header", headers={"WWW-Authenticate": "ApiKey"})
    # Constant-time comparison against every key: no timing hint about which prefix matched.
    if not any(hmac.compare_digest(key.encode(), k.encode()) for k in keys):
        raise Unauthorized("X-API-Key", "invalid API key", headers={"WWW-Authenticate": "ApiKey"})


ApiKey = Depends(require_api_key)
