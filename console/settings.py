"""Console settings, read from the environment with defaults that run on one machine.

Every variable is listed in the README. With none set, the console uses SQLite and a
filesystem Celery broker under ``var/``, so ``make run`` needs no other server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import dj_database_url
from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.core.management.utils import get_random_secret_key

from console.private_files import keep_private

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))
# Before anything is written there: folders 0700, files 0600 (console/private_files.py).
keep_private(VAR_DIR)


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def read_or_create_secret(path: Path, make: Callable[[], str]) -> str:
    """Return the secret stored at ``path``, creating it (mode 0600) on first use.

    Created with O_EXCL so two processes starting together (gunicorn and Celery) agree on one
    value instead of each writing its own.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


SECRET_KEY = os.environ.get("SECRET_KEY") or read_or_create_secret(
    VAR_DIR / "secret_key", get_random_secret_key
)
DEBUG = env_flag("DEBUG")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    # django-ninja's app only serves its bundled Swagger UI files (no CDN) for /api/v1/docs.
    "ninja",
    "axes",
    "console",
    "certificates",
    "listeners",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # /api/ only: token or session (with CSRF) auth and roles, answered as problem documents.
    "console.api.auth.ApiAuthenticationMiddleware",
    # Tells the service functions who is making a change, for the audit log (console/audit.py).
    "console.audit.AuditActorMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "console.roles.ReadOnlyForViewersMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a throttled sign-in into console.lockout's page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

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
                "console.context_processors.shell",
                "certificates.alerts.banner",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'console.sqlite3'}"),
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Celery and gunicorn write to the same file; wait for the lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Sign-in throttling (django-axes): after AXES_FAILURE_LIMIT wrong passwords for one user name
# from one client address, that pair waits AXES_COOLOFF_TIME; the sign-in page says until when.
# Other addresses and other users are unaffected, so nobody can lock the admin out from afar.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A locked-out client's further guesses neither count nor push its retry time back.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_LOCKOUT_CALLABLE = "console.lockout.locked_out"
AXES_CLIENT_IP_CALLABLE = "console.lockout.client_address"
# Failures are kept per user and address until they expire; a row per successful sign-in would
# only grow without bound, and the start-up banner would be one more INFO line in every process.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "instance-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the app folders as well, so tests and a fresh checkout work before
# collectstatic has run.
WHITENOISE_USE_FINDERS = True

# Uploads are certificates and keys; 64 KiB per field is checked in the validator, this only
# bounds what reaches it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp): the console's pages load scripts, styles and images only
# from the console itself, run no inline script, style attribute or eval (templates use data-
# attributes read by static/js/console.js; htmx is told not to inject its indicator style and
# not to eval), and cannot be framed or post forms elsewhere.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}

# CONSOLE_HTTPS=1: the console is served behind TLS (directly or by a proxy that sets
# X-Forwarded-Proto), so cookies are Secure and browsers are told to stay on HTTPS.
CONSOLE_HTTPS = env_flag("CONSOLE_HTTPS")
if CONSOLE_HTTPS:
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31536000
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Private keys are encrypted at rest with MultiFernet; newest key first.
CERT_ENCRYPTION_KEYS = env_list("CERT_ENCRYPTION_KEYS") or [
    read_or_create_secret(VAR_DIR / "cert_encryption_key", lambda: Fernet.generate_key().decode())
]

# Celery. Without REDIS_URL the broker is kombu's filesystem transport under var/, so the
# embedded setup needs no server; with it, Redis.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict = {"visibility_timeout": 300}
else:
    _broker_dir = VAR_DIR / "celery-broker"
    for _sub in ("out", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    # kombu's filesystem transport, writing messages atomically (console/filesystem_broker.py).
    # The host means nothing to it; naming one keeps kombu from warning.
    CELERY_BROKER_TRANSPORT = "console.filesystem_broker:Transport"
    CELERY_BROKER_URL = "localhost"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        # kombu keeps its exchange tables here; by default it writes them to the working
        # directory.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # This transport is polled: a task waits up to one interval before the worker sees it.
        # kombu's default is 1 s; every 50 ms costs an idle worker about 0.5% of a core.
        "polling_interval": 0.05,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Reconnect to the broker at a short fixed interval and log one line per outage (see
# console/celery.py); Celery's own consumer backs off up to 30 s and logs every attempt.
CELERY_WORKER_CONSUMER = "console.celery:Consumer"
CELERY_BEAT_SCHEDULER = "console.celery:Scheduler"
RECONCILE_INTERVAL = float(os.environ.get("RECONCILE_INTERVAL", "5"))
# A listener still Configuring after this many seconds is marked Failed with the reason.
CONFIGURING_DEADLINE = float(os.environ.get("CONFIGURING_DEADLINE", "20"))

# ACME (certificates/renewal.py): the ports the CA validates HTTP-01 and TLS-ALPN-01 on (80 and
# 443 in the RFCs; a test CA can use others), a CA bundle for a private ACME CA's directory
# (empty: the system's), how long an order and the challenge push may take, the retry backoff
# after a failed attempt, and how often beat looks for due renewals and expiring certificates.
ACME_HTTP01_PORT = int(os.environ.get("ACME_HTTP01_PORT", "80"))
ACME_TLS_ALPN01_PORT = int(os.environ.get("ACME_TLS_ALPN01_PORT", "443"))
ACME_CA_BUNDLE = os.environ.get("ACME_CA_BUNDLE", "")
ACME_ORDER_TIMEOUT = float(os.environ.get("ACME_ORDER_TIMEOUT", "120"))
ACME_PUSH_TIMEOUT = float(os.environ.get("ACME_PUSH_TIMEOUT", "30"))
ACME_RETRY_BASE = float(os.environ.get("ACME_RETRY_BASE", "600"))
ACME_RETRY_MAX = float(os.environ.get("ACME_RETRY_MAX", "86400"))
CERTIFICATE_UPKEEP_INTERVAL = float(os.environ.get("CERTIFICATE_UPKEEP_INTERVAL", "3600"))
# Expiry warnings and failed renewals are POSTed here as JSON (certificates/alerts.py).
CERTIFICATE_WEBHOOK_URL = os.environ.get("CERTIFICATE_WEBHOOK_URL", "")
# How often beat fetches the revocation lists that have a distribution point URL again
# (certificates/revocation.py); an unchanged CRL is not pushed.
CRL_REFRESH_INTERVAL = float(os.environ.get("CRL_REFRESH_INTERVAL", "3600"))
# Seconds between two traffic samples of every listener on every node (console/sampling.py, the
# Monitoring tab's graphs), and how long samples are kept.
TRAFFIC_SAMPLE_INTERVAL = float(os.environ.get("TRAFFIC_SAMPLE_INTERVAL", "10"))
TRAFFIC_RETENTION = float(os.environ.get("TRAFFIC_RETENTION", "86400"))

# Routine success is DEBUG, state changes and problems INFO and above: Celery logs every task
# received and succeeded, and beat every task sent, at INFO, which buries the rest under
# reconcile's ticks.
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
_ROUTINE_LEVEL = "DEBUG" if LOG_LEVEL == "DEBUG" else "WARNING"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery.worker.strategy": {"level": _ROUTINE_LEVEL},
        "celery.app.trace": {"level": _ROUTINE_LEVEL},
        "celery.beat": {"level": _ROUTINE_LEVEL},
        # "Connected to <broker>" on every reconnection; console.celery says it once per outage.
        "celery.worker.consumer.connection": {"level": _ROUTINE_LEVEL},
    },
}
