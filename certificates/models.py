"""Server and CA certificates.

What the pages show (subject, SANs, key type, expiry) is extracted once at upload and stored in
columns, so the list can be searched and sorted without parsing PEM on every request. The private
key is stored only as a Fernet token.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.urls import reverse
from django.utils import timezone

from certificates import keystore
from console.ids import new_id

EXPIRY_WARNING = timedelta(days=30)


def new_certificate_id() -> str:
    return new_id("cert")


class Certificate(models.Model):
    class Kind(models.TextChoices):
        SERVER = "server", "Server Certificate"
        CA = "ca", "CA Certificate"

    id = models.CharField(
        primary_key=True, max_length=16, default=new_certificate_id, editable=False
    )
    name = models.CharField(max_length=128)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    certificate_pem = models.TextField()
    chain_pem = models.TextField(blank=True, default="")
    private_key_token = models.TextField(blank=True, default="", editable=False)

    subject = models.CharField(max_length=1024)
    issuer = models.CharField(max_length=1024)
    common_name = models.CharField(max_length=255, blank=True, default="")
    primary_domain = models.CharField(max_length=255, blank=True, default="")
    sans = models.JSONField(default=list, blank=True)
    serial = models.CharField(max_length=128)
    fingerprint_sha256 = models.CharField(max_length=95)
    key_algorithm = models.CharField(max_length=16)
    key_size = models.PositiveIntegerField()
    key_type = models.CharField(max_length=16)
    not_before = models.DateTimeField()
    not_after = models.DateTimeField()
    chain_summary = models.JSONField(default=list, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        return reverse("certificate-detail", args=[self.id])

    @property
    def is_server(self) -> bool:
        return self.kind == self.Kind.SERVER

    @property
    def is_expired(self) -> bool:
        return self.not_after <= timezone.now()

    @property
    def expires_soon(self) -> bool:
        return not self.is_expired and self.not_after - timezone.now() < EXPIRY_WARNING

    @property
    def other_san_count(self) -> int:
        return max(0, len([name for name in self.sans if name != self.primary_domain]))

    def private_key_pem(self) -> str:
        """The decrypted key, for the snapshot builder only; never rendered."""
        return keystore.decrypt_private_key(self.private_key_token)

    def apply_validated(self, validated) -> None:
        """Copy a validation result (server or CA) onto this row, encrypting the key."""
        info = validated.info
        self.certificate_pem = validated.certificate_pem
        self.subject = info.subject
        self.issuer = info.issuer
        self.common_name = info.common_name or ""
        self.primary_domain = info.primary_domain or ""
        self.sans = list(info.sans)
        self.serial = info.serial
        self.fingerprint_sha256 = info.fingerprint_sha256
        self.key_algorithm = info.key_algorithm
        self.key_size = info.key_size
        self.key_type = info.key_type
        self.not_before = info.not_before
        self.not_after = info.not_after
        private_key = getattr(validated, "private_key_pem", "")
        self.private_key_token = keystore.encrypt_private_key(private_key) if private_key else ""
        self.chain_pem = getattr(validated, "chain_pem", "")
        self.chain_summary = [
            {"subject": link.subject, "not_after": link.not_after.isoformat()}
            for link in getattr(validated, "chain", ())
        ]

    def listeners_using(self):
        """Listeners that use this certificate as default, SNI or CA certificate."""
        from listeners.models import Listener

        return Listener.objects.filter(
            models.Q(default_certificate=self)
            | models.Q(additional_certificates=self)
            | models.Q(ca_certificate=self)
        ).distinct()
