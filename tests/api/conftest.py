"""API clients: a personal token of each role, sent as a Bearer header."""

from __future__ import annotations

import pytest
from django.test import Client

from console import tokens


class TokenClient(Client):
    """A test client that sends a Bearer token and JSON bodies, and no session or CSRF token."""

    def __init__(self, secret: str) -> None:
        super().__init__(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {secret}")

    def send(self, method: str, path: str, body=None):
        kwargs = {"content_type": "application/json"} if body is not None else {}
        return (
            getattr(self, method)(path, body, **kwargs)
            if body is not None
            else getattr(self, method)(path)
        )


@pytest.fixture
def admin_token(admin_user) -> str:
    return tokens.issue_token(user=admin_user, name="ci", role="admin", days=30).secret


@pytest.fixture
def viewer_token(admin_user) -> str:
    return tokens.issue_token(user=admin_user, name="read", role="viewer", days=30).secret


@pytest.fixture
def api(admin_token) -> TokenClient:
    return TokenClient(admin_token)


@pytest.fixture
def viewer_api(viewer_token) -> TokenClient:
    return TokenClient(viewer_token)
