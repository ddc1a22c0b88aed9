"""The settings read the environment (the deploy check itself is check 13 of tests/reliability)."""

import os
import subprocess
import sys

from tests.support import REPO


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The test run's own relaxations (tests/settings.py puts them in the environment) stay out.
    relaxed = ("DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DEBUG", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "ALLOWED_HOSTS")
    base = {k: v for k, v in os.environ.items() if k not in relaxed}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_without_a_secret_key_production_refuses_to_start_and_says_how_to_fix_it():
    result = manage("check", DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_nonsense_in_the_environment_is_named():
    result = manage("check", DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr
    result = manage("check", DEBUG="1", FLOWS_MAX_PAYLOAD_BYTES="lots")
    assert "FLOWS_MAX_PAYLOAD_BYTES='lots' is not a whole number" in result.stderr


def test_database_url_chooses_the_database():
    result = manage("shell", "-c", "from django.db import connection; print(connection.vendor, connection.settings_dict['NAME'])", DEBUG="1", DATABASE_URL="postgres://u@db.example:5432/flows")
    assert result.stdout.strip().endswith("postgresql flows"), result.stderr
