"""Private keys encrypted at rest with MultiFernet.

The keys come from CERT_ENCRYPTION_KEYS, newest first: new tokens use the first key, and every
listed key can still decrypt, so a key can be added, everything rotated, and the old key dropped.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class KeystoreError(RuntimeError):
    """A stored private key cannot be decrypted with any configured key."""


@lru_cache(maxsize=4)
def _multifernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise KeystoreError("CERT_ENCRYPTION_KEYS is empty: no key to encrypt private keys.")
    return MultiFernet([Fernet(key.encode()) for key in keys])


def current() -> MultiFernet:
    return _multifernet(tuple(settings.CERT_ENCRYPTION_KEYS))


def encrypt_private_key(pem: str) -> str:
    return current().encrypt(pem.encode()).decode("ascii")


def decrypt_private_key(token: str) -> str:
    try:
        return current().decrypt(token.encode("ascii")).decode()
    except InvalidToken as exc:
        raise KeystoreError(
            "This private key was encrypted with a key that is not in CERT_ENCRYPTION_KEYS."
        ) from exc


def rotate_token(token: str) -> str:
    """Re-encrypt ``token`` under the newest key."""
    try:
        return current().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken as exc:
        raise KeystoreError("A stored private key cannot be decrypted with any key.") from exc
