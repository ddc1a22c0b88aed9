"""Flowscope settings: everything that differs between machines comes from the environment."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from console.env import envbool, envfloat, envint, envlist, envstr
from flows.core.brokers import RABBITMQ, kind_of

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("FLOWSCOPE_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DEBUG", False)


def _secret_key() -> str:
    key = envstr("SECRET_KEY", "")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (make one with: python -c 'import secrets; print(secrets.token_urlsafe(50))')")
    # A development key kept on disk, so sessions survive a restart of the demo.
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "flows",
    "tracing",
    "console",
    # Tooling and examples, never in production: `make demo` adds the demo catalog, the lab and
    # the tooling commands (demo, bench, lab); the test settings add them all.
    *envlist("FLOWSCOPE_EXTRA_APPS", []),
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"
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
                "console.extensions.nav",
            ],
        },
    },
]


def _databases() -> dict:
    default_url = f"sqlite:///{VAR_DIR / 'flowscope.sqlite3'}"
    db = dj_database_url.parse(envstr("DATABASE_URL", default_url) or default_url, conn_max_age=0)
    if db["ENGINE"] == "django.db.backends.postgresql":
        # A worker and the collector are one thread each: a connection kept between tasks saves
        # PostgreSQL a new backend per delivery (Celery's Django fix-up closes an obsolete one
        # around every task, and with 0 every one is obsolete). The web process's ASGI entry
        # (console/asgi.py) sets 0 first, as Django advises for ASGI. Health checks drop a
        # connection the server closed before it is used.
        db["CONN_MAX_AGE"] = int(envstr("DATABASE_CONN_MAX_AGE", "300") or "300")
        db["CONN_HEALTH_CHECKS"] = True
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # Web, workers and tests share one file: WAL lets readers run beside the writer,
        # IMMEDIATE takes the write lock up front so two writers queue instead of deadlocking.
        db["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
        # A file, not memory, so the Celery worker started by the tests sees the test database.
        # Named per process so that two test runs on one machine never share it.
        db["TEST"] = {"NAME": str(VAR_DIR / f"test-flowscope-{os.getpid()}.sqlite3")}
    return {"default": db}


DATABASES = _databases()
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "console.staticfinders.PlotlyFinder",
]
# Served by WhiteNoise from the finders, so the ASGI app needs no collectstatic step or proxy.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# --- Redis: broker, channel layer and the engine's own keys (all prefixed "flows:") ---
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    },
}

# --- Celery ---
# Late acknowledgement plus reject-on-worker-lost: a message is removed from the broker only
# after its handler's outcome (success, retry scheduled, or dead letter) is durable.
FLOWS_VISIBILITY_TIMEOUT = envint("FLOWS_VISIBILITY_TIMEOUT", 3600, minimum=10)
# How often a worker looks for deliveries a dead worker left unacknowledged past the visibility
# timeout and puts them back on their queue. Kombu's default scans every 10th tick of 10 s, so
# a killed worker's messages could wait 100 s beyond the timeout; the scan is one ZRANGE.
FLOWS_RESTORE_INTERVAL_SECONDS = envint("FLOWS_RESTORE_INTERVAL_SECONDS", 10, minimum=1)
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per pool process: with late acknowledgement a prefetched message is
# held, not worked on, and a slow handler would sit on others' work.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Reconnects where Celery 5.7.0 would exit (flows.consume.worker_consumer), and dead-letters the messages
# Celery's consumer would drop: a task no worker has, a body that cannot be decoded.
CELERY_WORKER_CONSUMER = "flows.consume.broker:Consumer"
if kind_of(CELERY_BROKER_URL) == RABBITMQ:
    # RabbitMQ: durable quorum queues unless asked for classic ones; every send confirmed by the
    # broker; delays held by the broker, not a worker (flows.produce.rabbitmq), which needs the
    # queues' own exchanges to be topic exchanges.
    FLOWS_RABBITMQ_QUEUE_TYPE = envstr("FLOWS_RABBITMQ_QUEUE_TYPE", "quorum")
    if FLOWS_RABBITMQ_QUEUE_TYPE not in ("quorum", "classic"):
        raise ImproperlyConfigured(f"FLOWS_RABBITMQ_QUEUE_TYPE must be 'quorum' or 'classic', not {FLOWS_RABBITMQ_QUEUE_TYPE!r}")
    CELERY_TASK_DEFAULT_QUEUE_TYPE = CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = FLOWS_RABBITMQ_QUEUE_TYPE
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": FLOWS_VISIBILITY_TIMEOUT,
        "unacked_restore_interval": FLOWS_RESTORE_INTERVAL_SECONDS,
        "unacked_restore_throttle": 1,
        # A worker looks for those deliveries under a lock in Redis; killed while holding it, it
        # stops every worker's restores until the lock expires (kombu's default: 300 s). Restores
        # are safe to overlap (each is a WATCH transaction), so the lock need not outlive a scan.
        "unacked_mutex_expire": 30,
    }
    # Redis, a message taken and recorded as held in one step (issue 12), and a queue item
    # that is not a Celery message dead-lettered instead of ending the worker.
    CELERY_BROKER_TRANSPORT = "flows.consume.broker:Transport"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "flows.control"
# Celery's Django fix-up closes every database connection before and after every task (celery
# 5.7's DjangoWorkerFixup._close_database calls close(), whatever CONN_MAX_AGE says), unless
# CELERY_DB_REUSE_MAX spaces those closes out; it is set past reach here, and console/celery.py
# applies Django's own rule around each task instead (close_old_connections: CONN_MAX_AGE, and a
# connection that failed is dropped), so a worker on PostgreSQL keeps its connection.
CELERY_DB_REUSE_MAX = 10**9
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# --- Alerts: how often the rules are evaluated, and how hard a notice is retried ---
ALERTS_EVALUATE_SECONDS = envfloat("ALERTS_EVALUATE_SECONDS", 2.0)
ALERTS_DELIVERY_ATTEMPTS = envint("ALERTS_DELIVERY_ATTEMPTS", 5, minimum=1)
ALERTS_DELIVERY_BACKOFF_SECONDS = envfloat("ALERTS_DELIVERY_BACKOFF_SECONDS", 2.0)  # doubled after each failed attempt
# E-mail channels go through Django's e-mail backend (SMTP unless EMAIL_BACKEND says otherwise).
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = envstr("EMAIL_HOST", "localhost")
EMAIL_PORT = envint("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "flowscope@localhost")
CELERY_BEAT_SCHEDULE = {
    "sweep-stalled-sagas": {"task": "flows.sweep_stalled_sagas", "schedule": 10.0},
    # A requeue claimed by a process that died before sending it would otherwise wait for the
    # next bulk job to be recovered.
    "recover-requeues": {"task": "flows.recover_requeues", "schedule": 30.0},
    "prune-old-spans": {"task": "tracing.prune_spans", "schedule": 3600.0},
    # PostgreSQL's day partitions of the span tables, made days ahead (tracing.partitions).
    "create-span-partitions": {"task": "tracing.create_span_partitions", "schedule": 3600.0},
    "prune-live-tasks": {"task": "flows.prune_live_tasks", "schedule": 3600.0},
    # Alert rules (console.alerts): a notice within seconds of its condition; a run that would
    # start after the next one is due is dropped rather than queued behind it.
    "evaluate-alerts": {"task": "console.alerts.evaluate", "schedule": ALERTS_EVALUATE_SECONDS, "options": {"expires": ALERTS_EVALUATE_SECONDS}},
}

# --- The engine ---
# Modules that declare message types, handlers and sagas; imported when Django starts.
FLOWS_MODULES = envlist("FLOWS_MODULES", [])
FLOWS_MAX_PAYLOAD_BYTES = envint("FLOWS_MAX_PAYLOAD_BYTES", 256 * 1024, minimum=1)
FLOWS_SAGA_STALL_SECONDS = envint("FLOWS_SAGA_STALL_SECONDS", 120, minimum=1)
FLOWS_DELIVERY_TTL_SECONDS = envint("FLOWS_DELIVERY_TTL_SECONDS", 7 * 24 * 3600, minimum=60)
FLOWS_REPLY_TTL_SECONDS = envint("FLOWS_REPLY_TTL_SECONDS", 3600, minimum=10)
FLOWS_BACKPRESSURE_REFRESH_SECONDS = envfloat("FLOWS_BACKPRESSURE_REFRESH_SECONDS", 0.25)
# Per-queue watermark overrides, e.g. {"invoices": {"high": 500, "low": 100, "mode": "raise"}}.
FLOWS_BACKPRESSURE = json.loads(envstr("FLOWS_BACKPRESSURE", "{}") or "{}")

# --- Tracing (the standard OTEL_* variables are read by OpenTelemetry itself) ---
TRACING_EXPORT_DELAY_MS = envint("TRACING_EXPORT_DELAY_MS", 200, minimum=1)
TRACING_SINK_MAX_SPANS = envint("TRACING_SINK_MAX_SPANS", 2_000_000, minimum=1)
TRACING_CAPTURE_PAYLOAD = envbool("TRACING_CAPTURE_PAYLOAD", False)
TRACING_RETENTION_DAYS = envfloat("TRACING_RETENTION_DAYS", 7.0)
TRACING_PARTITION_DAYS_AHEAD = envint("TRACING_PARTITION_DAYS_AHEAD", 3, minimum=1)  # PostgreSQL: day partitions made ahead of today
TRACING_OTLP_MAX_BYTES = envint("TRACING_OTLP_MAX_BYTES", 2 * 1024 * 1024, minimum=1024)
TRACING_COLLECTOR_THREADS = envlist("TRACING_COLLECTOR_THREADS", ["console.broadcast.start"])
TRACING_OTLP_TOKEN = envstr("TRACING_OTLP_TOKEN", "")  # if set, POST /v1/traces needs "Authorization: Bearer <token>" (or an agent token)
# Without TRACING_OTLP_TOKEN, /v1/traces takes spans from anyone only when opened: by default with
# DEBUG on, never in production unless set (check --deploy warns then). Agent tokens always work.
TRACING_OTLP_OPEN = envbool("TRACING_OTLP_OPEN", DEBUG)
TRACING_OTLP_AUTH = "console.roles.otlp_bearer"  # which API tokens may report: tracing asks, the console decides
TRACING_EDGE_BUCKET_SECONDS = envint("TRACING_EDGE_BUCKET_SECONDS", 10, minimum=1)
# Payload fields masked wherever a payload is shown or exported (e-mail addresses and card
# numbers are masked anywhere, whatever the field).
FLOWSCOPE_REDACT_FIELDS = envlist("FLOWSCOPE_REDACT_FIELDS", ["password", "secret", "token", "api_key", "authorization", "card_number", "cvv", "iban", "ssn", "email"])

# --- Production hardening: on whenever DEBUG is off, so `check --deploy` passes ---
if not DEBUG:
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
}
