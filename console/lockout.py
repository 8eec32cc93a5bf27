"""What a client sees once django-axes has throttled its sign-ins.

Failures are counted per user name and client address together (settings: AXES_*): someone
guessing the admin's password from one address is stopped there, while the admin signing in from
elsewhere, and other users behind the same address, are not locked out by it.
"""

from __future__ import annotations

import math
from datetime import datetime

from axes.helpers import get_client_username, get_cool_off
from axes.models import AccessAttempt
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


def client_address(request: HttpRequest) -> str | None:
    """The peer's address: X-Forwarded-For is whatever the client chose to send."""
    return request.META.get("REMOTE_ADDR")


def retry_at(request: HttpRequest, username: str) -> datetime:
    """When this user may sign in again from this address: the cool-off after the last counted
    failure (failures while locked out do not extend it)."""
    cool_off = get_cool_off(request)
    address = getattr(request, "axes_ip_address", None) or client_address(request)
    last = (
        AccessAttempt.objects.filter(username=username, ip_address=address)
        .order_by("-attempt_time")
        .values_list("attempt_time", flat=True)
        .first()
    )
    return (last or timezone.now()) + cool_off


def locked_out(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict | None = None,
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page again, saying when to retry (429, Retry-After)."""
    username = get_client_username(request, credentials) or ""
    when = retry_at(request, username)
    seconds = max(0, math.ceil((when - timezone.now()).total_seconds()))
    minutes = max(1, math.ceil(seconds / 60))
    message = (
        f"Too many failed sign-ins for {username} from your address. Try again after "
        f"{when:%H:%M} UTC (in {minutes} minute{'s' if minutes != 1 else ''})."
    )
    form = AuthenticationForm(request, initial={"username": username})
    response = render(
        request,
        "registration/login.html",
        {"form": form, "lockout": message, "next": request.POST.get("next", "")},
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response
