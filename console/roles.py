"""Two roles: Administrators change anything, Viewers only read.

Enforced once, in middleware, for every unsafe method, so a view that forgets a check still
cannot be used by a viewer to change something.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

ADMINISTRATORS = "Administrators"
VIEWERS = "Viewers"
ROLES = {"admin": ADMINISTRATORS, "viewer": VIEWERS}

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Signing out changes nothing of the product's state, so viewers may do it.
ALWAYS_ALLOWED_PATHS = frozenset({"/accounts/logout/", "/accounts/login/"})
# A user's own API tokens are credentials, not the product's state: a Viewer creates and revokes
# their own (console.tokens refuses them an administrator token, and revokes only their own).
OWN_CREDENTIALS_PREFIX = "/tokens/"


def ensure_role_groups() -> None:
    """The groups are created by a migration; this re-creates them where they were removed."""
    from django.contrib.auth.models import Group

    for name in (ADMINISTRATORS, VIEWERS):
        Group.objects.get_or_create(name=name)


def is_administrator(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_is_administrator", None)
    if cached is None:
        cached = user.groups.filter(name=ADMINISTRATORS).exists()
        user._is_administrator = cached
    return cached


def forbidden(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "403.html",
        {"reason": "Your role is Viewer: you can see everything but change nothing."},
        status=403,
    )


class ReadOnlyForViewersMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if (
            request.method not in SAFE_METHODS
            and request.path not in ALWAYS_ALLOWED_PATHS
            and not request.path.startswith(OWN_CREDENTIALS_PREFIX)
            and request.user.is_authenticated
            and not is_administrator(request.user)
        ):
            return forbidden(request)
        return self.get_response(request)
