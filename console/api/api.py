"""The JSON API under /api/v1/, described by OpenAPI at /api/v1/openapi.json: every operation
with its request and response schemas and the statuses it can answer (errors mapped in
console.api.errors)."""

from __future__ import annotations

from ninja import NinjaAPI

from console.api import admin, agent, agent_live, alerts, deadletters, errors, live, patterns, sagas, system, trace_search, traces
from console.api.auth import AUTH, signed_in_or_token

api = NinjaAPI(title="Flowscope", version="1", description="Dead letters, sagas, traces and flows.", auth=AUTH, docs_url=None, docs_decorator=signed_in_or_token, urls_namespace="api")
for module in (deadletters, sagas, trace_search, traces, system, agent, agent_live, live, alerts, patterns):
    api.add_router("/", module.router)
api.add_router("/admin", admin.router)
errors.install(api)
