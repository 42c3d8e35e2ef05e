"""Production settings that refuse to be unsafe (desk/settings.py "Production security").

The start-up refusals run `manage.py check` in a child process with a production
environment (DESK_DEBUG off) and nothing else of this test run's: the process must exit
non-zero naming the variable. The rest asks the test client what a browser is sent.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.sessions.models import Session
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from audit.models import AuditEvent
from desk import secret_key
from desk.session_lifetime import STARTED_AT
from tests.admin.conftest import parked
from tests.conftest import pass_second_factor

BASE_DIR = Path(settings.BASE_DIR)
A_REAL_KEY = secrets.token_urlsafe(50)


def production_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    """A clean environment for a child: production (DESK_DEBUG off) plus `variables`."""
    import os

    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "DESK_VAR_DIR": str(tmp_path / "var"),
        "PYTHONDONTWRITEBYTECODE": "1",
        **variables,
    }


def manage(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), *arguments],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def settings_of(env: dict[str, str], *names: str) -> dict:
    """The named settings as a child process with `env` evaluates them."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env={**env, "DJANGO_SETTINGS_MODULE": "desk.settings"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def assert_refuses(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: ")
    for text in expected:
        assert text in last_line
    assert "System check identified" not in result.stdout  # it never got as far as starting


# --- the secret key -----------------------------------------------------------------------


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    unset = manage("check", env=production_env(tmp_path))
    empty = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY=""))
    blank = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY="   "))

    assert_refuses(unset, "DESK_SECRET_KEY is not set", "refuses to start", "DESK_DEBUG")
    assert_refuses(empty, "DESK_SECRET_KEY is empty")
    assert_refuses(blank, "DESK_SECRET_KEY is empty")


def test_production_refuses_to_start_with_the_development_key(tmp_path):
    result = manage(
        "check", env=production_env(tmp_path, DESK_SECRET_KEY=secret_key.DEVELOPMENT_KEY)
    )

    assert_refuses(result, "DESK_SECRET_KEY is the public development key")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (secrets.token_urlsafe(30)[:30], "is too short (30 characters"),
        ("ab" * 40, "has too few distinct characters (2"),
        ("django-insecure-" + secrets.token_urlsafe(50), "is a 'django-insecure-' key"),
    ],
    ids=["short", "few-distinct-characters", "django-insecure-prefix"],
)
def test_production_refuses_to_start_with_a_weak_secret_key(tmp_path, key, reason):
    result = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY=key))

    assert_refuses(result, f"DESK_SECRET_KEY {reason}")


def test_production_refuses_to_start_with_a_weak_or_missing_key_file(tmp_path):
    weak = tmp_path / "weak.key"
    weak.write_text("short\n")
    missing = tmp_path / "missing.key"

    from_weak = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY_FILE=str(weak)))
    from_missing = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY_FILE=str(missing)))

    assert_refuses(from_weak, f"DESK_SECRET_KEY_FILE ({weak}) is too short")
    assert_refuses(from_missing, f"DESK_SECRET_KEY_FILE ({missing}) cannot be read")


def test_production_refuses_to_start_with_both_a_key_and_a_key_file(tmp_path):
    key_file = tmp_path / "secret.key"
    key_file.write_text(secrets.token_urlsafe(50))

    result = manage(
        "check",
        env=production_env(
            tmp_path, DESK_SECRET_KEY=A_REAL_KEY, DESK_SECRET_KEY_FILE=str(key_file)
        ),
    )

    assert_refuses(result, "Both DESK_SECRET_KEY and DESK_SECRET_KEY_FILE are set")


def test_production_starts_with_a_real_key_from_the_environment_or_a_file(tmp_path):
    key_file = tmp_path / "secret.key"
    file_key = secrets.token_urlsafe(50)
    key_file.write_text(file_key + "\n")

    from_env = manage("check", env=production_env(tmp_path, DESK_SECRET_KEY=A_REAL_KEY))
    from_file = settings_of(
        production_env(tmp_path, DESK_SECRET_KEY_FILE=str(key_file)), "SECRET_KEY", "DEBUG"
    )

    assert from_env.returncode == 0, from_env.stderr
    assert from_file == {"SECRET_KEY": file_key, "DEBUG": False}


def test_development_starts_on_the_development_key_with_plain_http_cookies(tmp_path):
    development = settings_of(
        production_env(tmp_path, DESK_DEBUG="1"),
        "SECRET_KEY",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_SSL_REDIRECT",
        "SECURE_HSTS_SECONDS",
    )

    assert development == {
        "SECRET_KEY": secret_key.DEVELOPMENT_KEY,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_SSL_REDIRECT": False,
        "SECURE_HSTS_SECONDS": 0,
    }


# --- Django's deploy checks -------------------------------------------------------------


def test_check_deploy_is_clean_on_the_production_defaults(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(tmp_path, DESK_SECRET_KEY=A_REAL_KEY),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_fails_when_a_production_setting_is_turned_off(tmp_path):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env=production_env(
            tmp_path, DESK_SECRET_KEY=A_REAL_KEY, DESK_SSL_REDIRECT="0", DESK_SECURE_COOKIES="0"
        ),
    )

    assert result.returncode != 0
    for warning in ("security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_proxy_ssl_header_is_off_unless_set_and_then_names_the_header(tmp_path):
    unset = settings_of(
        production_env(tmp_path, DESK_SECRET_KEY=A_REAL_KEY), "SECURE_PROXY_SSL_HEADER"
    )
    plain = settings_of(
        production_env(
            tmp_path, DESK_SECRET_KEY=A_REAL_KEY, DESK_PROXY_SSL_HEADER="X-Forwarded-Proto"
        ),
        "SECURE_PROXY_SSL_HEADER",
    )
    with_value = settings_of(
        production_env(
            tmp_path, DESK_SECRET_KEY=A_REAL_KEY, DESK_PROXY_SSL_HEADER="X-Forwarded-Ssl: on"
        ),
        "SECURE_PROXY_SSL_HEADER",
    )

    assert unset == {"SECURE_PROXY_SSL_HEADER": None}
    assert plain == {"SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"]}
    assert with_value == {"SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_SSL", "on"]}


# --- HTTPS ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_hsts_header_is_sent_over_https(client):
    over_https = client.get(reverse("admin:login"), secure=True)
    over_http = client.get(reverse("admin:login"))

    assert over_https["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert "Strict-Transport-Security" not in over_http


@pytest.mark.django_db
def test_a_client_sending_x_forwarded_proto_is_not_taken_for_https(client):
    response = client.get(reverse("admin:login"), headers={"X-Forwarded-Proto": "https"})

    assert "Strict-Transport-Security" not in response
    assert response.wsgi_request.is_secure() is False


@pytest.mark.django_db
def test_plain_http_is_redirected_to_https_except_the_health_probe(client, settings):
    settings.SECURE_SSL_REDIRECT = True  # production's default; the test run turns it off

    admin_page = client.get("/admin/login/")
    health = client.get("/healthz")

    assert admin_page.status_code == 301
    assert admin_page["Location"] == "https://testserver/admin/login/"
    assert health.status_code in (200, 503)
    assert "Location" not in health


# --- sessions ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_session_cookie_is_secure_httponly_and_expires_after_inactivity(client, users):
    signed_in = client.post(
        reverse("admin:login"), {"username": "ops", "password": "agentdesk-demo"}, secure=True
    )
    session_key = client.cookies["sessionid"].value

    cookie = signed_in.cookies["sessionid"]
    assert signed_in.status_code == 302
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["max-age"] == 30 * 60
    csrf = client.get(reverse("admin:login"), secure=True).cookies.get("csrftoken")
    assert csrf is None or (csrf["secure"] is True and csrf["samesite"] == "Lax")

    # Every request pushes the expiry on: an active session lives on.
    pass_second_factor(client, users["ops"])
    again = client.get(reverse("admin:index"), secure=True)
    assert again.status_code == 200
    assert again.cookies["sessionid"]["max-age"] == 30 * 60

    # Thirty minutes without a request: the cookie signs in nobody.
    Session.objects.filter(session_key=session_key).update(
        expire_date=timezone.now() - timezone.timedelta(seconds=1)
    )
    idle = client.get(reverse("admin:index"), secure=True)
    assert idle.status_code == 302
    assert idle["Location"].startswith(reverse("admin:login"))


@pytest.mark.django_db
def test_a_busy_session_is_signed_out_after_its_absolute_lifetime(client, users):
    client.force_login(users["ops"])
    assert client.get(reverse("admin:index"), secure=True).status_code == 200
    session = client.session
    started_at = session[STARTED_AT]
    signed_out_before = AuditEvent.objects.filter(action="auth.signed_out").count()

    session[STARTED_AT] = started_at - settings.DESK_SESSION_MAX_SECONDS
    session.save()
    response = client.get(reverse("admin:index"), secure=True)

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="auth.signed_out").count() > signed_out_before
    assert client.get(reverse("admin:index"), secure=True).status_code == 302


# --- Content Security Policy and the other headers ----------------------------------------


def directives(header: str) -> dict[str, list[str]]:
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def sample_pages(world_run, approval) -> list[tuple[str, str]]:
    """(who, url): the login page, every model admin's list, and object pages of note."""
    pages = [(None, reverse("admin:login")), (None, "/healthz"), (None, "/approvals/link/x/")]
    for model in admin.site._registry:
        name = f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist"
        try:
            pages.append(("platform", reverse(name)))
        except NoReverseMatch:
            continue
    pages += [
        ("ops", reverse("admin:index")),
        ("ops", reverse("admin:desk_run_change", args=[world_run.pk])),
        ("ops", reverse("admin:desk_run_changelist")),
        ("reviewer.harbor", reverse("admin:approvals_approvalrequest_change", args=[approval.pk])),
        ("ops", reverse("admin:roles_roleversion_change", args=[world_run.role_version_id])),
        ("auditor", reverse("audit_reports:index")),
        ("auditor", reverse("admin:audit_auditevent_changelist")),
        ("ops", "/admin/no-such-page/"),
    ]
    return pages


@pytest.mark.django_db
def test_every_admin_page_sends_a_csp_without_unsafe_inline_scripts(
    client, users, harbor, superuser
):
    run = parked(harbor, users["ops"])
    approval = run.approval_requests.get()
    people = {**users, "platform": superuser}

    seen = 0
    for who, url in sample_pages(run, approval):
        client.logout()
        if who:
            client.force_login(people[who])
        response = client.get(url, secure=True)

        policy = directives(response["Content-Security-Policy"])
        assert policy["default-src"] == ["'self'"], url
        assert policy["script-src"] == ["'self'"], url
        assert "'unsafe-inline'" not in policy["style-src"], url
        assert "'unsafe-eval'" not in response["Content-Security-Policy"], url
        assert policy["object-src"] == ["'none'"], url
        assert policy["base-uri"] == ["'none'"], url
        assert policy["frame-ancestors"] == ["'none'"], url
        assert policy["form-action"] == ["'self'"], url
        assert response["X-Frame-Options"] == "DENY", url
        assert response["X-Content-Type-Options"] == "nosniff", url
        assert response["Cross-Origin-Opener-Policy"] == "same-origin", url
        assert response["Referrer-Policy"] in ("same-origin", "strict-origin"), url
        assert "camera=()" in response["Permissions-Policy"], url
        seen += 1
    assert seen > 20


@pytest.mark.django_db
def test_the_only_inline_style_allowed_is_the_history_pages_by_its_hash(client, users, intake_role):
    client.force_login(users["ops"])

    response = client.get(reverse("admin:roles_role_history", args=[intake_role.pk]), secure=True)

    allowed = directives(response["Content-Security-Policy"])["style-src-attr"]
    styles = re.findall(r'\sstyle="([^"]*)"', response.content.decode())
    assert styles == ["border-top: 0"]  # django-simple-history's paginator
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert allowed == ["'unsafe-hashes'", f"'sha256-{digest}'"]


@pytest.mark.django_db
def test_permissions_policy_denies_camera_microphone_geolocation_and_payment(client):
    response = client.get(reverse("admin:login"), secure=True)

    features = {
        f.split("=")[0]: f.split("=")[1] for f in response["Permissions-Policy"].split(", ")
    }
    for feature in ("camera", "microphone", "geolocation", "payment", "usb", "display-capture"):
        assert features[feature] == "()"


# --- templates --------------------------------------------------------------------------

INLINE_SCRIPT = re.compile(r"<script\b(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>")
EVENT_HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)
JAVASCRIPT_URL = re.compile(r"javascript:", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style\b|\sstyle\s*=", re.IGNORECASE)
HTML_STYLE = re.compile(r"<style\b|<[a-z][^>]*\sstyle\s*=", re.IGNORECASE)  # in Python
# A report downloaded as a file (audit.report_documents) carries its styles inline: it is
# never served as a page, and must open without fetching anything.
STANDALONE_DOCUMENTS = {BASE_DIR / "templates/admin/audit/reports/document.html"}


def our_templates() -> list[Path]:
    roots = [BASE_DIR / "templates", *BASE_DIR.glob("*/templates")]
    return sorted(p for root in roots for p in root.rglob("*") if p.suffix in (".html", ".txt"))


def html_in_our_python() -> list[tuple[Path, str]]:
    """Every string literal in the apps' code (not docstrings or comments): HTML built in
    code, e.g. with format_html, is checked like the templates."""
    apps_ = ("desk", "tenants", "roles", "approvals", "audit", "webhooks")
    found = []
    for app in apps_:
        for path in sorted((BASE_DIR / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text())
            docstrings = {
                id(node.value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            }
            found += [
                (path, node.value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
            ]
    return found


def test_no_template_has_an_inline_script_or_event_handler():
    templates = our_templates()
    offenders = []
    for path in templates:
        text = path.read_text()
        for pattern in (INLINE_SCRIPT, EVENT_HANDLER, JAVASCRIPT_URL):
            offenders += [f"{path}: {m.group(0)}" for m in pattern.finditer(text)]
        if path not in STANDALONE_DOCUMENTS:
            offenders += [f"{path}: {m.group(0)}" for m in INLINE_STYLE.finditer(text)]
    for path, text in html_in_our_python():
        for pattern in (INLINE_SCRIPT, EVENT_HANDLER, JAVASCRIPT_URL, HTML_STYLE):
            offenders += [f"{path}: {m.group(0)}" for m in pattern.finditer(text)]

    assert len(templates) > 30
    assert offenders == []
