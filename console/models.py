"""Load balancer instances: the unit that owns listeners and receives one snapshot."""

from __future__ import annotations

from functools import cached_property

from django.db import models
from django.db.models import F

from console.ids import new_id


def new_instance_id() -> str:
    return new_id("lb")


class Instance(models.Model):
    class Edition(models.TextChoices):
        BASIC = "basic", "Basic"
        STANDARD = "standard", "Standard"

    id = models.CharField(primary_key=True, max_length=16, default=new_instance_id, editable=False)
    name = models.CharField(max_length=128)
    edition = models.CharField(max_length=16, choices=Edition.choices, default=Edition.STANDARD)
    bind_address = models.GenericIPAddressField(
        default="127.0.0.1",
        help_text="Address the dataplane binds this instance's listeners on.",
    )
    listener_quota = models.PositiveIntegerField(default=50)
    # Seed 000: the listeners' bandwidth limits may not add up to more than the instance's.
    bandwidth_mbit = models.PositiveIntegerField(null=True, blank=True)
    # Desired configuration version. Every change to a listener or to something a listener uses
    # bumps it in the same transaction; nodes report the generation they applied.
    generation = models.PositiveBigIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def bump_generation(self) -> int:
        """Increase the generation atomically and return the new value.

        Must run inside the transaction that saves the change, so the generation and the
        desired state can never disagree.
        """
        Instance.objects.filter(pk=self.pk).update(generation=F("generation") + 1)
        self.refresh_from_db(fields=["generation"])
        return self.generation

    @staticmethod
    def bump_generations(instance_ids: set[str]) -> None:
        """Bump several instances at once, e.g. when a shared certificate changes."""
        if instance_ids:
            Instance.objects.filter(pk__in=instance_ids).update(generation=F("generation") + 1)

    @cached_property
    def node_reports(self) -> list[DataplaneNode]:
        """The nodes as read once: every listener status on a page derives from the same rows."""
        return list(self.nodes.all())

    @property
    def supports_mutual_authentication(self) -> bool:
        # Seed 001: Basic edition instances support neither mutual authentication nor
        # Retrieve Client IP.
        return self.edition == self.Edition.STANDARD


class DataplaneNode(models.Model):
    """A dataplane process that serves an instance: where to reach it and what it last said."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="nodes")
    name = models.CharField(max_length=64)
    control_url = models.URLField(
        help_text="Base URL of the node's control API, e.g. http://127.0.0.1:9901"
    )
    # The bearer token, Fernet-encrypted like private keys: it grants full control of the node.
    token_encrypted = models.TextField(editable=False)
    applied_generation = models.PositiveBigIntegerField(null=True, blank=True)
    reachable = models.BooleanField(default=False)
    last_contact = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    # When the node stopped answering (cleared by its next answer), for "unreachable since".
    unreachable_since = models.DateTimeField(null=True, blank=True)
    # When the pipeline last tried the node (a push, or reconcile reading its status), answered
    # or not: older than two reconcile intervals means nothing is watching it (no worker, or the
    # broker is down).
    checked_at = models.DateTimeField(null=True, blank=True)
    # The node's latest per-listener state ({listener_id: {status, reason}}), from its answer to
    # a push or from /v1/status, whichever is newer (``results_at``); ``acked_generation`` is the
    # generation it answered. Listener statuses are derived from these across all nodes.
    acked_generation = models.PositiveBigIntegerField(null=True, blank=True)
    listener_results = models.JSONField(default=dict, blank=True)
    results_at = models.DateTimeField(null=True, blank=True)
    # The last two /v1/status answers, so the details page can show rates.
    status_report = models.JSONField(default=dict, blank=True)
    status_report_at = models.DateTimeField(null=True, blank=True)
    previous_report = models.JSONField(default=dict, blank=True)
    previous_report_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "name"], name="node_name_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.control_url})"

    @property
    def token(self) -> str:
        from certificates.keystore import decrypt_private_key

        return decrypt_private_key(self.token_encrypted)

    @token.setter
    def token(self, value: str) -> None:
        from certificates.keystore import encrypt_private_key

        self.token_encrypted = encrypt_private_key(value)


class PushAttempt(models.Model):
    """One PUT of a snapshot to one node, kept so the console can show what happened."""

    class Result(models.TextChoices):
        ACK = "ack", "Applied"
        NACK = "nack", "Rejected"
        UNREACHABLE = "unreachable", "Unreachable"

    node = models.ForeignKey(DataplaneNode, on_delete=models.CASCADE, related_name="attempts")
    generation = models.PositiveBigIntegerField()
    started_at = models.DateTimeField(auto_now_add=True)
    duration_ms = models.PositiveIntegerField(default=0)
    result = models.CharField(max_length=16, choices=Result.choices)
    detail = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["node", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.node.name} g{self.generation} {self.result}"


class ApiToken(models.Model):
    """A personal API token: sent as ``Authorization: Bearer``, shown once, stored hashed.

    Tokens are 256-bit random secrets, so one SHA-256 is enough to store them (a slow password
    hash protects guessable secrets, and none of these is guessable). ``prefix`` is the public
    start of the token, shown in the list so the operator can tell tokens apart.
    """

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer (read only)"
        ADMIN = "admin", "Administrator"

    user = models.ForeignKey(
        "auth.User", on_delete=models.CASCADE, related_name="api_tokens", editable=False
    )
    name = models.CharField(max_length=64)
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.VIEWER)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def usable(self, now) -> bool:
        return self.revoked_at is None and self.expires_at > now


class ClientToken(models.Model):
    """A create request's idempotency key (the cloud APIs' ClientToken): a retry with the same
    key and body answers with the listener the first request created."""

    user = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=64)
    request_hash = models.CharField(max_length=64)
    listener_id = models.CharField(max_length=16)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="client_token_unique")]

    def __str__(self) -> str:
        return f"{self.key} → {self.listener_id}"


class AuditRecord(models.Model):
    """One change made from the console or the API: when, who, to what, and the diff.

    Written by the service functions in the transaction of the change, so a change and its record
    commit or roll back together. Nothing in the console or the API edits or deletes a record.
    """

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Kept as text too, so the record outlives the user or token it names.
    actor = models.CharField(max_length=255)
    user = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField(max_length=16)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=32)
    object_id = models.CharField(max_length=64, db_index=True)
    object_name = models.CharField(max_length=255, blank=True, default="")
    # {field: {"before": value, "after": value}}, secrets shown as "[redacted]".
    changes = models.JSONField(default=dict)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_id}"


class PushCounter(models.Model):
    """Running totals of the pushes to one node, by result and by latency bucket.

    PushAttempt keeps only the last attempts of a node; these counts only ever grow (until the
    node is removed), so the console's /metrics can expose real Prometheus counters and a latency
    histogram. One row per (node, result, bucket): ``bucket`` is the index of the smallest bound
    in console.prometheus.PUSH_BUCKETS a push fitted under (len(PUSH_BUCKETS): slower than all).
    """

    node = models.ForeignKey(DataplaneNode, on_delete=models.CASCADE, related_name="+")
    result = models.CharField(max_length=16, choices=PushAttempt.Result.choices)
    bucket = models.PositiveSmallIntegerField()
    count = models.PositiveBigIntegerField(default=0)
    seconds = models.FloatField(default=0.0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["node", "result", "bucket"], name="push_counter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.node_id} {self.result} bucket {self.bucket}: {self.count}"


class TrafficSample(models.Model):
    """One node's counters for one listener at one sampling tick (console.sampling).

    Counters are the node's cumulative values as reported, so rates come from the difference of
    two samples and survive a lost sample; a node that restarted starts again from zero, which
    ``uptime`` (the node's, smaller than in the sample before) and a counter going down reveal.
    Gauges are the values at the tick. Kept for TRAFFIC_RETENTION seconds.
    """

    listener = models.ForeignKey("listeners.Listener", on_delete=models.CASCADE, related_name="+")
    node = models.ForeignKey(DataplaneNode, on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField()
    uptime = models.FloatField()
    # Cumulative counters.
    requests = models.PositiveBigIntegerField(default=0)
    responses_1xx = models.PositiveBigIntegerField(default=0)
    responses_2xx = models.PositiveBigIntegerField(default=0)
    responses_3xx = models.PositiveBigIntegerField(default=0)
    responses_4xx = models.PositiveBigIntegerField(default=0)
    responses_5xx = models.PositiveBigIntegerField(default=0)
    bytes_in = models.PositiveBigIntegerField(default=0)
    bytes_out = models.PositiveBigIntegerField(default=0)
    total_connections = models.PositiveBigIntegerField(default=0)
    # Gauges.
    active_connections = models.PositiveIntegerField(default=0)
    servers = models.PositiveIntegerField(default=0)
    healthy_servers = models.PositiveIntegerField(default=0)
    # The request-duration histogram, cumulative: {"buckets": [upper bounds in seconds],
    # "counts": [requests at or under each bound], "count": all requests, "sum": seconds}; null
    # when the node reports none.
    latency = models.JSONField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["listener", "at"], name="traffic_listener_at"),
            models.Index(fields=["at"], name="traffic_at"),
        ]

    def __str__(self) -> str:
        return f"{self.listener_id} on {self.node_id} at {self.at:%Y-%m-%d %H:%M:%S}"
