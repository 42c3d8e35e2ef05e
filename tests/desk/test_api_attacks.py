"""Attacks on the intake API's contract: every malformed request is a 4xx JSON error of the
documented shape that writes nothing, and a request without an Idempotency-Key is never
matched with an earlier one."""

import json

import jsonschema
import pytest

from audit.models import AuditEvent
from audit.services import Actor
from desk.models import Run, StepRun
from desk.openapi import OPENAPI
from tenants.safe_json import MAX_DEPTH, MAX_NUMBER
from tenants.services import create_api_key
from tests.conftest import INTAKE_INPUT

ROLE = "intake-coordinator"


@pytest.fixture
def key(harbor):
    return create_api_key(tenant=harbor, name="attacks", actor=Actor.system("t"))[1]


def post(client, key, body, **headers):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(
        "/api/v1/runs",
        data=data,
        content_type=headers.pop("content_type", "application/json"),
        headers={"Authorization": f"Bearer {key}", **headers},
    )


def written():
    return (Run.objects.count(), StepRun.objects.count(), AuditEvent.objects.count())


def documented_error(response, status: int, code: str) -> bool:
    """The response is `status` with the documented JSON error of `code`."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    root = {"$ref": "#/components/schemas/Error", "components": OPENAPI["components"]}
    jsonschema.validate(body, root, cls=jsonschema.Draft202012Validator)
    assert body["error"]["code"] == code
    assert str(status) in OPENAPI["paths"]["/api/v1/runs"]["post"]["responses"]
    return True


def nested(depth: int) -> str:
    """`{"role": ROLE, "input": {"deep": [[...]]}}` with `depth` containers in all."""
    return (
        '{"role": "' + ROLE + '", "input": {"deep": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}}"
    )


class TestIdempotency:
    def test_a_second_keyless_post_starts_a_second_run(self, client, key):
        body = {"role": ROLE, "input": INTAKE_INPUT}

        first = post(client, key, body)
        second = post(client, key, body)

        assert (first.status_code, second.status_code) == (201, 201)
        assert first.json()["id"] != second.json()["id"]
        assert Run.objects.count() == 2
        assert set(Run.objects.values_list("idempotency_key", flat=True)) == {""}

    def test_a_keyless_post_with_another_input_is_not_a_conflict(self, client, key):
        post(client, key, {"role": ROLE, "input": INTAKE_INPUT})

        other = post(client, key, {"role": ROLE, "input": {**INTAKE_INPUT, "subject": "Other"}})

        assert other.status_code == 201
        assert Run.objects.count() == 2

    def test_a_blank_idempotency_key_is_no_key(self, client, key):
        body = {"role": ROLE, "input": INTAKE_INPUT}

        first = post(client, key, body, **{"Idempotency-Key": "   "})
        second = post(client, key, body, **{"Idempotency-Key": ""})

        assert (first.status_code, second.status_code) == (201, 201)
        assert Run.objects.count() == 2

    def test_invalid_input_after_a_keyless_run_is_a_422_not_a_conflict(self, client, key):
        post(client, key, {"role": ROLE, "input": INTAKE_INPUT})
        before = written()

        response = post(client, key, {"role": ROLE, "input": {"subject": 42}})

        assert documented_error(response, 422, "invalid_input")
        assert written() == before

    def test_invalid_input_under_a_used_key_is_a_422_not_a_conflict(self, client, key):
        post(client, key, {"role": ROLE, "input": INTAKE_INPUT}, **{"Idempotency-Key": "k-1"})
        before = written()

        response = post(
            client, key, {"role": ROLE, "input": {"subject": 42}}, **{"Idempotency-Key": "k-1"}
        )

        assert documented_error(response, 422, "invalid_input")
        assert written() == before

    @pytest.mark.parametrize(
        "header",
        ["k\x00ey", "x" * 201, "\x7f", "ключ".encode().decode("latin-1"), "tab\tinside"],
        ids=["nul", "too-long", "del", "non-ascii", "tab"],
    )
    def test_a_nul_or_unprintable_idempotency_key_is_a_400(self, client, key, header):
        before = written()

        response = post(
            client, key, {"role": ROLE, "input": INTAKE_INPUT}, **{"Idempotency-Key": header}
        )

        assert documented_error(response, 400, "invalid_idempotency_key")
        assert written() == before


UNSAFE_BODIES = {
    "nul-in-a-value": {"role": ROLE, "input": {**INTAKE_INPUT, "body": "a\x00b"}},
    "nul-in-the-e-mail": {"role": ROLE, "input": {**INTAKE_INPUT, "from_email": "a\x00@x.org"}},
    "nul-in-a-key": {"role": ROLE, "input": {**INTAKE_INPUT, "\x00": "x"}},
    "nul-in-the-role": {"role": "intake\x00coordinator", "input": INTAKE_INPUT},
    "surrogate-in-a-value": {"role": ROLE, "input": {**INTAKE_INPUT, "body": "a\ud800b"}},
    "surrogate-in-the-e-mail": {
        "role": ROLE,
        "input": {**INTAKE_INPUT, "from_email": "\udfff@x.org"},
    },
    "surrogate-in-a-key": {"role": ROLE, "input": {**INTAKE_INPUT, "\ud800": "x"}},
    "surrogate-in-the-role": {"role": "\ud800", "input": INTAKE_INPUT},
    "nul-in-an-unknown-field": {"role": ROLE, "input": INTAKE_INPUT, "x\x00": 1},
}


@pytest.mark.parametrize("token", ["adk_\x00_x", "adk_ab\x00cd_x", "adk_\x7f_x", "adk_\xe9_x"])
def test_a_nul_or_unprintable_bearer_key_is_a_401_without_a_lookup(client, harbor, token):
    # On PostgreSQL a NUL in the prefix lookup was a DataError (a 500).
    before = written()

    response = post(client, token, {"role": ROLE, "input": INTAKE_INPUT})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"
    assert written() == before


class TestUnsafeJSON:
    @pytest.mark.parametrize("body", UNSAFE_BODIES.values(), ids=UNSAFE_BODIES.keys())
    def test_a_nul_byte_or_lone_surrogate_anywhere_is_a_422_and_writes_nothing(
        self, client, key, body
    ):
        before = written()

        response = post(client, key, body)  # json.dumps sends them as \u0000 and \ud800

        assert documented_error(response, 422, "unsafe_json")
        assert "\x00" not in response.json()["error"]["message"]
        assert written() == before

    def test_a_nul_byte_in_the_input_is_a_422_and_writes_nothing(self, client, key):
        before = written()

        response = post(client, key, {"role": ROLE, "input": {**INTAKE_INPUT, "body": "\x00"}})

        assert documented_error(response, 422, "unsafe_json")
        assert response.json()["error"]["details"] == [
            {"field": "input.body", "message": "Contains a NUL character (\\u0000)."}
        ]
        assert written() == before

    def test_json_nested_5000_deep_is_refused(self, client, key):
        body = nested(5000)
        assert len(body) < 64 * 1024
        before = written()

        response = post(client, key, body)

        assert documented_error(response, 422, "unsafe_json")
        assert written() == before

    def test_json_nested_one_past_the_limit_is_refused_and_at_the_limit_accepted(
        self, client, harbor, key
    ):
        from roles.models import Role
        from roles.services import create_role, create_role_version
        from tests.publishing import publish

        role = create_role(
            tenant=harbor, slug="free-form", name="Free form", actor=Actor.system("t")
        )
        version = create_role_version(
            role=role,
            definition={
                "input_schema": {"type": "object"},
                "steps": [{"key": "c", "kind": "review", "category": "internal"}],
            },
            actor=Actor.system("t"),
        )
        publish(version)
        assert Role.objects.get(pk=role.pk).active_version_id == version.pk
        deep, too_deep = (
            text.replace(ROLE, "free-form") for text in (nested(MAX_DEPTH), nested(MAX_DEPTH + 1))
        )
        before = written()

        refused = post(client, key, too_deep)

        assert documented_error(refused, 422, "unsafe_json")
        assert written() == before
        assert post(client, key, deep).status_code == 201

    @pytest.mark.parametrize(
        "number",
        ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", str(MAX_NUMBER + 1), "9" * 5000],
    )
    def test_a_number_no_database_stores_is_a_422_and_writes_nothing(self, client, key, number):
        body = json.dumps({"role": ROLE, "input": {**INTAKE_INPUT, "n": 0}}).replace(
            '"n": 0', f'"n": {number}'
        )
        before = written()

        response = post(client, key, body)

        assert documented_error(response, 422, "unsafe_json")
        assert written() == before


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("body", "content_type", "status", "code"),
        [
            (b'{"role": "\xff"}', "application/json", 400, "malformed_json"),
            (b" ", "application/json", 400, "malformed_json"),
            ('{"role": 5, "input": []}', "application/json", 422, "invalid_request"),
            ('"just a string"', "application/json", 422, "invalid_request"),
            ("null", "application/json", 422, "invalid_request"),
            ('{"role": "", "input": {}}', "application/json", 422, "invalid_request"),
            ("{}", "text/plain", 400, "unsupported_content_type"),
            ("{}", "multipart/form-data; boundary=x", 400, "unsupported_content_type"),
        ],
    )
    def test_a_malformed_body_is_a_documented_4xx_and_writes_nothing(
        self, client, key, body, content_type, status, code
    ):
        before = written()

        response = post(client, key, body, content_type=content_type)

        assert documented_error(response, status, code)
        assert written() == before

    def test_an_empty_role_is_refused_by_the_document_as_by_the_server(self, client, key):
        body = {"role": "", "input": {}}
        root = {"$ref": "#/components/schemas/StartRun", "components": OPENAPI["components"]}

        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, root, cls=jsonschema.Draft202012Validator)
        assert documented_error(post(client, key, body), 422, "invalid_request")

    def test_an_oversized_body_is_a_413_whatever_its_content_length_says(self, client, key):
        body = json.dumps({"role": ROLE, "input": {**INTAKE_INPUT, "body": "x" * 70_000}})
        before = written()

        response = post(client, key, body)

        assert documented_error(response, 413, "payload_too_large")
        assert written() == before

    def test_a_run_id_beyond_what_the_database_stores_is_a_404(self, client, key):
        response = client.get(f"/api/v1/runs/{10**30}", headers={"Authorization": f"Bearer {key}"})

        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"

    @pytest.mark.parametrize("method", ["post", "put", "delete"])
    def test_the_openapi_document_answers_other_methods_with_a_json_405(self, client, method):
        response = getattr(client, method)("/api/v1/openapi.json")

        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"
        assert response["Allow"] == "GET, HEAD"
