"""Named people of each role, and API tokens, for the console and API tests."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client

from console.models import ApiToken
from console.roles import set_role


def person(role: str | None, name: str = "") -> User:
    name = name or f"{role or 'norole'}-user"
    if User.objects.filter(username=name).exists():
        name = f"{name}-{User.objects.count()}"
    user = User.objects.create_user(name, password="a-long-test-password")
    if role:
        set_role(user, role)
    return user


def client_for(role: str | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(person(role))
    return client


def token_for(role: str) -> str:
    return ApiToken.issue(name=f"{role} script", role=role, created_by="tests")[1]
