"""Check 13: Django's deploy checks against the production settings find nothing, not even a warning.

The settings run in a subprocess, as a deployment would start them: DEBUG off, a real secret key,
a host name, and none of the relaxations the test run puts in the environment (tests/settings.py).
"""

from __future__ import annotations

import pytest

from tests.test_settings import manage

pytestmark = pytest.mark.portable  # the settings, whatever the broker: CI checks them on Redis only

PRODUCTION = {"DEBUG": "0", "SECRET_KEY": "s" * 20 + "0123456789abcdefghijklmnopqrstuvwxyzABCD", "ALLOWED_HOSTS": "flowscope.example.com"}
COUNT_CHECKS = "from django.core.checks import registry; print(len(registry.registry.get_checks(include_deployment_checks=True)), len(registry.registry.get_checks()))"


def test_production_settings_pass_check_deploy_with_no_warnings(figure):
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout
    counted = manage("shell", "-c", COUNT_CHECKS, **PRODUCTION)
    with_deploy, without = (int(n) for n in counted.stdout.splitlines()[-1].split())
    assert with_deploy > without  # the deploy checks did run
    figure(f"manage.py check --deploy --fail-level WARNING: {with_deploy} checks ({with_deploy - without} deploy-only), 0 warnings, 0 silenced")


def test_the_deploy_check_does_fail_on_an_insecure_setting():
    # The control: the same run with HSTS switched off must warn, or the check above proves nothing.
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, SECURE_HSTS_SECONDS="0")
    assert result.returncode != 0 and "security.W004" in result.stdout + result.stderr, result.stdout + result.stderr
