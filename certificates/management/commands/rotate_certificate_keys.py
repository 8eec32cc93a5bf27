"""Re-encrypt every stored private key under the newest CERT_ENCRYPTION_KEYS key."""

from __future__ import annotations

from django.core.management.base import BaseCommand
from django.db import transaction

from certificates import keystore
from certificates.acme_models import AcmeAccount
from certificates.models import Certificate


class Command(BaseCommand):
    help = (
        "Rotate stored private keys (certificates and ACME accounts) to the first key in "
        "CERT_ENCRYPTION_KEYS. Afterwards the older keys can be removed from the setting."
    )

    def handle(self, *args: object, **options: object) -> None:
        rotated = accounts = 0
        with transaction.atomic():
            for certificate in Certificate.objects.select_for_update().exclude(
                private_key_token=""
            ):
                certificate.private_key_token = keystore.rotate_token(certificate.private_key_token)
                certificate.save(update_fields=["private_key_token"])
                rotated += 1
            # ACME account keys sign every renewal order: left under a dropped key, renewals
            # would fail once the old key leaves the setting.
            for account in AcmeAccount.objects.select_for_update():
                account.private_key_token = keystore.rotate_token(account.private_key_token)
                account.save(update_fields=["private_key_token"])
                accounts += 1
        self.stdout.write(
            f"Rotated {rotated} private keys and {accounts} ACME account keys "
            "to the newest encryption key."
        )
