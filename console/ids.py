"""Resource IDs in the cloud consoles' form: a type prefix and eight lowercase characters."""

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str) -> str:
    """Return an ID such as ``lb-3k9x0q2m``; 36**8 values make collisions negligible."""
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
