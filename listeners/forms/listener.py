"""Forms of the listener wizard, Quick Create and the Modify dialogs.

Which options exist depends on the Listener Protocol. The browser shows only the options that
apply, and ``clean()`` enforces the same table, so a crafted POST cannot set an option the
protocol does not have.
"""

from __future__ import annotations

import ipaddress
import re

from django import forms
from django.urls import reverse
from django.utils import timezone

from certificates.models import Certificate
from console.models import Instance
from dataplane import config as snapshot_schema
from listeners import rules
from listeners.bandwidth import allocated_mbit, no_share_warning
from listeners.forms import passive
from listeners.forms.ranges import state_ranges
from listeners.models import (
    AccessControlList,
    HealthCheck,
    Listener,
    Scheduler,
    ServerGroup,
    TlsPolicy,
)
from listeners.rules import compatible_backend_protocols

P = Listener.Protocol
HTTP_LIKE = {P.HTTP, P.HTTPS}
TLS = {P.HTTPS, P.TCP_SSL}
# Protocols with the SSL Certificate step.
CERTIFICATE = {P.HTTPS, P.TCP_SSL, P.QUIC}

# Seed 004: TCP SSL listeners offer WRR and WLC only.
SCHEDULERS = {
    P.HTTP: list(Scheduler.choices),
    P.HTTPS: list(Scheduler.choices),
    P.TCP: list(Scheduler.choices),
    P.TCP_SSL: [(Scheduler.WRR, Scheduler.WRR.label), (Scheduler.WLC, Scheduler.WLC.label)],
    P.UDP: list(Scheduler.choices),
    P.QUIC: list(Scheduler.choices),
}
PERSISTENCE = {
    P.HTTP: ["none", "insert_cookie", "rewrite_cookie"],
    P.HTTPS: ["none", "insert_cookie", "rewrite_cookie"],
    P.TCP: ["none", "source_ip"],
    P.TCP_SSL: ["none", "source_ip"],
    P.UDP: ["none"],
    P.QUIC: ["none", "insert_cookie", "rewrite_cookie"],
}
SUGGESTED_PORT = {P.HTTP: 80, P.HTTPS: 443, P.TCP: 8080, P.TCP_SSL: 8443, P.UDP: 5353, P.QUIC: 443}
HTTP_HEADER_FIELDS = (
    ("header_x_forwarded_proto", "X-Forwarded-Proto: Retrieve Listener Protocol"),
    ("header_x_forwarded_port", "X-Forwarded-Port: Retrieve Listener Port"),
    ("header_x_forwarded_host", "X-Forwarded-Host: Retrieve Client Domain Name"),
    ("header_x_forwarded_client_srcport", "X-Forwarded-Client-srcport: Retrieve Client Port"),
    ("header_slb_id", "SLB-ID: Retrieve SLB ID"),
    ("header_slb_ip", "SLB-IP: Retrieve SLB IP"),
    ("header_x_forwarded_elb_ip", "X-Forwarded-ELB-IP: Retrieve Load Balancer IP"),
)
CLIENTCERT_HEADER_FIELDS = (
    ("header_clientcert_subjectdn", "X-Forwarded-Clientcert-subjectdn"),
    ("header_clientcert_issuerdn", "X-Forwarded-Clientcert-issuerdn"),
    ("header_clientcert_fingerprint", "X-Forwarded-Clientcert-fingerprint"),
    ("header_clientcert_clientverify", "X-Forwarded-Clientcert-clientverify"),
)
# The Advanced Settings that are Listener fields of the same name (Modify Listener edits them).
SETTINGS_FIELDS = (
    "scheduler",
    "persistence",
    "persistence_timeout",
    "cookie_name",
    "acl_mode",
    "acl",
    "idle_timeout",
    "request_timeout",
    "response_timeout",
    "http2",
    "x_forwarded_for",
    "retrieve_client_ip",
    "trusted_proxies",
    "compression",
    "bandwidth_mbit",
    "quic_listener",
    "proxy_protocol",
    "access_log",
    "retries",
    "retry_budget_percent",
    "qps_per_client_ip",
    *(name for name, _ in HTTP_HEADER_FIELDS + CLIENTCERT_HEADER_FIELDS),
)
TAG_LINE = re.compile(r"^\s*([^=\s][^=]{0,127}?)\s*=\s*(.{0,255}?)\s*$")
MAX_TAGS = 20


def default_listener_name(protocol: str, port: int) -> str:
    """The name a listener gets when none is typed, as the cloud consoles do: HTTPS_443."""
    return f"{P(protocol).label.replace(' ', '_')}_{port}"


def parse_tags(text: str) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = TAG_LINE.match(line)
        if not match:
            raise forms.ValidationError(
                f"Line {number}: write each tag as key=value (key up to 128 characters)."
            )
        key, value = match.groups()
        if key in seen:
            raise forms.ValidationError(f"Line {number}: tag key {key!r} is repeated.")
        seen.add(key)
        tags.append({"key": key, "value": value})
    if len(tags) > MAX_TAGS:
        raise forms.ValidationError(f"At most {MAX_TAGS} tags per listener.")
    return tags


def format_tags(tags: list[dict[str, str]]) -> str:
    return "\n".join(f"{tag['key']}={tag['value']}" for tag in tags)


def parse_trusted_proxies(text: str) -> list[str]:
    """Seed 001: ``0.0.0.0/0``, or addresses separated by semicolons (``ip1;ip2``)."""
    entries = [item.strip() for item in re.split(r"[;,\s]+", text) if item.strip()]
    if not entries:
        raise forms.ValidationError("Enter 0.0.0.0/0 or trusted proxy addresses as ip1;ip2.")
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise forms.ValidationError(f"{entry!r} is not an IP address or CIDR block.") from exc
    return entries


class CertificateChoiceField(forms.ModelChoiceField):
    """Options read like the certificate list: name, domain, key type and expiry."""

    def label_from_instance(self, obj: Certificate) -> str:
        domain = f" · {obj.primary_domain}" if obj.primary_domain else ""
        return f"{obj.name}{domain} · {obj.key_type} · expires {obj.not_after:%Y-%m-%d}"


class CertificateMultipleChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Certificate) -> str:
        return CertificateChoiceField.label_from_instance(self, obj)


class ListenerSettingsForm(forms.Form):
    """Name, description, tags and the Advanced Settings: what Modify Listener can change."""

    name = forms.CharField(
        label="Listener Name",
        max_length=128,
        required=False,
        help_text="Defaults to the protocol and port, e.g. HTTPS_443.",
    )
    description = forms.CharField(
        label="Description", max_length=255, required=False, widget=forms.TextInput
    )
    tags = forms.CharField(
        label="Tags",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "env=prod"}),
        help_text="One key=value per line; the Listener tab filters by tag.",
    )
    scheduler = forms.ChoiceField(label="Scheduling Algorithm", choices=Scheduler.choices)
    persistence = forms.ChoiceField(
        label="Session Persistence", choices=Listener.Persistence.choices
    )
    persistence_timeout = forms.IntegerField(
        label="Session Persistence Timeout Period (s)",
        min_value=1,
        max_value=86400,
        initial=1000,
        required=False,
        help_text="1-86400 seconds.",
    )
    cookie_name = forms.CharField(
        label="Cookie Name",
        max_length=200,
        required=False,
        help_text="The application's cookie that the listener follows (Rewrite Cookie).",
    )
    acl_mode = forms.ChoiceField(
        label="Access Control", choices=Listener.AclMode.choices, initial="off"
    )
    acl = forms.ModelChoiceField(
        label="Access Control List",
        queryset=AccessControlList.objects.all(),
        required=False,
        help_text="An empty list forwards every request.",
    )
    idle_timeout = forms.IntegerField(
        label="Idle Connection Timeout Period (s)", min_value=1, max_value=600, initial=15
    )
    request_timeout = forms.IntegerField(
        label="Request Timeout (s)",
        min_value=1,
        max_value=600,
        initial=60,
        required=False,
        help_text="1-600 s. A client that has not sent a complete request head by then gets "
        "HTTP 408 and the connection is closed.",
    )
    response_timeout = forms.IntegerField(
        label="Response Timeout (s)",
        min_value=1,
        max_value=300,
        initial=60,
        required=False,
        help_text="1-300 s. The client gets HTTP 504 when the backend server has not answered "
        "by then (gRPC calls end with DEADLINE_EXCEEDED).",
    )
    http2 = forms.BooleanField(
        label="Enable HTTP/2",
        required=False,
        initial=True,
        help_text="Clients that offer HTTP/2 use it; backend servers still get HTTP/1.1, "
        "except gRPC server groups, which need HTTP/2.",
    )
    x_forwarded_for = forms.ChoiceField(
        label="X-Forwarded-For", choices=Listener.ForwardedFor.choices, initial="add"
    )
    retrieve_client_ip = forms.BooleanField(label="Retrieve Client IP", required=False)
    trusted_proxies = forms.CharField(
        label="Trusted IP Addresses",
        required=False,
        help_text="0.0.0.0/0 takes the leftmost X-Forwarded-For address; a list such as "
        "10.0.0.1;10.0.0.2 takes the first address from the right that is not trusted.",
    )
    compression = forms.ChoiceField(
        label="Data Compression",
        choices=Listener.Compression.choices,
        initial="off",
        required=False,
        help_text="Only responses over 1,024 bytes. Brotli compresses every type and wins when "
        "the client accepts both; Gzip only text/xml, text/plain, text/css, "
        "application/javascript, application/x-javascript, application/rss+xml, "
        "application/atom+xml, application/xml and application/json.",
    )
    bandwidth_mbit = forms.IntegerField(
        label="Bandwidth Throttling (Mbit/s)",
        min_value=1,
        max_value=5120,
        required=False,
        help_text="Empty: no limit. The listeners' limits may not add up to more than the "
        "instance's bandwidth.",
    )
    # Seeds 001/003 throttling (dataplane.throttle); a rule may carry a limit of its own.
    qps_per_client_ip = forms.IntegerField(
        label="QPS per client IP",
        min_value=snapshot_schema.QPS_PER_CLIENT_IP[0],
        max_value=snapshot_schema.QPS_PER_CLIENT_IP[1],
        required=False,
        help_text="Requests per second one client IP may send to this listener; over it, the "
        "load balancer answers 429 Too Many Requests. The client IP is the real one when "
        "Retrieve Client IP is on; an IPv6 client counts by its /64, as one client holds the "
        "whole block. Each node process counts on its own. Blank: no limit.",
    )
    proxy_protocol = forms.ChoiceField(
        label="Client IP Address Preservation",
        choices=Listener.ProxyProtocol.choices,
        initial="off",
        required=False,
        help_text="Send the client's address to the backend servers in a PROXY protocol "
        "header; the backends must expect it.",
    )
    access_log = forms.BooleanField(
        label="Access Log",
        required=False,
        help_text="The nodes write one JSON line per request (per connection for TCP and TCP "
        "SSL, per session for UDP): client, status, timings, server, rule, TLS and why it "
        "ended. The Logs tab shows the latest.",
    )
    # Issue 20 retries (dataplane.retry says what is retried and how the budget counts).
    retries = forms.IntegerField(
        label="Retries",
        min_value=0,
        max_value=3,
        initial=1,
        required=False,
        help_text="0-3. A request goes again to another server when connecting fails (any "
        "method: nothing was sent yet), or when the server answers 502 or 503 to a GET, HEAD, "
        "OPTIONS, TRACE, PUT or DELETE without a request body; other requests get the answer as "
        "it is. 0 turns retries off; empty means 1.",
    )
    retry_budget_percent = forms.IntegerField(
        label="Retry Budget (%)",
        min_value=1,
        max_value=100,
        initial=20,
        required=False,
        help_text="1-100 %. Retries may be at most this share of the listener's requests over "
        "the last 10 seconds (and always 3 a second per node process), so that they cannot "
        "multiply the load of an outage; once it is spent the client gets the error. Empty "
        "means 20 %.",
    )
    quic_listener = forms.ModelChoiceField(
        label="QUIC Upgrade: Associated QUIC Listener",
        queryset=Listener.objects.none(),
        required=False,
        empty_label="Off",
        help_text="Advertises HTTP/3 on the chosen QUIC listener with an Alt-Svc header.",
    )

    def __init__(
        self,
        *args,
        instance: Instance,
        protocol: str | None = None,
        listener: Listener | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.instance = instance
        self.listener = listener
        for field_name, label in HTTP_HEADER_FIELDS + CLIENTCERT_HEADER_FIELDS:
            self.fields[field_name] = forms.BooleanField(label=label, required=False)
        self.fixed_protocol = protocol
        self.fields["quic_listener"].queryset = instance.listeners.filter(protocol=P.QUIC)
        self._shape_for(self.protocol_value())
        state_ranges(self)

    # -- which options apply -------------------------------------------------------------
    def protocol_value(self) -> str:
        if self.fixed_protocol:
            return self.fixed_protocol
        raw = self.data.get(self.add_prefix("protocol")) if self.is_bound else None
        raw = raw or self.initial.get("protocol") or P.HTTP
        return raw if raw in P.values else P.HTTP

    def _shape_for(self, protocol: str) -> None:
        if protocol not in Listener.LAYER7_PROTOCOLS:
            # Not on the page for TCP, TCP SSL and UDP; clean() stores the default.
            self.fields["x_forwarded_for"].required = False
        self.fields["scheduler"].choices = SCHEDULERS[protocol]
        if not self.applies(protocol)["persistence"]:
            # Not on the page for UDP; clean() stores "none".
            self.fields["persistence"].required = False
        self.fields["persistence"].choices = [
            (value, label)
            for value, label in Listener.Persistence.choices
            if value in PERSISTENCE[protocol]
        ]
        if not self.instance.supports_mutual_authentication:
            self.fields["retrieve_client_ip"].disabled = True
            self.fields[
                "retrieve_client_ip"
            ].help_text = "Not available on Basic edition instances (seed: Standard edition only)."

    def applies(self, protocol: str) -> dict[str, bool]:
        http = protocol in HTTP_LIKE
        layer7 = protocol in Listener.LAYER7_PROTOCOLS
        return {
            "http": http,
            "https": protocol == P.HTTPS,
            "cookie": layer7,
            "source_ip": protocol in (P.TCP, P.TCP_SSL),
            "persistence": protocol != P.UDP,
            "request_timeout": http,
            "response_timeout": layer7,
            "retries": layer7,
            "throttle": layer7,
            "http2": protocol == P.HTTPS,
            "headers": layer7,
            # Seed 003: "This setting is not supported for QUIC listeners."
            "retrieve_client_ip": http,
            "compression": layer7,
            "quic_upgrade": protocol == P.HTTPS,
            "bandwidth": True,
            "proxy_protocol": protocol in (P.TCP, P.TCP_SSL),
        }

    def not_applicable(self) -> set[str]:
        """Fields that the chosen protocol and options make meaningless (for Confirm)."""
        cleaned = self.cleaned_data
        applies = self.applies(self.protocol_value())
        hidden = set()
        if cleaned.get("persistence") not in ("insert_cookie", "source_ip"):
            hidden.add("persistence_timeout")
        if cleaned.get("persistence") != "rewrite_cookie":
            hidden.add("cookie_name")
        if cleaned.get("acl_mode") == "off":
            hidden.add("acl")
        if not applies["request_timeout"]:
            hidden.add("request_timeout")
        if not applies["response_timeout"]:
            hidden.add("response_timeout")
        if not applies["http2"]:
            hidden.add("http2")
        if not applies["headers"]:
            hidden |= {"x_forwarded_for", *dict(HTTP_HEADER_FIELDS)}
        if not applies["https"]:
            hidden |= set(dict(CLIENTCERT_HEADER_FIELDS))
        if not applies["retrieve_client_ip"]:
            hidden.add("retrieve_client_ip")
        if not cleaned.get("retrieve_client_ip"):
            hidden.add("trusted_proxies")
        if not applies["persistence"]:
            hidden.add("persistence")
        if not applies["compression"]:
            hidden.add("compression")
        if not applies["quic_upgrade"]:
            hidden.add("quic_listener")
        if not applies["bandwidth"]:
            hidden.add("bandwidth_mbit")
        if not applies["proxy_protocol"]:
            hidden.add("proxy_protocol")
        if not applies["retries"]:
            hidden.update(("retries", "retry_budget_percent"))
        if not applies["throttle"]:
            hidden.add("qps_per_client_ip")
        return hidden

    def header_fields(self):
        return [self[name] for name, _ in HTTP_HEADER_FIELDS]

    def clientcert_fields(self):
        return [self[name] for name, _ in CLIENTCERT_HEADER_FIELDS]

    # -- validation ----------------------------------------------------------------------
    def clean_tags(self) -> list[dict[str, str]]:
        return parse_tags(self.cleaned_data.get("tags") or "")

    def clean(self) -> dict:
        cleaned = super().clean()
        protocol = self.protocol_value()
        applies = self.applies(protocol)
        persistence = cleaned.get("persistence")
        if persistence == "insert_cookie" and not cleaned.get("persistence_timeout"):
            self.add_error("persistence_timeout", "Insert Cookie needs a timeout (1-86400 s).")
        if persistence == "source_ip" and not cleaned.get("persistence_timeout"):
            self.add_error("persistence_timeout", "Source IP persistence needs a timeout.")
        if persistence == "rewrite_cookie" and not cleaned.get("cookie_name"):
            self.add_error("cookie_name", "Rewrite Cookie needs the name of the cookie.")
        elif persistence == "rewrite_cookie" and not re.fullmatch(
            r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,200}", cleaned["cookie_name"]
        ):
            self.add_error("cookie_name", "A cookie name may not contain spaces, ; , or =.")
        if cleaned.get("acl_mode") in ("whitelist", "blacklist") and not cleaned.get("acl"):
            self.add_error("acl", "Choose the access control list for the whitelist/blacklist.")
        if applies["request_timeout"] and not cleaned.get("request_timeout"):
            self.add_error("request_timeout", "Enter a request timeout between 1 and 600.")
        if applies["response_timeout"] and not cleaned.get("response_timeout"):
            self.add_error("response_timeout", "Enter a response timeout between 1 and 300.")
        # An empty Retries or Retry Budget takes the default (0 is a value: no retries).
        for name, default in (("retries", 1), ("retry_budget_percent", 20)):
            if cleaned.get(name) is None and name not in self.errors:
                cleaned[name] = default
        if cleaned.get("retrieve_client_ip"):
            if protocol == P.QUIC:
                self.add_error(
                    "retrieve_client_ip", "This setting is not supported for QUIC listeners."
                )
            elif not applies["retrieve_client_ip"]:
                self.add_error("retrieve_client_ip", "Only HTTP and HTTPS listeners have this.")
            else:
                try:
                    cleaned["trusted_proxies"] = ";".join(
                        parse_trusted_proxies(cleaned.get("trusted_proxies") or "")
                    )
                except forms.ValidationError as error:
                    self.add_error("trusted_proxies", error)
        self._check_bandwidth(cleaned.get("bandwidth_mbit"))
        if self.listener is not None and self.listener.server_group.is_grpc:
            for field, problem in rules.grpc_conflicts(
                http2=bool(cleaned.get("http2")),
                persistence=cleaned.get("persistence") or "none",
                compression=cleaned.get("compression") or "off",
                bandwidth_mbit=cleaned.get("bandwidth_mbit"),
                forwarding_rules=self.listener.rules.count(),
            ):
                self.add_error(
                    field, f"Server group {self.listener.server_group.name} is gRPC: {problem}"
                )
        if self.listener is not None and cleaned.get("scheduler"):
            problem = rules.slow_start_conflict(
                self.listener.server_group.slow_start, cleaned["scheduler"]
            )
            if problem:
                self.add_error(
                    "scheduler",
                    f"Server group {self.listener.server_group.name}: slow start is on. {problem}",
                )
        self._reset_inapplicable(cleaned, applies)
        return cleaned

    def _check_bandwidth(self, limit: int | None) -> None:
        total = self.instance.bandwidth_mbit
        if not limit or not total:
            return
        allocated = allocated_mbit(self.instance, excluding=self.listener)
        if allocated + limit > total:
            self.add_error(
                "bandwidth_mbit",
                f"The listeners would be given {allocated + limit} Mbit/s in all, more than the "
                f"instance's {total} Mbit/s ({allocated} Mbit/s already allocated).",
            )

    def allocated_to_others(self) -> int:
        """Mbit/s the other listeners' limits take of the instance's bandwidth (for the help)."""
        return allocated_mbit(self.instance, excluding=self.listener)

    def bandwidth_warning(self) -> str:
        """Seed 000's caution for the cleaned settings: which listeners they leave no bandwidth."""
        cleaned = self.cleaned_data
        listener = self.listener
        port = listener.port if listener is not None else cleaned.get("port")
        name = cleaned.get("name") or getattr(listener, "name", "") or "this listener"
        name = f"{name} ({self.protocol_value().upper()}:{port})"
        return no_share_warning(
            self.instance,
            listener=self.listener,
            limit=cleaned.get("bandwidth_mbit"),
            name=name,
        )

    def _reset_inapplicable(self, cleaned: dict, applies: dict[str, bool]) -> None:
        """Options that do not apply to the protocol are stored at their defaults."""
        if not applies["persistence"]:
            cleaned["persistence"] = "none"
        if cleaned.get("persistence") not in ("insert_cookie", "source_ip"):
            cleaned["persistence_timeout"] = 1000
        if cleaned.get("persistence") != "rewrite_cookie":
            cleaned["cookie_name"] = ""
        if cleaned.get("acl_mode") == "off":
            cleaned["acl"] = None
        if not applies["request_timeout"]:
            cleaned["request_timeout"] = 60
        if not applies["response_timeout"]:
            cleaned["response_timeout"] = 60
        if not applies["retries"]:
            cleaned["retries"] = 1
            cleaned["retry_budget_percent"] = 20
        if not applies["throttle"]:
            cleaned["qps_per_client_ip"] = None
        if not applies["http2"]:
            cleaned["http2"] = False
        if not applies["headers"]:
            cleaned["x_forwarded_for"] = "add"
            for name, _ in HTTP_HEADER_FIELDS:
                cleaned[name] = False
        if not applies["https"]:
            for name, _ in CLIENTCERT_HEADER_FIELDS:
                cleaned[name] = False
        if not applies["retrieve_client_ip"] or not cleaned.get("retrieve_client_ip"):
            cleaned["retrieve_client_ip"] = False
            cleaned["trusted_proxies"] = ""
        if not applies["compression"] or not cleaned.get("compression"):
            cleaned["compression"] = "off"
        if not applies["quic_upgrade"]:
            cleaned["quic_listener"] = None
        if not applies["bandwidth"]:
            cleaned["bandwidth_mbit"] = None
        if not applies["proxy_protocol"] or not cleaned.get("proxy_protocol"):
            cleaned["proxy_protocol"] = "off"

    def settings_values(self) -> dict:
        """The cleaned Advanced Settings, description and tags as Listener field values."""
        names = ["description", "tags", *SETTINGS_FIELDS]
        return {name: self.cleaned_data[name] for name in names}

    @classmethod
    def initial_from(cls, listener: Listener) -> dict:
        initial = {
            name: getattr(listener, name) for name in ("name", "description", *SETTINGS_FIELDS)
        }
        initial["tags"] = format_tags(listener.tags)
        return initial


class ProtocolListenerForm(ListenerSettingsForm):
    """Wizard step 1: Protocol & Listener."""

    field_order = ["protocol", "port", "name", "description", "tags"]

    protocol = forms.ChoiceField(label="Listener Protocol", choices=P.choices, initial=P.HTTP)
    port = forms.IntegerField(
        label="Listener Port",
        min_value=1,
        max_value=65535,
        # The wizard opens on HTTP; choosing another protocol suggests that protocol's port.
        initial=SUGGESTED_PORT[P.HTTP],
        help_text="1-65535. HTTP usually uses 80 and HTTPS 443.",
    )
    auto_enable = forms.BooleanField(
        label="Automatically Enable Listener", required=False, initial=True
    )

    def clean(self) -> dict:
        cleaned = super().clean()
        protocol, port = cleaned.get("protocol"), cleaned.get("port")
        if protocol and port:
            conflict = rules.port_conflict(self.instance, protocol, port)
            if conflict:
                self.add_error("port", conflict)
        quota = rules.quota_exceeded(self.instance)
        if quota:
            self.add_error(None, quota)
        if protocol and port and not cleaned.get("name"):
            cleaned["name"] = default_listener_name(protocol, port)
        return cleaned


class CertificateStepForm(forms.Form):
    """Wizard step 2: SSL Certificate (HTTPS and TCP SSL only)."""

    default_certificate = CertificateChoiceField(
        label="Server Certificate",
        queryset=Certificate.objects.filter(kind=Certificate.Kind.SERVER),
        empty_label="Select a server certificate",
        error_messages={"required": "HTTPS, TCP SSL and QUIC listeners need a server certificate."},
    )
    additional_certificates = CertificateMultipleChoiceField(
        label="Additional Certificates",
        queryset=Certificate.objects.filter(kind=Certificate.Kind.SERVER),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Served by SNI to clients that ask for their domain names; other clients get "
        "the default certificate.",
    )
    tls_policy = forms.ModelChoiceField(
        label="TLS Security Policy",
        queryset=TlsPolicy.objects.all(),
        initial="tls_cipher_policy_1_0",
        empty_label=None,
    )
    mutual_authentication = forms.BooleanField(label="Mutual Authentication", required=False)
    ca_certificate = CertificateChoiceField(
        label="CA Certificate",
        queryset=Certificate.objects.filter(kind=Certificate.Kind.CA),
        required=False,
        empty_label="Select a CA certificate",
        help_text="Clients must present a certificate signed by this CA.",
    )

    def __init__(self, *args, instance: Instance, protocol: str = P.HTTPS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance = instance
        if protocol == P.QUIC:
            # Seed 003: a QUIC listener needs only a server certificate.
            for name in ("additional_certificates", "tls_policy", "mutual_authentication"):
                del self.fields[name]
            del self.fields["ca_certificate"]
            return
        if not instance.supports_mutual_authentication:
            self.fields["mutual_authentication"].disabled = True
            self.fields[
                "mutual_authentication"
            ].help_text = "Basic edition instances do not support mutual authentication."
            self.fields["ca_certificate"].disabled = True

    def not_applicable(self) -> set[str]:
        return set() if self.cleaned_data.get("mutual_authentication") else {"ca_certificate"}

    def certificate_values(self) -> dict:
        data = self.cleaned_data
        return {
            "default_certificate": data["default_certificate"],
            "additional_certificates": list(data.get("additional_certificates") or []),
            "tls_policy": data.get("tls_policy"),
            "mutual_authentication": bool(data.get("mutual_authentication")),
            "ca_certificate": data.get("ca_certificate"),
        }

    def clean(self) -> dict:
        cleaned = super().clean()
        default = cleaned.get("default_certificate")
        additional = list(cleaned.get("additional_certificates") or [])
        policy = cleaned.get("tls_policy")
        now = timezone.now()
        if default and default.not_after <= now:
            self.add_error(
                "default_certificate",
                f"{default.name} expired on {default.not_after:%Y-%m-%d}; choose another one.",
            )
        if default and default in additional:
            self.add_error(
                "additional_certificates",
                f"{default.name} is already the default certificate.",
            )
        for certificate in additional:
            if certificate.not_after <= now:
                self.add_error(
                    "additional_certificates",
                    f"{certificate.name} expired on {certificate.not_after:%Y-%m-%d}.",
                )
        if policy:
            for field, certificate in [("default_certificate", default)] + [
                ("additional_certificates", c) for c in additional
            ]:
                if certificate is None:
                    continue
                problem = rules.policy_cannot_serve(policy, certificate)
                if problem:
                    self.add_error(
                        field if field != "default_certificate" else "tls_policy", problem
                    )
        if "mutual_authentication" not in self.fields:
            return cleaned
        if cleaned.get("mutual_authentication"):
            if not cleaned.get("ca_certificate"):
                self.add_error("ca_certificate", "Mutual authentication needs a CA certificate.")
        else:
            cleaned["ca_certificate"] = None
        return cleaned


class ServerGroupStepForm(forms.Form):
    """Wizard step 3: select a server group or create one."""

    group_mode = forms.ChoiceField(
        label="Server Group",
        choices=[("existing", "Select Existing Server Group"), ("new", "Create Server Group")],
        initial="existing",
        widget=forms.RadioSelect,
    )
    server_group = forms.ModelChoiceField(
        label="Select Server Group",
        queryset=ServerGroup.objects.all(),
        required=False,
        empty_label="Select a server group",
    )
    new_group_name = forms.CharField(label="Server Group Name", max_length=128, required=False)
    new_backend_protocol = forms.ChoiceField(
        label="Backend Protocol", choices=ServerGroup.BackendProtocol.choices, required=False
    )
    new_slow_start = forms.BooleanField(label="Slow Start", required=False)
    new_slow_start_duration = forms.IntegerField(
        label="Slow Start Duration (s)",
        min_value=30,
        max_value=1200,
        initial=30,
        required=False,
        help_text="30-1200 s: a server that joins or recovers gets a linearly growing share.",
    )

    def __init__(
        self,
        *args,
        protocol: str,
        scheduler: str = Scheduler.WRR,
        settings: dict | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.protocol = protocol
        self.scheduler = scheduler
        # Step 1's Advanced Settings, which decide whether a gRPC group can be used.
        self.settings = settings or {}
        allowed = compatible_backend_protocols(protocol)
        self.fields["server_group"].queryset = ServerGroup.objects.filter(
            backend_protocol__in=allowed
        )
        self.fields["server_group"].widget.attrs.update(
            {
                "hx-get": reverse("listener-wizard-group-preview"),
                "hx-target": "#existing-servers",
                "hx-trigger": "change",
            }
        )
        self.fields["new_backend_protocol"].choices = [
            choice for choice in ServerGroup.BackendProtocol.choices if choice[0] in allowed
        ]
        self.fields["new_backend_protocol"].initial = allowed[0]
        state_ranges(self)

    def not_applicable(self) -> set[str]:
        if self.cleaned_data.get("group_mode") == "existing":
            return {
                "new_group_name",
                "new_backend_protocol",
                "new_slow_start",
                "new_slow_start_duration",
            }
        if not self.cleaned_data.get("new_slow_start"):
            return {"server_group", "new_slow_start_duration"}
        return {"server_group"}

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("group_mode") == "existing":
            group = cleaned.get("server_group")
            if not group:
                self.add_error("server_group", "Select a server group, or create one.")
            elif problem := rules.slow_start_conflict(group.slow_start, self.scheduler):
                self.add_error("server_group", f"{group.name} has slow start on. {problem}")
            elif group.is_grpc:
                self._check_grpc("server_group")
        elif cleaned.get("group_mode") == "new":
            if not cleaned.get("new_group_name"):
                self.add_error("new_group_name", "Name the new server group.")
            if problem := rules.slow_start_conflict(
                bool(cleaned.get("new_slow_start")), self.scheduler
            ):
                self.add_error("new_slow_start", problem)
            if cleaned.get("new_slow_start") and not cleaned.get("new_slow_start_duration"):
                self.add_error("new_slow_start_duration", "Enter a duration of 30-1200 s.")
            if cleaned.get("new_backend_protocol") == ServerGroup.BackendProtocol.GRPC:
                self._check_grpc("new_backend_protocol")
        return cleaned

    def _check_grpc(self, field: str) -> None:
        settings = self.settings
        problems = rules.grpc_conflicts(
            http2=bool(settings.get("http2")),
            persistence=settings.get("persistence") or "none",
            compression=settings.get("compression") or "off",
            bandwidth_mbit=settings.get("bandwidth_mbit"),
        )
        for _, problem in problems:
            self.add_error(field, f"{problem} (step 1, Advanced Settings)")


# Seed 002: health check domain: at least two labels of letters, digits and hyphens, not
# starting or ending with a hyphen, at most 100 characters, labels at most 63; or an IP address.
DOMAIN_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Seed 002: path 1-80 characters, starting with "/", from this set.
HEALTH_PATH = re.compile(r"^/[A-Za-z0-9\-/.%?#&_~';@$*+,=!:()]{0,79}$")


# The fields Enable Health Check governs (hidden while it is off, console.css).
ACTIVE_FIELDS = (
    "protocol",
    "domain",
    "port",
    "path",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "expected_codes",
    "udp_request",
    "udp_expected",
)


class HealthCheckForm(forms.ModelForm):
    """Wizard step 4 and the Health Check Modify dialog."""

    expected_codes = forms.MultipleChoiceField(
        label="Health Check Status Codes",
        choices=HealthCheck.EXPECTED_CODES,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        initial=["http_2xx", "http_3xx"],
    )

    class Meta:
        model = HealthCheck
        fields = ["enabled", *ACTIVE_FIELDS]
        labels = {
            "enabled": "Enable Health Check",
            "protocol": "Health Check Protocol",
            "domain": "Domain Name",
            "port": "Health Check Port",
            "path": "Health Check Path",
            "interval": "Health Check Interval (s)",
            "timeout": "Response Timeout (s)",
            "healthy_threshold": "Healthy Threshold",
            "unhealthy_threshold": "Unhealthy Threshold",
            "udp_request": "Health Check Request",
            "udp_expected": "Health Check Response",
        }
        help_texts = {
            "domain": "HTTP/HTTPS only. Empty uses the backend server's address.",
            "port": "Empty uses each backend server's own port.",
            "path": "HTTP/HTTPS only. 1-80 characters starting with /.",
            "interval": "1-300 seconds.",
            "timeout": "1-60 seconds, at most the interval.",
            "healthy_threshold": "2-10 consecutive successes.",
            "unhealthy_threshold": "1-10 consecutive failures.",
            "udp_request": "UDP only: the datagram sent (up to 64 printable characters; empty "
            "sends an empty datagram).",
            "udp_expected": "UDP only: text the reply must contain; empty accepts any reply.",
        }

    def __init__(
        self, *args, backend_protocol: str = "http", group: ServerGroup | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        # TCP checks have no path; HTTP(S) checks default to "/".
        self.fields["path"].required = False
        # A UDP server group is checked over UDP, and only a UDP group is.
        udp = backend_protocol == ServerGroup.BackendProtocol.UDP
        self.fields["protocol"].choices = [
            (value, label)
            for value, label in HealthCheck.Protocol.choices
            if (value == HealthCheck.Protocol.UDP) == udp
        ]
        if backend_protocol == ServerGroup.BackendProtocol.GRPC:
            # A gRPC server answers only HTTP/2; an HTTP/1.1 probe would mark it unhealthy.
            self.fields["protocol"].choices = [
                (HealthCheck.Protocol.TCP, HealthCheck.Protocol.TCP.label)
            ]
            self.fields["protocol"].initial = HealthCheck.Protocol.TCP
            self.fields["protocol"].help_text = "gRPC server groups are checked over TCP."
        if udp:
            self.fields["protocol"].initial = HealthCheck.Protocol.UDP
        else:
            del self.fields["udp_request"]
            del self.fields["udp_expected"]
        # The group's Passive Health Check (listeners.forms.passive), edited beside its checks.
        if group is None and self.instance.pk:
            group = self.instance.group
        passive.add_fields(self, group, backend_protocol)
        state_ranges(self, HealthCheck)

    def not_applicable(self) -> set[str]:
        """Fields the options make meaningless (for Confirm): the active check's fields while
        Enable Health Check is off (the page hides them, console.css), and the passive numbers
        while its switch is off. The Passive Health Check switch stays: it does not need active
        checks."""
        skipped = passive.not_applicable(self)
        if not self.cleaned_data.get("enabled"):
            skipped |= set(self.fields) & set(ACTIVE_FIELDS)
        return skipped

    def _clean_udp_text(self, name: str) -> str:
        value = self.cleaned_data.get(name) or ""
        if any(not (32 <= ord(char) < 127) for char in value):
            raise forms.ValidationError("Use printable ASCII characters only.")
        return value

    def clean_udp_request(self) -> str:
        return self._clean_udp_text("udp_request")

    def clean_udp_expected(self) -> str:
        return self._clean_udp_text("udp_expected")

    def clean_domain(self) -> str:
        domain = (self.cleaned_data.get("domain") or "").strip()
        if not domain:
            return ""
        try:
            ipaddress.ip_address(domain)
            return domain
        except ValueError:
            pass
        labels = domain.split(".")
        if (
            len(domain) > 100
            or len(labels) < 2
            or not all(DOMAIN_LABEL.match(label) for label in labels)
        ):
            raise forms.ValidationError(
                "Use an IP address, or a domain name of at least two labels made of letters, "
                "digits and hyphens (not at the start or end of a label), up to 100 characters."
            )
        return domain.lower()

    def clean_path(self) -> str:
        path = self.cleaned_data.get("path") or "/"
        if not HEALTH_PATH.match(path):
            raise forms.ValidationError(
                "The path starts with / and has 1-80 characters: letters, digits and "
                "- / . % ? # & _ ~ ' ; @ $ * + , = ! : ( )"
            )
        return path

    def clean(self) -> dict:
        cleaned = super().clean()
        interval, timeout = cleaned.get("interval"), cleaned.get("timeout")
        if interval and timeout and timeout > interval:
            self.add_error("timeout", "The response timeout may not exceed the interval.")
        if cleaned.get("protocol") in ("http", "https") and not cleaned.get("expected_codes"):
            self.add_error("expected_codes", "Choose at least one status code class.")
        if cleaned.get("protocol") in ("tcp", "udp"):
            cleaned["domain"], cleaned["path"] = "", "/"
        passive.clean(self, cleaned)
        return cleaned


class QuickCreateForm(forms.Form):
    """Seed 003 Quick Create: protocol, port, certificate and policy (TLS), server group."""

    protocol = forms.ChoiceField(label="Listener Protocol", choices=P.choices, initial=P.HTTP)
    port = forms.IntegerField(label="Listener Port", min_value=1, max_value=65535)
    default_certificate = CertificateChoiceField(
        label="Server Certificate",
        queryset=Certificate.objects.filter(kind=Certificate.Kind.SERVER),
        required=False,
        empty_label="Select a server certificate",
    )
    tls_policy = forms.ModelChoiceField(
        label="TLS Security Policy",
        queryset=TlsPolicy.objects.all(),
        initial="tls_cipher_policy_1_0",
        required=False,
        empty_label=None,
    )
    server_group = forms.ModelChoiceField(
        label="Server Group",
        queryset=ServerGroup.objects.all(),
        empty_label="Select a server group",
    )

    def __init__(self, *args, instance: Instance, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance = instance
        # Shown (and needed) only for HTTPS, TCP SSL and QUIC; clean() enforces it then.
        self.fields["default_certificate"].marked_required = True
        state_ranges(self)

    def clean(self) -> dict:
        cleaned = super().clean()
        protocol, port = cleaned.get("protocol"), cleaned.get("port")
        if protocol and port:
            conflict = rules.port_conflict(self.instance, protocol, port)
            if conflict:
                self.add_error("port", conflict)
        quota = rules.quota_exceeded(self.instance)
        if quota:
            self.add_error(None, quota)
        group = cleaned.get("server_group")
        if (
            protocol
            and group
            and group.backend_protocol not in compatible_backend_protocols(protocol)
        ):
            self.add_error(
                "server_group",
                f"{group.name} uses backend protocol {group.get_backend_protocol_display()}, "
                f"which a {P(protocol).label} listener cannot forward to.",
            )
        if protocol == P.QUIC:
            cleaned["tls_policy"] = None
        if protocol in CERTIFICATE:
            certificate, policy = cleaned.get("default_certificate"), cleaned.get("tls_policy")
            if not certificate:
                self.add_error(
                    "default_certificate",
                    "HTTPS, TCP SSL and QUIC listeners need a server certificate.",
                )
            elif certificate.not_after <= timezone.now():
                self.add_error("default_certificate", f"{certificate.name} has expired.")
            elif policy:
                problem = rules.policy_cannot_serve(policy, certificate)
                if problem:
                    self.add_error("tls_policy", problem)
        else:
            cleaned["default_certificate"] = None
            cleaned["tls_policy"] = None
        return cleaned
