"""Certificates issued and renewed through ACME (RFC 8555).

- `AcmeAccount`: one account per CA directory and contact address; its key is kept as a Fernet
  token like certificate private keys (certificates/keystore.py).
- `AcmeIssuance`: what to ask for (names, CA, challenge type, the instance whose dataplane answers
  the challenges) and when to renew; `certificate` is set by the first successful order.
- `AcmeAttempt`: every order, first issuance or renewal, with its progress and outcome, shown on
  the certificate's page.
- `AcmeChallenge`: a challenge the instance's nodes answer while its order is being validated;
  the snapshot builder (console/snapshot.py) reads these rows, and they are deleted afterwards.
- `CertificateAlert`: one webhook event (a certificate's or CRL's expiry warning, a failed
  renewal) and its deliveries.
"""

from __future__ import annotations

from django.db import models
from django.urls import reverse

from certificates import keystore
from console.ids import new_id

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def new_issuance_id() -> str:
    return new_id("acme")


class AcmeAccount(models.Model):
    directory_url = models.URLField(max_length=500)
    email = models.EmailField()
    private_key_token = models.TextField(editable=False)
    uri = models.URLField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["directory_url", "email"], name="acme_account_per_ca")
        ]

    def __str__(self) -> str:
        return f"{self.email} at {self.directory_url}"

    def private_key_pem(self) -> str:
        return keystore.decrypt_private_key(self.private_key_token)


class AcmeIssuance(models.Model):
    class Challenge(models.TextChoices):
        HTTP_01 = "http-01", "HTTP-01 (HTTP listener on port 80)"
        TLS_ALPN_01 = "tls-alpn-01", "TLS-ALPN-01 (HTTPS listener on port 443)"

    class KeyAlgorithm(models.TextChoices):
        ECDSA_P256 = "ec-p256", "ECDSA P-256"
        RSA_2048 = "rsa-2048", "RSA 2048"

    id = models.CharField(primary_key=True, max_length=16, default=new_issuance_id, editable=False)
    name = models.CharField(max_length=128)
    certificate = models.OneToOneField(
        "certificates.Certificate",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="acme",
    )
    domains = models.JSONField(default=list)
    directory_url = models.URLField(max_length=500)
    email = models.EmailField()
    challenge = models.CharField(max_length=16, choices=Challenge.choices)
    instance = models.ForeignKey(
        "console.Instance", null=True, on_delete=models.SET_NULL, related_name="acme_issuances"
    )
    key_algorithm = models.CharField(
        max_length=16, choices=KeyAlgorithm.choices, default=KeyAlgorithm.ECDSA_P256
    )
    auto_renew = models.BooleanField(default=True)
    # When the current certificate is due for renewal: two thirds of its lifetime, or the CA's
    # ARI window when it offers one.
    renew_at = models.DateTimeField(null=True, blank=True)
    # After a failed attempt: the next try, with backoff; cleared by a success.
    retry_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        if self.certificate_id:
            return reverse("certificate-detail", args=[self.certificate_id])
        return reverse("acme-issuance", args=[self.id])

    @property
    def recent_attempts(self) -> list[AcmeAttempt]:
        if not hasattr(self, "_recent_attempts"):
            self._recent_attempts = list(self.attempts.order_by("-created_at", "-pk")[:20])
        return self._recent_attempts

    @property
    def in_progress(self) -> bool:
        return any(attempt.in_progress for attempt in self.recent_attempts)

    @property
    def directory_label(self) -> str:
        return {LETS_ENCRYPT: "Let's Encrypt", LETS_ENCRYPT_STAGING: "Let's Encrypt (staging)"}.get(
            self.directory_url, self.directory_url
        )


class AcmeAttempt(models.Model):
    class Kind(models.TextChoices):
        ISSUE = "issue", "Issue"
        RENEW = "renew", "Renew"

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    issuance = models.ForeignKey(AcmeIssuance, on_delete=models.CASCADE, related_name="attempts")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED)
    # What a running attempt is doing, for the page's progress line.
    step = models.CharField(max_length=255, blank=True, default="")
    # The outcome: the new certificate's serial, or what failed and why.
    message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.issuance_id} ({self.state})"

    @property
    def in_progress(self) -> bool:
        return self.state in (self.State.QUEUED, self.State.RUNNING)


class AcmeChallenge(models.Model):
    attempt = models.ForeignKey(AcmeAttempt, on_delete=models.CASCADE, related_name="challenges")
    instance = models.ForeignKey(
        "console.Instance", on_delete=models.CASCADE, related_name="acme_challenges"
    )
    type = models.CharField(max_length=16, choices=AcmeIssuance.Challenge.choices)
    domain = models.CharField(max_length=253)
    token = models.CharField(max_length=256)
    key_authorization = models.CharField(max_length=320)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return f"{self.type} {self.domain}"


class CertificateAlert(models.Model):
    """A JSON event for the webhook: an expiry warning or a failed renewal, with its delivery."""

    class Event(models.TextChoices):
        EXPIRES_SOON = "certificate.expires_soon", "Expires soon"
        RENEWAL_FAILED = "certificate.renewal_failed", "Renewal failed"
        CRL_EXPIRES_SOON = "crl.expires_soon", "CRL expires soon"

    class Delivery(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        NOT_CONFIGURED = "not_configured", "No webhook configured"

    event = models.CharField(max_length=40, choices=Event.choices)
    certificate = models.ForeignKey(
        "certificates.Certificate",
        null=True,
        on_delete=models.SET_NULL,
        related_name="alerts",
    )
    # One expiry warning per certificate, threshold (30 or 7 days) and expiry date.
    dedupe_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    payload = models.JSONField()
    delivery = models.CharField(max_length=16, choices=Delivery.choices, default=Delivery.PENDING)
    delivery_attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.event} {self.certificate_id}"
