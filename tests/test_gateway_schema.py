"""Schemathesis against the gateway's own OpenAPI schema (a bounded number of generated requests per
operation, every encoding the schema declares), sent over HTTP to the real service: never a 5xx."""

from __future__ import annotations

import schemathesis
from gateway_fixtures import Service
from hypothesis import HealthCheck, settings

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings

# The schema does not depend on the server's state: build it from an app that never connects anywhere.
_SPEC = create_app(GatewaySettings(redis_url="redis://127.0.0.1:1/0", _env_file=None)).openapi()  # type: ignore[call-arg]
schema = schemathesis.openapi.from_dict(_SPEC)


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much, HealthCheck.data_too_large])
def test_no_5xx(case: schemathesis.Case, gateway_service: Service) -> None:
    response = case.call(base_url=gateway_service.url, timeout=60)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])
