"""Who calls the API: a personal token (``Authorization: Bearer``) or a browser session.

The middleware answers every /api/ request that it refuses with a problem document, before the
console's LoginRequiredMiddleware (which would redirect to the sign-in page) and its Viewer
middleware (which would answer an HTML page):

- a Bearer token must be known, unrevoked and unexpired (else 401); it needs no CSRF token, as
  a browser never sends it on its own;
- without one, a signed-in session is used, and its writes need the CSRF token as the pages'
  forms do (else 403);
- writes need an administrator, and with a token also an administrator token (else 403);
- a body over the endpoint's limit gets 413 before it is read (``body_limit``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from io import BytesIO
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from ninja.security import HttpBearer

from certificates.revocation import MAX_CRL_BYTES
from console import tokens
from console.api.problems import problem_response
from console.backup import MAX_DOCUMENT_BYTES
from console.roles import SAFE_METHODS, is_administrator

API_PREFIX = "/api/"
# Bodies are JSON settings or PEM certificates (64 KiB per field); larger ones are refused
# before they are read.
API_MAX_BODY_BYTES = getattr(settings, "API_MAX_BODY_BYTES", 1024 * 1024)
# The two bodies that carry more than settings, each with a limit that fits what the console
# itself accepts: an import carries a whole exported document (the export refuses to write one
# over MAX_DOCUMENT_BYTES), with room for the passphrase and names around it; a CRL upload
# carries up to MAX_CRL_BYTES of PEM (the page's limit) with its issuer chain.
API_MAX_IMPORT_BYTES = MAX_DOCUMENT_BYTES + 64 * 1024
API_MAX_CRL_BYTES = MAX_CRL_BYTES + 256 * 1024
_OBJECT = r"[A-Za-z0-9_.-]{1,64}"
BODY_LIMITS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(rf"^/api/v1/instances/(?:{_OBJECT}/)?import$"), API_MAX_IMPORT_BYTES),
    (re.compile(rf"^/api/v1/certificates/{_OBJECT}/crls$"), API_MAX_CRL_BYTES),
)


def body_limit(request: HttpRequest) -> int:
    """The largest body this request may carry, in bytes."""
    if request.method == "POST":
        for path, limit in BODY_LIMITS:
            if path.match(request.path):
                return limit
    return API_MAX_BODY_BYTES


UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="ferry"'}


def _no_response(request: HttpRequest) -> None:
    return None


_csrf = CsrfViewMiddleware(_no_response)


class ApiAuthenticationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path.startswith(API_PREFIX):
            return self.get_response(request)
        refused = self.refuse(request)
        return refused if refused is not None else self.get_response(request)

    def refuse(self, request: HttpRequest) -> HttpResponse | None:
        request.api_token = None
        header = request.headers.get("Authorization", "")
        writing = request.method not in SAFE_METHODS
        if header:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                return problem_response(
                    401, "Send the token as Authorization: Bearer <token>.", headers=UNAUTHENTICATED
                )
            token = tokens.authenticate(secret.strip())
            if token is None:
                return problem_response(
                    401, "The token is unknown, revoked or expired.", headers=UNAUTHENTICATED
                )
            request.user = token.user
            request.api_token = token
            # Not a browser's ambient credential: nothing to forge, so no CSRF token needed.
            request._dont_enforce_csrf_checks = True
            may_write = tokens.can_write(token)
            role_problem = (
                "This token has the Viewer role: it can read but change nothing."
                if token.role != token.Role.ADMIN
                else "Your role is Viewer: you can see everything but change nothing."
            )
        elif request.user.is_authenticated:
            if writing and _csrf.process_view(request, None, (), {}) is not None:
                return problem_response(
                    403,
                    "CSRF verification failed: a signed-in browser must send the X-CSRFToken "
                    "header (token requests need none).",
                )
            may_write = is_administrator(request.user)
            role_problem = "Your role is Viewer: you can see everything but change nothing."
        else:
            return problem_response(
                401,
                "Sign in, or send a personal API token as Authorization: Bearer <token>.",
                headers=UNAUTHENTICATED,
            )
        if writing and not may_write:
            return problem_response(403, role_problem)
        limit = body_limit(request)
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit:
            return problem_response(413, f"The request body is larger than {limit} bytes.")
        if limit > (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or limit) and not hasattr(
            request, "_body"
        ):
            # Django's ceiling on a body read in memory (DATA_UPLOAD_MAX_MEMORY_SIZE) is sized for
            # the console's forms and is below this endpoint's own limit, checked above: read the
            # body here as request.body would, bounded by that limit instead.
            body = request.read(limit + 1)
            if len(body) > limit:
                return problem_response(413, f"The request body is larger than {limit} bytes.")
            request._body = body
            request._stream = BytesIO(body)
        return None


class ConsoleAuth(HttpBearer):
    """Declares Bearer auth in the OpenAPI document; the middleware has already decided.

    ``csrf`` makes the API reference page send the CSRF token, so "Try it out" works with the
    browser's session as well as with a token (the middleware checks it, not django-ninja).
    """

    csrf = True

    def __call__(self, request: HttpRequest) -> Any:
        user = getattr(request, "user", None)
        return user if user is not None and user.is_authenticated else None

    def authenticate(self, request: HttpRequest, token: str) -> Any:  # pragma: no cover
        return None
