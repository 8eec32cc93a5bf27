"""Personal API tokens: issued on the Tokens page, shown once, stored as a SHA-256 hash.

A token acts for the user who made it, never with more rights than that user has now: an
Administrator's viewer token only reads, and a token of a user later made a Viewer only reads.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from console.audit import UPDATE, audited
from console.models import ApiToken
from console.roles import is_administrator

# "ferry_" makes a leaked token recognisable to secret scanners; the prefix that follows is
# stored in clear so the list can show which token is which.
TOKEN_START = "ferry_"
PREFIX_LENGTH = 8
EXPIRY_CHOICES = ((7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year"))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    secret: str  # the whole token: shown once, never stored


@transaction.atomic
@audited("token.create", ApiToken, created=lambda issued: issued.token)
def issue_token(*, user: AbstractBaseUser, name: str, role: str, days: int) -> IssuedToken:
    if role == ApiToken.Role.ADMIN and not is_administrator(user):
        raise PermissionError("Only administrators can create administrator tokens.")
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    secret = f"{TOKEN_START}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        user=user,
        name=name,
        role=role,
        prefix=f"{TOKEN_START}{prefix}",
        key_hash=hash_token(secret),
        expires_at=timezone.now() + timedelta(days=days),
    )
    return IssuedToken(token=token, secret=secret)


@transaction.atomic
@audited("token.revoke", ApiToken, key="token_id", lock=UPDATE)
def revoke_token(*, user: AbstractBaseUser, token_id: int) -> ApiToken | None:
    """Revoke one of the user's own tokens; it is refused (401) from then on."""
    token = ApiToken.objects.select_for_update().filter(pk=token_id, user=user).first()
    if token is not None and token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def authenticate(secret: str) -> ApiToken | None:
    """The active token with this secret, or None (unknown, revoked, expired, inactive user)."""
    if not secret.startswith(TOKEN_START):
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_token(secret)).first()
    now = timezone.now()
    if token is None or not token.usable(now) or not token.user.is_active:
        return None
    # At most once a minute, so a busy script does not write on every request.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token


def can_write(token: ApiToken) -> bool:
    return token.role == ApiToken.Role.ADMIN and is_administrator(token.user)
