from __future__ import annotations

import uuid
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router

from console.api.answers import SagaDetail, SagaSummary
from console.api.auth import need
from console.api.errors import answers
from console.api.schemas import QueryText
from console.models import Role
from console.presenters import saga_detail, saga_summary
from flows.models import SagaInstance
from flows.operate.selectors import sagas_page

router = Router(tags=["sagas"])


@router.get("/sagas", response=answers(200, list[SagaSummary], 422))
def list_sagas(request: HttpRequest, saga_type: QueryText = "", state: SagaInstance.State | None = None, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    """Newest first, by type and state, with age and current step."""
    need(request, Role.VIEWER)
    return [saga_summary(s) for s in sagas_page(saga_type=saga_type, state=state.value if state else "", limit=limit)]


@router.get("/sagas/{saga_id}", response=answers(200, SagaDetail, 404, 422))
def get_saga(request: HttpRequest, saga_id: uuid.UUID) -> dict[str, Any]:
    """Plan against actual: each declared step's action and compensation with outcome, timing,
    attempts and error; the saga's data (redacted); its trace id and dead letters."""
    need(request, Role.VIEWER)
    return saga_detail(get_object_or_404(SagaInstance, pk=saga_id))
