"""Re-encrypt every stored private key under the newest CERT_ENCRYPTION_KEYS key."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from certificates import keystore
from certificates.models import Certificate


class Command(BaseCommand):
    help = (
        "Rotate stored private keys to the first key in CERT_ENCRYPTION_KEYS. Afterwards the "
        "older keys can be removed from the setting."
    )

    def handle(self, *args: object, **options: object) -> None:
        rotated = 0
        with transaction.atomic():
            for certificate in Certificate.objects.select_for_update().exclude(
                private_key_token=""
            ):
                certificate.private_key_token = keystore.rotate_token(certificate.private_key_token)
                certificate.save(update_fields=["private_key_token"])
                rotated += 1
        self.stdout.write(f"Rotated {rotated} private keys to the newest encryption key.")
