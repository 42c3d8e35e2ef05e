"""The intake API (`/api/v1/`): per-tenant bearer keys, JSON in and out.

Every error is `{"error": {"code", "message", "details"}}`; anything of another tenant is a
404, never a 403. Handlers parse, authenticate, make one service call and render.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt

from approvals.models import ApprovalRequest
from audit.services import Actor
from desk.models import Run, StepRun
from desk.openapi import OPENAPI
from desk.services import RunError, start_run_once
from roles.models import Role
from tenants import rls, safe_json
from tenants.scoping import scope_to_tenant
from tenants.services import authenticate_api_key, count_api_request

RUN_ERROR_STATUS = {
    "invalid_input": 422,
    "role_not_found": 404,
    "no_active_version": 409,
    "tenant_inactive": 403,
    "idempotency_conflict": 409,
}
HIDDEN_OUTPUT_CATEGORIES = {"data_access"}
IDEMPOTENCY_KEY_MAX_LENGTH = 200  # Run.idempotency_key's max_length
PRINTABLE_RE = re.compile(r"[ -~]*")  # printable ASCII: bearer keys, Idempotency-Key


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details if details is not None else []
        self.headers = headers or {}


def error_response(error: ApiError) -> JsonResponse:
    response = JsonResponse(
        {"error": {"code": error.code, "message": error.message, "details": error.details}},
        status=error.status,
    )
    for name, value in error.headers.items():
        response[name] = value
    return response


def api_endpoint(methods: tuple[str, ...]) -> Callable:
    """Authenticate the bearer key, apply its rate limit, and render ApiErrors as JSON."""

    def decorate(view):
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            try:
                if request.method not in methods:
                    raise ApiError(
                        405,
                        "method_not_allowed",
                        f"Use {' or '.join(methods)}.",
                        headers={"Allow": ", ".join(methods)},
                    )
                header = request.headers.get("Authorization", "")
                if not header.startswith("Bearer "):
                    raise ApiError(401, "unauthenticated", "Send 'Authorization: Bearer <key>'.")
                token = header[len("Bearer ") :].strip()
                # A key is printable ASCII: anything else (a NUL, which PostgreSQL refuses in a
                # query) is no key, without looking it up.
                if not PRINTABLE_RE.fullmatch(token):
                    raise ApiError(401, "unauthenticated", "Unknown or revoked API key.")
                # The key is the proof the database checks for each of its tenant contexts.
                with rls.acting_for(api_key=token):
                    api_key = authenticate_api_key(token)
                    if api_key is None:
                        raise ApiError(401, "unauthenticated", "Unknown or revoked API key.")
                    allowed, retry_after = count_api_request(api_key=api_key)
                    if not allowed:
                        raise ApiError(
                            429,
                            "rate_limited",
                            f"More than {api_key.rate_limit_per_minute} requests this minute.",
                            headers={"Retry-After": str(retry_after)},
                        )
                    with rls.tenant_context(api_key.tenant_id):
                        return view(request, api_key, *args, **kwargs)
            except ApiError as error:
                return error_response(error)

        return wrapper

    return decorate


def _json_body(request: HttpRequest) -> Any:
    limit = settings.DESK_API_MAX_BODY_BYTES
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    if request.content_type != "application/json":
        raise ApiError(400, "unsupported_content_type", "Send the body as application/json.")
    body = request.body
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"The body may be at most {limit} bytes.")
    try:
        return safe_json.loads(body)
    except safe_json.UnsafeJSON as exc:
        raise ApiError(
            422, "unsafe_json", f"The body is not safe JSON: {exc}", [exc.as_detail()]
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from None


def _idempotency_key(request: HttpRequest) -> str:
    """The Idempotency-Key header, stripped; "" when absent or blank (no idempotency)."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if len(key) > IDEMPOTENCY_KEY_MAX_LENGTH or not PRINTABLE_RE.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key is at most {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters.",
        )
    return key


def _run_links(run: Run) -> dict[str, str]:
    return {"self": reverse("api:run-detail", args=[run.pk])}


def _run_summary(run: Run) -> dict[str, Any]:
    return {
        "id": run.pk,
        "status": run.status,
        "role": run.role.slug,
        "version": run.role_version.number,
        "created_at": run.created_at.isoformat(),
        "links": _run_links(run),
    }


def _iso(value) -> str | None:
    return value.isoformat() if value else None


@api_endpoint(methods=("POST",))
def runs_collection(request: HttpRequest, api_key):
    idempotency_key = _idempotency_key(request)
    body = _json_body(request)
    details = []
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "The body must be a JSON object.")
    if not isinstance(body.get("role"), str) or not body["role"]:
        details.append({"field": "role", "message": "Required: the slug of a role."})
    if not isinstance(body.get("input"), dict):
        details.append({"field": "input", "message": "Required: a JSON object."})
    for name in sorted(set(body) - {"role", "input"}):
        details.append({"field": name, "message": "Unknown field."})
    if details:
        raise ApiError(422, "invalid_request", "The request body is incomplete.", details)
    role = scope_to_tenant(Role.objects.all(), api_key.tenant).filter(slug=body["role"]).first()
    if role is None or not api_key.may_start(role.slug):
        raise ApiError(404, "role_not_found", f"No role '{body['role']}' for this key.")
    try:
        run, created = start_run_once(
            tenant=api_key.tenant,
            role=role,
            input=body["input"],
            actor=Actor.for_api_key(f"api-key {api_key.prefix} ({api_key.name})"),
            via=Run.Via.API,
            idempotency_key=idempotency_key,
            api_key=api_key,
        )
    except RunError as exc:
        raise ApiError(
            RUN_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, exc.details
        ) from None
    response = JsonResponse(_run_summary(run), status=201 if created else 200)
    response["Location"] = _run_links(run)["self"]
    return response


@api_endpoint(methods=("GET",))
def run_detail(request: HttpRequest, api_key, run_id: int):
    run = (
        scope_to_tenant(Run.objects.all(), api_key.tenant)
        .select_related("role", "role_version")
        .filter(pk=run_id)
        .first()
    )
    if run is None:
        raise ApiError(404, "not_found", f"No run {run_id}.")
    steps = list(run.steps.order_by("index"))
    pending = (
        ApprovalRequest.objects.filter(run=run, status=ApprovalRequest.Status.PENDING)
        .select_related("step")
        .first()
    )
    body = {
        **_run_summary(run),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "error": run.error,
        "usage": {"prompt_tokens": run.prompt_tokens, "completion_tokens": run.completion_tokens},
        "steps": [
            {
                "key": s.key,
                "kind": s.kind,
                "category": s.category,
                "status": s.status,
                "attempts": s.attempts,
                "started_at": _iso(s.started_at),
                "finished_at": _iso(s.finished_at),
            }
            for s in steps
        ],
        # Client records read by data-access steps stay inside AgentDesk.
        "outputs": {
            s.key: s.output
            for s in steps
            if s.status == StepRun.Status.COMPLETED and s.category not in HIDDEN_OUTPUT_CATEGORIES
        },
        "pending_approval": None
        if pending is None
        else {
            "id": pending.pk,
            "step": pending.step.key,
            "category": pending.category,
            "required_approvals": pending.required_approvals,
            "approvals": pending.approvals_count(),
            "due_at": pending.due_at.isoformat(),
        },
    }
    return JsonResponse(body)


@api_endpoint(methods=("GET",))
def roles_list(request: HttpRequest, api_key):
    roles = (
        scope_to_tenant(Role.objects.all(), api_key.tenant)
        .filter(active_version__isnull=False)
        .select_related("active_version")
    )
    if api_key.role_slugs:
        roles = roles.filter(slug__in=api_key.role_slugs)
    return JsonResponse(
        {
            "roles": [
                {
                    "slug": role.slug,
                    "name": role.name,
                    "purpose": role.purpose,
                    "input_schema": role.active_input_schema,
                    "target_turnaround_minutes": role.active_version.target_turnaround_minutes,
                }
                for role in roles.order_by("slug")
            ]
        }
    )


@csrf_exempt
def openapi_document(request: HttpRequest):
    if request.method not in ("GET", "HEAD"):
        return error_response(
            ApiError(405, "method_not_allowed", "Use GET.", headers={"Allow": "GET, HEAD"})
        )
    return JsonResponse(OPENAPI)


@csrf_exempt
def not_found(request: HttpRequest, path: str = ""):
    return error_response(ApiError(404, "not_found", "No such endpoint."))
