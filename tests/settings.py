"""The production settings, with the few values a test run on plain HTTP needs."""

import os

os.environ.setdefault("SECRET_KEY", "flowscope-tests-only-not-a-secret-0123456789abcdefghijklmnop")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# The browser tests sign in over plain HTTP on 127.0.0.1.
os.environ.setdefault("SESSION_COOKIE_SECURE", "0")
os.environ.setdefault("CSRF_COOKIE_SECURE", "0")
# The tooling (bench, lab, demo commands) and the demo catalog are under test too.
os.environ.setdefault("FLOWSCOPE_EXTRA_APPS", "tooling,tooling.lab,examples.demo")
os.environ.setdefault("FLOWS_MODULES", "examples.demo.catalog")

# BROKER=rabbitmq runs the suite on the machine's RabbitMQ, in a vhost of the run's own
# (tests/conftest.py makes it); the broker's kind is settled when the settings load.
if os.environ.get("BROKER", "redis") == "rabbitmq":
    os.environ.setdefault("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
elif os.environ.get("BROKER", "redis") != "redis":
    raise RuntimeError(f"BROKER must be redis or rabbitmq, not {os.environ['BROKER']!r}")

from console.settings import *  # noqa: E402,F403

# The suite posts foreign spans to /v1/traces without a token; production refuses that unless
# opened (tests/test_otlp_receiver.py closes it again to test the refusal). A setting, not the
# environment, so the deploy checks run in subprocesses see production's default.
TRACING_OTLP_OPEN = True

# A reliability check may start a worker on a broker transport with a fault hook in it
# (tests/reliability/kill_on_take.py); every other process runs on the configured one.
if os.environ.get("FLOWS_TEST_BROKER_TRANSPORT"):
    CELERY_BROKER_TRANSPORT = os.environ["FLOWS_TEST_BROKER_TRANSPORT"]

# On PostgreSQL a test database named per run (SQLite's file already is, in console.settings):
# Django's fixed test_<name> made two runs on one server drop each other's database, and a
# second run fail at creation while the first one used it.
if DATABASES["default"]["ENGINE"] != "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"[:63]}  # noqa: F405
# Between committing tests, DELETE instead of TRUNCATE (tests/postgresql_backend/base.py says why).
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":  # noqa: F405
    DATABASES["default"]["ENGINE"] = "tests.postgresql_backend"  # noqa: F405
