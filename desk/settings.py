"""AgentDesk settings, read from the environment (see README "Configuration")."""

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_HASHES
from django.core.exceptions import ImproperlyConfigured

from desk import secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DESK_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # the SQLite file and the demo mail live here


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or not value.strip() else int(value)


# Off means production: see "Production security" below.
DEBUG = env_bool("DESK_DEBUG", False)

ALLOWED_HOSTS = [
    h for h in os.environ.get("DESK_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h
]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DESK_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

INSTALLED_APPS = [
    "django.contrib.admin",
    # Before django.contrib.auth: its `changepassword` command (which refuses to reset a
    # tenant member's password without a break-glass grant) replaces Django's.
    "tenants",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guardian",
    "simple_history",
    "django_q",
    "roles",
    "desk.apps.DeskConfig",
    "approvals",
    "audit",
    "webhooks",
    "csp",  # django-csp: its checks (see "Production security")
]

MIDDLEWARE = [
    "audit.context.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "desk.session_lifetime.SessionLifetimeMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "tenants.middleware.TenantContextMiddleware",
]

ROOT_URLCONF = "desk.urls"
WSGI_APPLICATION = "desk.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Persistent connections with health checks: django-q2's ORM broker otherwise reconnects
# on every access and runs about ten times slower.
CONN_MAX_AGE = int(os.environ.get("DESK_CONN_MAX_AGE", "600"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'agentdesk.sqlite3'}",
        conn_max_age=CONN_MAX_AGE,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Platform work (tenants.rls.platform_context: the scheduler's cross-tenant reads, tenant
    # creation, break-glass grants) runs on a connection of its own, as agentdesk_platform,
    # which the application's roles cannot become. Unset, it is DATABASE_URL's login, which
    # works only where that login may become agentdesk_platform (a superuser in development).
    DATABASES["platform"] = dj_database_url.parse(
        os.environ.get("DESK_PLATFORM_DATABASE_URL") or os.environ["DATABASE_URL"],
        conn_max_age=CONN_MAX_AGE,
        conn_health_checks=True,
    )
    # A platform transaction that waits on a lock the same thread's other connection holds
    # would wait for ever: fail loudly instead.
    DATABASES["platform"]["OPTIONS"] = {"options": "-c lock_timeout=15s"}
    DATABASES["platform"]["TEST"] = {"MIRROR": "default"}
DATABASE_ROUTERS = ["tenants.rls.ContextRouter"]
# How often each process records its uses of the platform role, counted by purpose
# (tenants.rls.platform_context), on the platform's audit chain; 0: every use at once.
DESK_PLATFORM_AUDIT_SECONDS = int(os.environ.get("DESK_PLATFORM_AUDIT_SECONDS", "60"))
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One writer at a time: wait for the lock instead of failing, and let readers run
    # beside the writer (WAL), so the web server and the cluster share the file.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
FORMAT_MODULE_PATH = ["desk.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "admin:login"

EMAIL_BACKEND = os.environ.get(
    "DESK_EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend"
)
EMAIL_FILE_PATH = VAR_DIR / "outbox-mail"
# A hand-over to the mail server that takes longer fails (and is retried, or escalated).
EMAIL_TIMEOUT = int(os.environ.get("DESK_EMAIL_TIMEOUT", "20"))
DEFAULT_FROM_EMAIL = os.environ.get("DESK_FROM_EMAIL", "agentdesk@localhost")

# --- Production security ---------------------------------------------------------------
# With DESK_DEBUG off AgentDesk is in production: it refuses to start without a secret key
# of its own, answers over HTTPS only, and its cookies and headers say so. Development
# (DESK_DEBUG on: `make run`) keeps plain-http cookies, so http://127.0.0.1 works. Every
# variable is in the README ("Production settings"); `make check-deploy` runs Django's
# deploy checks on these settings and fails on any warning.

SECRET_KEY = secret_key.load(os.environ, debug=DEBUG)

# HTTPS. The redirect answers plain http with a 301 to https; /healthz is exempt so that a
# load balancer may probe over plain http.
SECURE_SSL_REDIRECT = env_bool("DESK_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [
    r for r in os.environ.get("DESK_SSL_REDIRECT_EXEMPT", r"^healthz$").split(",") if r
]
SECURE_HSTS_SECONDS = env_int("DESK_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DESK_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading commits the domain and every subdomain to HTTPS in browsers for months, and is
# hard to undo: the domain's owner decides. While it is off, Django's deploy check that only
# asks for it (W021) is silenced.
SECURE_HSTS_PRELOAD = env_bool("DESK_HSTS_PRELOAD", False)
if not SECURE_HSTS_PRELOAD:
    SILENCED_SYSTEM_CHECKS = ["security.W021"]
# Off unless set, and set it only behind a proxy that terminates TLS and always sets (or
# strips) this header: otherwise any client could send it and pass a plain-http request off
# as https. "X-Forwarded-Proto" means "X-Forwarded-Proto: https"; "Name: value" names both.
DESK_PROXY_SSL_HEADER = os.environ.get("DESK_PROXY_SSL_HEADER", "").strip()
if DESK_PROXY_SSL_HEADER:
    _name, _, _value = DESK_PROXY_SSL_HEADER.partition(":")
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + _name.strip().upper().replace("-", "_"),
        _value.strip() or "https",
    )

# Cookies: https only in production, out of scripts' reach, not sent with cross-site POSTs.
# Lax, not Strict: a reviewer opening a notification e-mail's review link
# (approvals.links.review_url) arrives from another site; under Strict the session cookie
# would be withheld and a signed-in reviewer asked to sign in again. Lax still withholds
# cookies from cross-site POSTs, and every state change here is a POST with a CSRF token.
SESSION_COOKIE_SECURE = env_bool("DESK_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Sessions end after DESK_SESSION_IDLE_MINUTES without a request (each request saves the
# session, pushing its expiry on), and DESK_SESSION_MAX_HOURS after sign-in whatever the
# activity (desk.session_lifetime), not Django's 14 days.
SESSION_COOKIE_AGE = 60 * env_int("DESK_SESSION_IDLE_MINUTES", 30)
SESSION_SAVE_EVERY_REQUEST = True
DESK_SESSION_MAX_SECONDS = 3600 * env_int("DESK_SESSION_MAX_HOURS", 12)

# Headers (SecurityMiddleware, XFrameOptionsMiddleware): no MIME sniffing, no framing, no
# shared browsing context with other sites' windows, referrers only within this origin.
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
SECURE_REFERRER_POLICY = "same-origin"

# Content Security Policy (django-csp): scripts, styles, images and fonts from this origin
# only; no inline script, no event-handler attribute, no javascript: URL, no plugin, no
# <base>, no framing, forms post back here only. The one inline style attribute allowed is
# django-simple-history's history-page paginator (`style="border-top: 0"`), by its hash.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "style-src-attr": [UNSAFE_HASHES, "'sha256-XMXSevYjgSjXgRafBFDvtjwX+yyWLrxfso9DcNZ9UXM='"],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}

# Permissions-Policy (django-permissions-policy): no page here may use any of these.
PERMISSIONS_POLICY = {
    feature: []
    for feature in (
        "accelerometer",
        "autoplay",
        "camera",
        "display-capture",
        "encrypted-media",
        "fullscreen",
        "geolocation",
        "gyroscope",
        "hid",
        "idle-detection",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "screen-wake-lock",
        "serial",
        "usb",
        "xr-spatial-tracking",
    )
}

# --- AgentDesk -------------------------------------------------------------------------

DESK_LLM_PROVIDER = os.environ.get("DESK_LLM_PROVIDER", "offline")
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1")
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
# How long a worker owns a step without renewing its lease (its heartbeat renews it every
# quarter of this while the step executes); after that the reaper hands the step on.
DESK_STEP_LEASE_SECONDS = int(os.environ.get("DESK_STEP_LEASE_SECONDS", "20"))
# Attempts of one step that ended in an error (a failed model call, a crash) before it fails.
DESK_STEP_MAX_ATTEMPTS = int(os.environ.get("DESK_STEP_MAX_ATTEMPTS", "3"))
# Times a step may lose its worker (killed, stopped: the lease lapsed) before it fails into
# an escalation: a step that keeps killing its worker must not be retried forever.
DESK_STEP_MAX_LOST_LEASES = int(os.environ.get("DESK_STEP_MAX_LOST_LEASES", "5"))
# How desk asks for human approval; approvals implements it (desk must not import it).
DESK_APPROVAL_GATE = "approvals.gate.ApprovalGate"
# Where people reach this AgentDesk: links in e-mails start with it.
# The audit signing key lives outside the database (audit.signing); checkpoints of every
# chain go to a store outside it too (audit.checkpoints), every AUDIT_CHECKPOINT_SECONDS.
AUDIT_SIGNING_KEY_FILE = Path(
    os.environ.get("AUDIT_SIGNING_KEY_FILE", VAR_DIR / "audit-signing.key")
)
AUDIT_KEY_NAME = os.environ.get("AUDIT_KEY_NAME", "agentdesk-audit")
AUDIT_LOG_ORIGIN = os.environ.get("AUDIT_LOG_ORIGIN", "agentdesk.local/audit")
AUDIT_CHECKPOINT_STORE = os.environ.get(
    "AUDIT_CHECKPOINT_STORE", "audit.checkpoints.DirectoryStore"
)
AUDIT_CHECKPOINT_DIR = Path(os.environ.get("AUDIT_CHECKPOINT_DIR", VAR_DIR / "audit-checkpoints"))
AUDIT_CHECKPOINT_SECONDS = int(os.environ.get("AUDIT_CHECKPOINT_SECONDS", "3600"))
# Proxies whose X-Forwarded-For names the client's address in audit events (comma-separated).
AUDIT_TRUSTED_PROXIES = frozenset(
    filter(None, os.environ.get("AUDIT_TRUSTED_PROXIES", "").replace(" ", "").split(","))
)
DESK_BASE_URL = os.environ.get("DESK_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
# How long a signed approve/reject link in an e-mail stays valid (never past due + 1 day).
DESK_APPROVAL_LINK_HOURS = int(os.environ.get("DESK_APPROVAL_LINK_HOURS", "72"))
# What a step without an approval policy gets (fail closed): one approval, this due time.
DESK_DEFAULT_APPROVAL = {
    "required_approvals": 1,
    "due_minutes": 240,
    "remind_every_minutes": 60,
    "max_reminders": 2,
    "max_rounds": 3,
}
# What the audit reports read of runs and roles (audit.reports.RunRecords); desk implements it.
AUDIT_RUN_RECORDS = "desk.report_records.RunRecords"
# Where desk announces what happened to runs (desk.events); webhooks implements it.
DESK_EVENT_SINK = "webhooks.services.emit"
# Who hands each outbox channel's messages over (desk.services.outbox): channel -> handler.
DESK_OUTBOX_CHANNELS = {
    "email": "desk.services.outbox.send_email",
    "webhook": "webhooks.delivery.send",
}
# Webhooks: how long a receiver may take to connect, and then to answer (seconds each).
DESK_WEBHOOK_TIMEOUT_SECONDS = float(os.environ.get("DESK_WEBHOOK_TIMEOUT_SECONDS", "10"))
# Plain http:// endpoints and receivers on private or loopback addresses: for development
# and tests only (in production an endpoint is https on the public internet).
DESK_WEBHOOK_ALLOW_HTTP = env_bool("DESK_WEBHOOK_ALLOW_HTTP", DEBUG)
DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS = env_bool("DESK_WEBHOOK_ALLOW_PRIVATE_NETWORKS", DEBUG)

# --- Secrets at rest -------------------------------------------------------------------
# Tenants' secrets (webhook signing secrets, model provider API keys) are stored encrypted
# (tenants.encryption). The Fernet keys, newest first: DESK_SECRETS_KEYS (comma-separated)
# when set, else the key file (one a line; `manage.py secrets_key --create` makes it).
# Without a key no secret is saved or used.
DESK_SECRETS_KEYS = os.environ.get("DESK_SECRETS_KEYS", "").strip()
DESK_SECRETS_KEY_FILE = Path(os.environ.get("DESK_SECRETS_KEY_FILE", VAR_DIR / "secrets.keys"))
# Every field that holds such a secret ("app.Model.field"): a rotation re-encrypts them all.
DESK_SECRETS_FIELDS = [
    "tenants.Tenant.provider_api_key_encrypted",
    "webhooks.WebhookEndpoint.encrypted_secret",
]
# How many stored secrets a re-encryption (`secrets_key --rotate`) rewrites per transaction.
DESK_SECRETS_REENCRYPT_BATCH = int(os.environ.get("DESK_SECRETS_REENCRYPT_BATCH", "500"))

# --- django-q2 -------------------------------------------------------------------------

DESK_TASK_TIMEOUT = int(os.environ.get("DESK_TASK_TIMEOUT", "600"))
Q_CLUSTER = {
    "name": "agentdesk",
    # django-q2's brokers with the hooks a supervised cluster reports progress through
    # (desk.cluster); the ORM or Redis one, as configured below.
    "broker_class": "desk.cluster.SupervisedORM",
    "workers": int(os.environ.get("DESK_Q_WORKERS", "2")),
    "timeout": DESK_TASK_TIMEOUT,
    # Must exceed the longest task, or the ORM broker hands the task out again.
    "retry": DESK_TASK_TIMEOUT + 60,
    "max_attempts": 1,  # the step row's own attempt counter decides retries
    "catch_up": False,
    "save_limit": 1000,
    "poll": float(os.environ.get("DESK_Q_POLL", "0.2")),
    "label": "Task queue (platform staff)",
}
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    Q_CLUSTER["broker_class"] = "desk.cluster.SupervisedRedis"
else:
    Q_CLUSTER["orm"] = "default"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DESK_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # WeasyPrint (PDF audit reports) logs every rendering step at INFO.
        "weasyprint": {"level": "WARNING"},
    },
}

# Tools AI employees can call; roles list which of these each may use.
DESK_TOOLS = {
    "records.search": "desk.tools.records.RecordsSearch",
    "records.get": "desk.tools.records.RecordsGet",
    "email.send": "desk.tools.email.EmailSend",
}

# Largest intake API request body.
DESK_API_MAX_BODY_BYTES = int(os.environ.get("DESK_API_MAX_BODY_BYTES", str(64 * 1024)))

# One worker task keeps up to this many runs moving at once (model calls are awaited, not
# blocked on), bounded per process and per tenant.
DESK_WORKER_BATCH = int(os.environ.get("DESK_WORKER_BATCH", "64"))
DESK_MODEL_CONCURRENCY = int(os.environ.get("DESK_MODEL_CONCURRENCY", "128"))
DESK_TENANT_MODEL_CONCURRENCY = int(os.environ.get("DESK_TENANT_MODEL_CONCURRENCY", "32"))
# A worker task stops taking new runs after this long and hands on to a successor (it must
# end within DESK_TASK_TIMEOUT; shorter tasks let the supervisor's probe through sooner).
DESK_WORKER_TASK_SECONDS = int(os.environ.get("DESK_WORKER_TASK_SECONDS", "10"))

# A ready step nobody took for this long has lost its doorbell: the reaper rings again.
DESK_STALL_SECONDS = int(os.environ.get("DESK_STALL_SECONDS", "15"))
# How patient a desk_worker is with its cluster (desk.supervisor.Timing), as JSON, e.g.
# {"probe_timeout": 15, "busy_grace": 15}; the defaults suit production.
DESK_SUPERVISOR_TIMING = json.loads(os.environ.get("DESK_SUPERVISOR_TIMING") or "{}")

# Upkeep every worker's sweeper runs, each once per period across all machines
# (desk.services.maintenance): name -> (function, seconds between rounds).
DESK_SWEEPS = {
    "reaper": ("desk.services.maintenance.reap", 5),
    "approvals": ("approvals.services.sweep_approvals", 15),
    "service_levels": ("desk.services.maintenance.escalate_service_levels", 60),
    "audit_checkpoints": ("audit.checkpoints.checkpoint_all", AUDIT_CHECKPOINT_SECONDS),
    "audit_retention": ("audit.services.apply_retention", 3600),
}

# --- Sign-in protection ------------------------------------------------------------------
# README "Sign-in protection". django-axes locks sign-in after DESK_LOGIN_FAILURE_LIMIT
# failures for a username OR from a client address (whichever reaches it first), for
# DESK_LOGIN_LOCKOUT_MINUTES (0: until platform staff lift it in the admin). The address is
# the one audit events carry (audit.context.client_ip: X-Forwarded-For only from
# AUDIT_TRUSTED_PROXIES). A wrong second-factor code counts as a failure too.
# django-otp: every signed-in person needs a verified TOTP device (or a recovery code) for
# every page but the second factor's own and sign-out, when DESK_REQUIRE_2FA is on (it is,
# unless DESK_DEBUG is).
_tenants_app = INSTALLED_APPS.index("tenants")  # their admins first: tenants' replace them
INSTALLED_APPS[_tenants_app:_tenants_app] = [
    "tenants.signin.apps.LockoutsConfig",  # django-axes
    "django_otp",
    "tenants.signin.apps.SecondFactorsConfig",  # django-otp's TOTP devices
    "django_otp.plugins.otp_static",
]
AUTHENTICATION_BACKENDS.insert(0, "tenants.signin.lockouts.LockoutBackend")
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "django_otp.middleware.OTPMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django_otp.middleware.OTPMiddleware") + 1,
    "tenants.signin.middleware.SecondFactorRequiredMiddleware",
)
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last: turns a lockout into its page

AXES_FAILURE_LIMIT = int(os.environ.get("DESK_LOGIN_FAILURE_LIMIT", "5"))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # either one locks
_lockout_minutes = int(os.environ.get("DESK_LOGIN_LOCKOUT_MINUTES", "60"))
AXES_COOLOFF_TIME = timedelta(minutes=_lockout_minutes) if _lockout_minutes > 0 else None
AXES_CLIENT_IP_CALLABLE = "audit.context.client_ip"
AXES_USERNAME_CALLABLE = "tenants.signin.lockouts.attempted_username"
AXES_LOCKOUT_CALLABLE = "tenants.signin.views.locked_out"
AXES_HTTP_RESPONSE_CODE = 429
# Attempts made while locked out do not push the end of the lockout further away; a
# successful sign-in clears the person's own failures only once the second factor passed.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False
AXES_ENABLE_ADMIN = False  # the lockouts page is tenants.signin.admin (platform staff only)
AXES_DISABLE_ACCESS_LOG = True  # sign-ins are on the audit trail
AXES_VERBOSE = False

DESK_REQUIRE_2FA = env_bool("DESK_REQUIRE_2FA", not DEBUG)
if not DESK_REQUIRE_2FA and not DEBUG:
    # Production never runs without the second factor (fail closed, not a quiet downgrade).
    raise ImproperlyConfigured(
        "DESK_REQUIRE_2FA is off but DESK_DEBUG is not: production requires a second factor "
        "for every sign-in. Unset DESK_REQUIRE_2FA (it is on by default)."
    )
DESK_RECOVERY_CODES = 10
OTP_TOTP_ISSUER = os.environ.get("DESK_TOTP_ISSUER", "AgentDesk")
LOGGING["loggers"]["axes"] = {"level": "ERROR"}  # failures and lockouts: the audit trail
