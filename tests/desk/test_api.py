"""The intake API: keys, runs, idempotency, every error class, the tenant boundary."""

import json

import jsonschema
import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver

from approvals.models import ApprovalRequest
from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run, StepRun
from desk.openapi import OPENAPI
from tenants.services import create_api_key, revoke_api_key
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance


@pytest.fixture
def harbor_key(harbor):
    return create_api_key(tenant=harbor, name="harbor intake", actor=Actor.system("t"))


@pytest.fixture
def northwind_key(northwind):
    return create_api_key(tenant=northwind, name="northwind", actor=Actor.system("t"))


def post(client, key, body, **headers):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(
        "/api/v1/runs",
        data=data,
        content_type=headers.pop("content_type", "application/json"),
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def get(client, key, url):
    return client.get(url, headers={"Authorization": f"Bearer {key}"})


def matches(schema_name, body):
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": OPENAPI["components"]}
    jsonschema.validate(body, root, cls=jsonschema.Draft202012Validator)
    return True


def written():
    return (Run.objects.count(), StepRun.objects.count(), AuditEvent.objects.count())


class TestRuns:
    def test_start_and_follow_a_run(self, client, harbor_key):
        _, key = harbor_key

        created = post(client, key, {"role": "intake-coordinator", "input": INTAKE_INPUT})

        assert created.status_code == 201
        body = created.json()
        assert matches("RunSummary", body)
        assert body["status"] == "running"  # admitted at once: free capacity
        assert created["Location"] == f"/api/v1/runs/{body['id']}"
        run = Run.objects.get(pk=body["id"])
        assert run.via == Run.Via.API
        assert run.api_key == harbor_key[0]
        assert AuditEvent.objects.get(run_id=run.pk, action="run.started").actor_type == "api_key"

        advance(run.pk)
        detail = get(client, key, body["links"]["self"])

        assert detail.status_code == 200
        data = detail.json()
        assert matches("Run", data)
        assert data["status"] == "waiting_approval"
        assert [s["status"] for s in data["steps"]] == [
            "completed",
            "completed",
            "waiting_approval",
            "pending",
        ]
        assert "lookup" not in data["outputs"]  # client records stay inside
        assert data["outputs"]["classify"]["category"] in {
            "new_matter",
            "existing_matter",
            "billing",
            "other",
        }
        pending = ApprovalRequest.objects.get(run=run)
        assert data["pending_approval"]["id"] == pending.pk
        assert data["pending_approval"]["step"] == "draft"

    def test_the_same_idempotency_key_and_body_answer_with_the_same_run(self, client, harbor_key):
        _, key = harbor_key
        body = {"role": "intake-coordinator", "input": INTAKE_INPUT}

        first = post(client, key, body, **{"Idempotency-Key": "msg-42"})
        again = post(client, key, body, **{"Idempotency-Key": "msg-42"})

        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        assert Run.objects.count() == 1

    def test_the_same_idempotency_key_with_another_body_is_a_conflict(self, client, harbor_key):
        _, key = harbor_key
        post(
            client,
            key,
            {"role": "intake-coordinator", "input": INTAKE_INPUT},
            **{"Idempotency-Key": "k"},
        )
        before = written()

        response = post(
            client,
            key,
            {"role": "intake-coordinator", "input": {**INTAKE_INPUT, "subject": "Other"}},
            **{"Idempotency-Key": "k"},
        )

        assert response.status_code == 409
        assert response.json()["error"]["code"] == "idempotency_conflict"
        assert written() == before

    def test_roles_lists_what_the_key_may_start(self, client, harbor):
        _, key = create_api_key(
            tenant=harbor, name="r", role_slugs=["client-follow-up"], actor=Actor.system("t")
        )

        response = get(client, key, "/api/v1/roles")

        assert matches("RoleList", response.json())
        assert [r["slug"] for r in response.json()["roles"]] == ["client-follow-up"]
        refused = post(client, key, {"role": "intake-coordinator", "input": INTAKE_INPUT})
        assert refused.status_code == 404


class TestErrors:
    @pytest.mark.parametrize(
        ("body", "content_type", "status", "code"),
        [
            ("{not json", "application/json", 400, "malformed_json"),
            ("role=x", "application/x-www-form-urlencoded", 400, "unsupported_content_type"),
            ([1, 2], "application/json", 422, "invalid_request"),
            ({"input": {}}, "application/json", 422, "invalid_request"),
            ({"role": "nobody", "input": {}}, "application/json", 404, "role_not_found"),
            (
                {"role": "month-end-reporter", "input": {}},
                "application/json",
                404,
                "role_not_found",
            ),
            (
                {"role": "intake-coordinator", "input": {"subject": 1}},
                "application/json",
                422,
                "invalid_input",
            ),
        ],
    )
    def test_bad_requests_get_a_json_error_and_write_nothing(
        self, client, harbor_key, body, content_type, status, code
    ):
        before = written()

        response = post(client, harbor_key[1], body, content_type=content_type)

        assert response.status_code == status
        assert response.json()["error"]["code"] == code
        assert matches("Error", response.json())
        assert written() == before

    def test_schema_errors_say_which_field_and_why(self, client, harbor_key):
        response = post(
            client,
            harbor_key[1],
            {"role": "intake-coordinator", "input": {**INTAKE_INPUT, "subject": 7}},
        )

        assert response.json()["error"]["details"] == [
            {"field": "subject", "message": "7 is not of type 'string'"}
        ]

    def test_an_oversized_body_is_refused(self, client, harbor_key, settings):
        settings.DESK_API_MAX_BODY_BYTES = 100
        before = written()

        response = post(
            client, harbor_key[1], {"role": "intake-coordinator", "input": {"body": "x" * 200}}
        )

        assert response.status_code == 413
        assert written() == before

    @pytest.mark.parametrize("header", [None, "Bearer", "Bearer adk_nothing_here", "Basic abc"])
    def test_missing_or_unknown_keys_are_401(self, client, harbor, header):
        before = written()
        headers = {"Authorization": header} if header else {}

        response = client.post(
            "/api/v1/runs", data="{}", content_type="application/json", headers=headers
        )

        assert response.status_code == 401
        assert written() == before

    def test_a_revoked_key_is_401(self, client, harbor_key):
        api_key, key = harbor_key
        revoke_api_key(api_key=api_key, actor=Actor.system("t"))
        before = written()

        response = post(client, key, {"role": "intake-coordinator", "input": INTAKE_INPUT})

        assert response.status_code == 401
        assert written() == before

    def test_past_the_rate_limit_is_429_with_retry_after(self, client, harbor):
        _, key = create_api_key(
            tenant=harbor, name="slow", rate_limit_per_minute=2, actor=Actor.system("t")
        )
        get(client, key, "/api/v1/roles")
        get(client, key, "/api/v1/roles")
        before = written()

        response = post(client, key, {"role": "intake-coordinator", "input": INTAKE_INPUT})

        assert response.status_code == 429
        assert 1 <= int(response["Retry-After"]) <= 60
        assert written() == before

    def test_a_wrong_method_is_405(self, client, harbor_key):
        response = client.delete(
            "/api/v1/runs", headers={"Authorization": f"Bearer {harbor_key[1]}"}
        )

        assert response.status_code == 405
        assert response["Allow"] == "POST"


def api_routes():
    """Every route under /api/v1/, from the URL configuration itself."""
    found = []

    def walk(patterns, prefix):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                found.append((prefix + str(pattern.pattern), pattern.name))

    walk(get_resolver().url_patterns, "/")
    return [(route, name) for route, name in found if route.startswith("/api/v1/")]


class TestTenantBoundary:
    def test_every_api_route_is_swept(self):
        names = {name for _, name in api_routes()}

        assert names == {"runs", "run-detail", "roles", "openapi", "not-found"}

    def test_another_tenants_key_sees_none_of_its_runs_roles_or_approvals(
        self, client, harbor_key, northwind_key
    ):
        created = post(client, harbor_key[1], {"role": "intake-coordinator", "input": INTAKE_INPUT})
        run_id = created.json()["id"]
        advance(run_id)
        other = northwind_key[1]
        before = written()

        detail = get(client, other, f"/api/v1/runs/{run_id}")
        roles = get(client, other, "/api/v1/roles")
        start = post(client, other, {"role": "intake-coordinator", "input": INTAKE_INPUT})
        harbor_only = post(
            client,
            other,
            {"role": "intake-coordinator", "input": INTAKE_INPUT},
            **{"Idempotency-Key": "x"},
        )

        assert detail.status_code == 404
        assert detail.json()["error"]["code"] == "not_found"
        assert "harbor" not in roles.content.decode().lower()
        # Northwind's own intake role starts a Northwind run, never touching Harbor's.
        assert start.status_code == 201
        assert Run.objects.get(pk=start.json()["id"]).tenant.slug == "northwind-accounting"
        assert harbor_only.status_code == 201
        assert written()[0] == before[0] + 2

    def test_the_openapi_document_describes_every_route(self, client):
        documented = set(client.get("/api/v1/openapi.json").json()["paths"])

        for route, name in api_routes():
            if name == "not-found":
                continue
            path = route.replace("<int:run_id>", "{run_id}").rstrip("$")
            assert path in documented, f"{route} is not in the OpenAPI document"
        jsonschema.Draft202012Validator.check_schema(
            {"$ref": "#/components/schemas/Run", "components": OPENAPI["components"]}
        )


class TestCreateApiKeyCommand:
    def test_prints_a_working_key_on_one_line(self, client, harbor, capsys):
        call_command("create_api_key", "--tenant", "harbor-legal", "--roles", "intake-coordinator")

        key = capsys.readouterr().out.strip()
        assert "\n" not in key
        response = get(client, key, "/api/v1/roles")
        assert [r["slug"] for r in response.json()["roles"]] == ["intake-coordinator"]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--tenant", "nowhere"], "No tenant 'nowhere'."),
            (
                ["--tenant", "harbor-legal", "--roles", "ghost"],
                "No such role in harbor-legal: ghost.",
            ),
        ],
    )
    def test_bad_arguments_fail_with_a_message(self, harbor, args, message):
        from django.core.management.base import CommandError

        from tenants.models import ApiKey

        with pytest.raises(CommandError, match=message):
            call_command("create_api_key", *args)

        assert ApiKey.objects.count() == 0
