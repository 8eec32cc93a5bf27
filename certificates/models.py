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
# A revocation list whose next update is this close is flagged: once it passes, the node refuses
# every client certificate of that CA until a current CRL is uploaded or fetched.
CRL_WARNING = timedelta(days=7)


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
    # CA certificates: one line per revocation list, kept by certificates/revocation.py with the
    # rows, so the audit log's diff of a CRL change says what changed.
    crl_summary = models.JSONField(default=list, blank=True, editable=False)

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


class CertificateRevocationList(models.Model):
    """A CRL a CA certificate carries for mutual TLS: the CA's own, or an intermediate's below it.

    One per issuer and CA certificate; a newer CRL of the same issuer replaces the stored one.
    """

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        URL = "url", "Distribution Point URL"

    ca_certificate = models.ForeignKey(
        Certificate, on_delete=models.CASCADE, related_name="revocation_lists"
    )
    issuer = models.CharField(max_length=1024)
    # The intermediates from the issuer up to the CA (PEM), "" when the CA signed the CRL.
    issuer_chain_pem = models.TextField(blank=True, default="")
    issuer_chain_subjects = models.JSONField(default=list, blank=True)
    der = models.BinaryField()
    fingerprint_sha256 = models.CharField(max_length=95)
    crl_number = models.CharField(max_length=64, blank=True, default="")
    this_update = models.DateTimeField()
    next_update = models.DateTimeField()
    revoked_count = models.PositiveIntegerField()
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.UPLOAD)
    url = models.URLField(max_length=2048, blank=True, default="")
    fetched_at = models.DateTimeField(null=True, blank=True)
    last_fetch_error = models.TextField(blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ca_certificate", "issuer"]
        constraints = [
            models.UniqueConstraint(
                fields=["ca_certificate", "issuer"], name="one_crl_per_issuer_and_ca"
            )
        ]

    def __str__(self) -> str:
        return f"CRL of {self.issuer}"

    @property
    def is_expired(self) -> bool:
        return self.next_update <= timezone.now()

    @property
    def expires_soon(self) -> bool:
        return not self.is_expired and self.next_update - timezone.now() < CRL_WARNING

    @property
    def signed_by_ca(self) -> bool:
        return not self.issuer_chain_pem

    def summary(self) -> dict:
        """The line of `Certificate.crl_summary` for this CRL."""
        return {
            "issuer": self.issuer,
            "crl_number": self.crl_number,
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "revoked": self.revoked_count,
            "source": self.source,
            "url": self.url,
            "fingerprint_sha256": self.fingerprint_sha256,
        }


from certificates import acme_models  # noqa: E402, F401 (the ACME models register with the app)
