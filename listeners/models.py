"""Listeners and what they use: server groups, health checks, TLS policies and ACLs.

Field names, ranges and defaults follow the seeds (../shared/seeds). Where two seeds give
different ranges for the same field, the accepted range is their union, so a value valid in
either console is valid here; the defaults are the stricter seed's.
"""

from __future__ import annotations

import datetime
from functools import cached_property

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from certificates.models import Certificate
from console.ids import new_id
from console.models import Instance
from dataplane import config as snapshot_schema


def new_listener_id() -> str:
    return new_id("lsn")


def new_server_group_id() -> str:
    return new_id("sgp")


def new_acl_id() -> str:
    return new_id("acl")


def new_tls_policy_id() -> str:
    return new_id("tls")


def bounded(low: int, high: int) -> list:
    return [MinValueValidator(low), MaxValueValidator(high)]


class Scheduler(models.TextChoices):
    WRR = "weighted_round_robin", "Weighted Round-robin (WRR)"
    RR = "round_robin", "Round Robin (RR)"
    WLC = "weighted_least_connections", "Weighted Least Connections (WLC)"
    SOURCE_IP_HASH = "source_ip_hash", "Source IP Hash"


class TlsVersion(models.TextChoices):
    TLS10 = "TLSv1.0", "TLS 1.0"
    TLS11 = "TLSv1.1", "TLS 1.1"
    TLS12 = "TLSv1.2", "TLS 1.2"
    TLS13 = "TLSv1.3", "TLS 1.3"


class TlsPolicy(models.Model):
    """A TLS security policy: protocol versions and cipher suites.

    The five predefined policies are rows with ``predefined=True`` created by a migration; they
    are read-only in the console and the dataplane knows them by name.
    """

    id = models.CharField(primary_key=True, max_length=48, default=new_tls_policy_id)
    name = models.CharField(max_length=64)
    predefined = models.BooleanField(default=False, editable=False)
    min_version = models.CharField(max_length=8, choices=TlsVersion.choices)
    max_version = models.CharField(max_length=8, choices=TlsVersion.choices)
    ciphers = models.JSONField(default=list, blank=True)
    tls13_ciphersuites = models.JSONField(default=list, blank=True)
    description = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-predefined", "name"]
        verbose_name = "TLS security policy"
        verbose_name_plural = "TLS security policies"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("tlspolicy-detail", args=[self.id])

    @property
    def versions(self) -> list[str]:
        order = list(TlsVersion.values)
        return order[order.index(self.min_version) : order.index(self.max_version) + 1]

    def can_serve(self, key_algorithm: str) -> bool:
        """Whether a certificate with this key algorithm ("RSA"/"ECDSA") can be negotiated."""
        if TlsVersion.TLS13 in self.versions:
            # TLS 1.3 suites are independent of the certificate's key type.
            return True
        if key_algorithm == "ECDSA":
            return any("ECDSA" in cipher for cipher in self.ciphers)
        return any("ECDSA" not in cipher for cipher in self.ciphers)


class AccessControlList(models.Model):
    """An IP address group: CIDR entries that a listener allows (whitelist) or denies."""

    id = models.CharField(primary_key=True, max_length=16, default=new_acl_id, editable=False)
    name = models.CharField(max_length=128)
    description = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        return reverse("acl-detail", args=[self.id])


class AclEntry(models.Model):
    acl = models.ForeignKey(AccessControlList, on_delete=models.CASCADE, related_name="entries")
    cidr = models.CharField(max_length=64)
    description = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["acl", "cidr"], name="acl_entry_unique")]

    def __str__(self) -> str:
        return self.cidr


class ServerGroup(models.Model):
    class BackendProtocol(models.TextChoices):
        HTTP = "http", "HTTP"
        HTTPS = "https", "HTTPS"
        # Seed 003: for HTTPS listeners with HTTP/2 enabled.
        GRPC = "grpc", "gRPC"
        TCP = "tcp", "TCP"
        UDP = "udp", "UDP"

    id = models.CharField(
        primary_key=True, max_length=16, default=new_server_group_id, editable=False
    )
    name = models.CharField(max_length=128)
    backend_protocol = models.CharField(
        max_length=8, choices=BackendProtocol.choices, default=BackendProtocol.HTTP
    )
    description = models.CharField(max_length=255, blank=True, default="")
    # Seed 002: a server that joins or recovers gets a linearly growing share over this time.
    slow_start = models.BooleanField(default=False)
    slow_start_duration = models.PositiveSmallIntegerField(default=30, validators=bounded(30, 1200))
    # HTTPS backends (re-encrypt) are verified against this CA when set.
    backend_ca_certificate = models.ForeignKey(
        Certificate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="backend_ca_for_groups",
        limit_choices_to={"kind": Certificate.Kind.CA},
    )
    # Passive health check (outlier detection): ranges and meaning in dataplane.config PASSIVE_*.
    passive_health_check = models.BooleanField(default=False)
    passive_consecutive_failures = models.PositiveSmallIntegerField(
        default=5, validators=bounded(*snapshot_schema.PASSIVE_CONSECUTIVE_FAILURES)
    )
    passive_base_ejection_time = models.PositiveSmallIntegerField(
        default=30, validators=bounded(*snapshot_schema.PASSIVE_EJECTION_TIME)
    )
    passive_max_ejection_time = models.PositiveSmallIntegerField(
        default=300, validators=bounded(*snapshot_schema.PASSIVE_EJECTION_TIME)
    )
    passive_max_ejection_percent = models.PositiveSmallIntegerField(
        default=50, validators=bounded(*snapshot_schema.PASSIVE_MAX_EJECTION_PERCENT)
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        return reverse("servergroup-detail", args=[self.id])

    @property
    def is_grpc(self) -> bool:
        return self.backend_protocol == self.BackendProtocol.GRPC


# A draining server's deregistration delay, in seconds (AWS's target group attribute's range).
DEREGISTRATION_DELAY = (0, 3600)


class BackendServer(models.Model):
    class State(models.TextChoices):
        # Takes traffic.
        ENABLED = "enabled", "Enabled"
        # No new requests or connections; those in flight finish until the deregistration delay
        # has passed, then what remains is closed.
        DRAINING = "draining", "Draining"
        # Out at once.
        MAINTENANCE = "maintenance", "Maintenance"

    group = models.ForeignKey(ServerGroup, on_delete=models.CASCADE, related_name="servers")
    address = models.GenericIPAddressField()
    port = models.PositiveIntegerField(validators=bounded(1, 65535))
    # Seed 000: default 100; 0 means the server receives no new requests.
    weight = models.PositiveSmallIntegerField(default=100, validators=bounded(0, 100))
    description = models.CharField(max_length=255, blank=True, default="")
    state = models.CharField(max_length=12, choices=State.choices, default=State.ENABLED)
    # Per server, chosen when it is drained (default 300 s, as AWS's): a server holding long
    # downloads needs a longer one than its neighbours. Kept for its next drain.
    deregistration_delay = models.PositiveSmallIntegerField(
        default=300, validators=bounded(*DEREGISTRATION_DELAY)
    )
    # Set by the service when the drain starts; with the delay it gives the nodes' deadline.
    draining_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["group", "address", "port"], name="backend_unique")
        ]

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def server_id(self) -> str:
        return f"srv-{self.pk}"

    @property
    def name(self) -> str:
        """How the audit log and messages name it."""
        return f"{self.address}:{self.port}"

    @property
    def drain_deadline(self) -> datetime.datetime | None:
        """When what remains on a draining server is closed (None: not draining)."""
        if self.state != self.State.DRAINING or self.draining_since is None:
            return None
        return self.draining_since + datetime.timedelta(seconds=self.deregistration_delay)

    def drain_seconds_left(self, now: datetime.datetime | None = None) -> int | None:
        deadline = self.drain_deadline
        if deadline is None:
            return None
        left = (deadline - (now or timezone.now())).total_seconds()
        return max(0, int(left + 0.999))

    @property
    def state_text(self) -> str:
        """ "Draining, 4 min 10 s left", "Draining, closing what remains", "Maintenance"."""
        left = self.drain_seconds_left()
        if left is None:
            return self.get_state_display()
        if left == 0:
            return "Draining, delay over"
        minutes, seconds = divmod(left, 60)
        if minutes and seconds:
            return f"Draining, {minutes} min {seconds} s left"
        if minutes:
            return f"Draining, {minutes} min left"
        return f"Draining, {seconds} s left"


class HealthCheck(models.Model):
    """Health check of a server group (seeds 002 and 004)."""

    class Protocol(models.TextChoices):
        TCP = "tcp", "TCP"
        HTTP = "http", "HTTP"
        HTTPS = "https", "HTTPS"
        UDP = "udp", "UDP"

    EXPECTED_CODES = (
        ("http_2xx", "http_2xx"),
        ("http_3xx", "http_3xx"),
        ("http_4xx", "http_4xx"),
        ("http_5xx", "http_5xx"),
    )

    group = models.OneToOneField(
        ServerGroup, on_delete=models.CASCADE, related_name="health_check", primary_key=True
    )
    enabled = models.BooleanField(default=True)
    protocol = models.CharField(max_length=8, choices=Protocol.choices, default=Protocol.TCP)
    domain = models.CharField(max_length=100, blank=True, default="")
    port = models.PositiveIntegerField(null=True, blank=True, validators=bounded(1, 65535))
    path = models.CharField(max_length=80, default="/")
    interval = models.PositiveSmallIntegerField(default=5, validators=bounded(1, 300))
    timeout = models.PositiveSmallIntegerField(default=2, validators=bounded(1, 60))
    healthy_threshold = models.PositiveSmallIntegerField(default=3, validators=bounded(2, 10))
    unhealthy_threshold = models.PositiveSmallIntegerField(default=3, validators=bounded(1, 10))
    expected_codes = models.JSONField(default=list)
    udp_request = models.CharField(max_length=64, blank=True, default="")
    udp_expected = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.get_protocol_display()} check of {self.group_id}"


class Listener(models.Model):
    class Protocol(models.TextChoices):
        HTTP = "http", "HTTP"
        HTTPS = "https", "HTTPS"
        TCP = "tcp", "TCP"
        TCP_SSL = "tcp_ssl", "TCP SSL"
        UDP = "udp", "UDP"
        QUIC = "quic", "QUIC"

    class DesiredState(models.TextChoices):
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"

    class Status(models.TextChoices):
        CONFIGURING = "configuring", "Configuring"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        FAILED = "failed", "Failed"

    class Persistence(models.TextChoices):
        NONE = "none", "Off"
        INSERT_COOKIE = "insert_cookie", "Insert Cookie"
        REWRITE_COOKIE = "rewrite_cookie", "Rewrite Cookie"
        SOURCE_IP = "source_ip", "Source IP"

    class AclMode(models.TextChoices):
        OFF = "off", "Off"
        WHITELIST = "whitelist", "Whitelist"
        BLACKLIST = "blacklist", "Blacklist"

    class Compression(models.TextChoices):
        OFF = "off", "Off"
        GZIP = "gzip", "Gzip"
        BROTLI_GZIP = "brotli_gzip", "Brotli and Gzip"

    class ProxyProtocol(models.TextChoices):
        OFF = "off", "Off"
        V1 = "v1", "PROXY protocol v1"
        V2 = "v2", "PROXY protocol v2"

    class ForwardedFor(models.TextChoices):
        ADD = "add", "Add"
        REMOVE = "remove", "Remove"
        OFF = "off", "Off (pass through unchanged)"

    TLS_PROTOCOLS = frozenset({Protocol.HTTPS, Protocol.TCP_SSL})
    HTTP_PROTOCOLS = frozenset({Protocol.HTTP, Protocol.HTTPS})
    # Seed 003: a QUIC listener needs a server certificate, but has no TLS policy, SNI or mTLS.
    CERTIFICATE_PROTOCOLS = frozenset({Protocol.HTTPS, Protocol.TCP_SSL, Protocol.QUIC})
    # Seed 003's Layer-7 listeners (QUIC carries HTTP/3): forwarding rules, cookie persistence,
    # compression, the managed headers and error pages apply to each of them.
    LAYER7_PROTOCOLS = frozenset({Protocol.HTTP, Protocol.HTTPS, Protocol.QUIC})

    id = models.CharField(primary_key=True, max_length=16, default=new_listener_id, editable=False)
    instance = models.ForeignKey(Instance, on_delete=models.PROTECT, related_name="listeners")
    name = models.CharField(max_length=128)
    description = models.CharField(max_length=255, blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    protocol = models.CharField(max_length=16, choices=Protocol.choices)
    port = models.PositiveIntegerField(validators=bounded(1, 65535))
    server_group = models.ForeignKey(
        ServerGroup, on_delete=models.PROTECT, related_name="listeners"
    )

    scheduler = models.CharField(max_length=32, choices=Scheduler.choices, default=Scheduler.WRR)
    persistence = models.CharField(
        max_length=16, choices=Persistence.choices, default=Persistence.NONE
    )
    persistence_timeout = models.PositiveIntegerField(default=1000, validators=bounded(1, 86400))
    cookie_name = models.CharField(max_length=200, blank=True, default="")
    acl_mode = models.CharField(max_length=16, choices=AclMode.choices, default=AclMode.OFF)
    acl = models.ForeignKey(
        AccessControlList, null=True, blank=True, on_delete=models.PROTECT, related_name="listeners"
    )
    idle_timeout = models.PositiveSmallIntegerField(default=15, validators=bounded(1, 600))
    # Seed 002: the client has request_timeout to send a request head (else 408), and the
    # backend has response_timeout to answer (else 504).
    request_timeout = models.PositiveSmallIntegerField(default=60, validators=bounded(1, 600))
    response_timeout = models.PositiveSmallIntegerField(default=60, validators=bounded(1, 300))
    # Seeds 000/001/003 "Enable HTTP/2", HTTPS only; on by default as in the ALB console.
    http2 = models.BooleanField(default=True)
    x_forwarded_for = models.CharField(
        max_length=8, choices=ForwardedFor.choices, default=ForwardedFor.ADD
    )
    header_x_forwarded_proto = models.BooleanField(default=False)
    header_x_forwarded_port = models.BooleanField(default=False)
    header_x_forwarded_host = models.BooleanField(default=False)
    header_x_forwarded_client_srcport = models.BooleanField(default=False)
    header_slb_id = models.BooleanField(default=False)
    header_slb_ip = models.BooleanField(default=False)
    header_x_forwarded_elb_ip = models.BooleanField(default=False)
    header_clientcert_subjectdn = models.BooleanField(default=False)
    header_clientcert_issuerdn = models.BooleanField(default=False)
    header_clientcert_fingerprint = models.BooleanField(default=False)
    header_clientcert_clientverify = models.BooleanField(default=False)
    retrieve_client_ip = models.BooleanField(default=False)
    trusted_proxies = models.CharField(max_length=1024, blank=True, default="")
    compression = models.CharField(
        max_length=16, choices=Compression.choices, default=Compression.OFF
    )
    bandwidth_mbit = models.PositiveIntegerField(null=True, blank=True, validators=bounded(1, 5120))
    proxy_protocol = models.CharField(
        max_length=4, choices=ProxyProtocol.choices, default=ProxyProtocol.OFF
    )
    # One JSON line per request (HTTP, HTTPS, QUIC) or connection (TCP, TCP SSL, UDP session)
    # on the nodes; the Logs tab shows the latest (dataplane.accesslog).
    access_log = models.BooleanField(default=False)
    # Seeds 001/003 throttling by "QPS per client IP", listener-wide (rules carry their own).
    qps_per_client_ip = models.PositiveIntegerField(
        null=True, blank=True, validators=bounded(*snapshot_schema.QPS_PER_CLIENT_IP)
    )
    # Tries on another server after the first; the budget caps the share of requests retried.
    retries = models.PositiveSmallIntegerField(
        default=1, validators=bounded(*snapshot_schema.RETRIES)
    )
    retry_budget_percent = models.PositiveSmallIntegerField(
        default=20, validators=bounded(*snapshot_schema.RETRY_BUDGET_PERCENT)
    )
    quic_listener = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="upgraded_from"
    )

    default_certificate = models.ForeignKey(
        Certificate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="default_for_listeners",
    )
    additional_certificates = models.ManyToManyField(
        Certificate, blank=True, related_name="additional_for_listeners"
    )
    tls_policy = models.ForeignKey(
        TlsPolicy, null=True, blank=True, on_delete=models.PROTECT, related_name="listeners"
    )
    mutual_authentication = models.BooleanField(default=False)
    ca_certificate = models.ForeignKey(
        Certificate,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ca_for_listeners",
    )

    desired_state = models.CharField(
        max_length=8, choices=DesiredState.choices, default=DesiredState.RUNNING
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CONFIGURING)
    last_error = models.TextField(blank=True, default="")
    # Set when a change puts the listener in Configuring; reconcile fails it after a deadline
    # instead of leaving it Configuring forever while a node is unreachable.
    configuring_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["port", "protocol"]
        constraints = [
            # The form explains the rule; this keeps two racing submits from both winning.
            models.UniqueConstraint(
                fields=["instance", "protocol", "port"], name="listener_port_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    def get_absolute_url(self) -> str:
        return reverse("listener-detail", args=[self.instance_id, self.id])

    @property
    def uses_tls(self) -> bool:
        return self.protocol in self.TLS_PROTOCOLS

    @property
    def needs_certificate(self) -> bool:
        return self.protocol in self.CERTIFICATE_PROTOCOLS

    @property
    def is_http(self) -> bool:
        return self.protocol in self.HTTP_PROTOCOLS

    @property
    def change_pending(self) -> bool:
        """A change not yet applied by every node (it may be past its deadline)."""
        return self.configuring_since is not None or self.status == self.Status.CONFIGURING

    def overdue(self, now: datetime.datetime | None = None) -> bool:
        """Configuring for longer than CONFIGURING_DEADLINE: from then on the change counts as
        failed, whether or not a task has run to say so (the broker may be down)."""
        since = self.configuring_since
        if since is None:
            return False
        elapsed = (now or timezone.now()) - since
        return elapsed.total_seconds() > settings.CONFIGURING_DEADLINE

    @property
    def is_configuring(self) -> bool:
        """Edits are refused while this holds (seed 003); a change past its deadline has failed,
        so the operator can edit again."""
        return self.status == self.Status.CONFIGURING and not self.overdue()

    @cached_property
    def observed(self):
        """The status and reason to show, derived from the nodes' reports (console.status)."""
        from console.status import observe

        return observe(self, self.instance.node_reports)


class ErrorPageStatus(models.TextChoices):
    BAD_GATEWAY = "502", "502 Bad Gateway"
    SERVICE_UNAVAILABLE = "503", "503 Service Unavailable"
    GATEWAY_TIMEOUT = "504", "504 Gateway Timeout"
    # Served as a 503 while every server of the listener's group is in Maintenance.
    MAINTENANCE = "maintenance", "Maintenance"


class ErrorPageContentType(models.TextChoices):
    HTML = "text/html", "text/html"
    TEXT = "text/plain", "text/plain"
    JSON = "application/json", "application/json"


class ErrorPage(models.Model):
    """A listener's own page for a 502, 503 or 504 the node answers, or for Maintenance."""

    Status = ErrorPageStatus
    ContentType = ErrorPageContentType

    listener = models.ForeignKey(Listener, on_delete=models.CASCADE, related_name="error_pages")
    status = models.CharField(max_length=12, choices=Status.choices)
    content_type = models.CharField(
        max_length=32, choices=ContentType.choices, default=ContentType.HTML
    )
    body = models.TextField()

    class Meta:
        ordering = ["status"]
        constraints = [
            models.UniqueConstraint(fields=["listener", "status"], name="error_page_unique"),
            # A row the node would refuse would make it refuse the whole snapshot: whatever
            # writes one (a service called directly, an import), the database says no.
            models.CheckConstraint(
                condition=models.Q(status__in=ErrorPageStatus.values),
                name="error_page_status_known",
            ),
            models.CheckConstraint(
                condition=models.Q(content_type__in=ErrorPageContentType.values),
                name="error_page_content_type_known",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_status_display()} page of {self.listener_id}"


class ForwardingRule(models.Model):
    """Seed 002 advanced forwarding: an ordered rule of an HTTP or HTTPS listener.

    Conditions are stored as the dataplane's RuleCondition fields (type, values, match, name);
    the action's fields are columns. dataplane.rules validates both.
    """

    class Action(models.TextChoices):
        FORWARD = "forward", "Forward to Server Group"
        REDIRECT = "redirect", "Redirect"
        FIXED_RESPONSE = "fixed_response", "Return Fixed Response"

    listener = models.ForeignKey(Listener, on_delete=models.CASCADE, related_name="rules")
    position = models.PositiveIntegerField(default=0)
    name = models.CharField(max_length=64, blank=True, default="")
    conditions = models.JSONField(default=list)
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.FORWARD)
    server_group = models.ForeignKey(
        ServerGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="rules"
    )
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    redirect_protocol = models.CharField(max_length=8, blank=True, default="")
    redirect_host = models.CharField(max_length=255, blank=True, default="${host}")
    redirect_port = models.PositiveIntegerField(null=True, blank=True)
    redirect_path = models.CharField(max_length=255, blank=True, default="${path}")
    redirect_query = models.CharField(max_length=255, blank=True, default="${query}")
    content_type = models.CharField(max_length=32, blank=True, default="text/plain")
    body = models.TextField(blank=True, default="")
    # Seeds 001/003 "QPS per client IP": checked when the rule matches, before its action.
    qps_per_client_ip = models.PositiveIntegerField(
        null=True, blank=True, validators=bounded(*snapshot_schema.QPS_PER_CLIENT_IP)
    )

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.name or f"rule {self.pk}"

    @property
    def rule_id(self) -> str:
        return f"rule-{self.pk}"

    def action_fields(self) -> dict:
        """The action as the rule form and the snapshot builder both read it."""
        return {
            "action": self.action,
            "server_group": self.server_group_id,
            "status_code": self.status_code,
            "redirect_protocol": self.redirect_protocol,
            "redirect_host": self.redirect_host,
            "redirect_port": self.redirect_port,
            "redirect_path": self.redirect_path,
            "redirect_query": self.redirect_query,
            "content_type": self.content_type,
            "body": self.body,
            "qps_per_client_ip": self.qps_per_client_ip,
        }
