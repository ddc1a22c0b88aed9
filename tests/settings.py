"""The production settings, with the few values a test run on plain HTTP needs."""

import os

os.environ.setdefault("SECRET_KEY", "flowscope-tests-only-not-a-secret-0123456789abcdefghijklmnop")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,testserver")
# The browser tests sign in over plain HTTP on 127.0.0.1.
os.environ.setdefault("SESSION_COOKIE_SECURE", "0")
os.environ.setdefault("CSRF_COOKIE_SECURE", "0")

from console.settings import *  # noqa: E402,F403
