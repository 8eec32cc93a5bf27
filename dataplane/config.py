"""The snapshot schema: the single contract between the console and a dataplane node.

A snapshot is the whole desired configuration of one load balancer instance at one `generation`.
It is plain data (frozen dataclasses), decoded strictly from JSON: unknown fields and wrong types
are refused, and `validate()` collects every problem as "path: message" so the console can show
all of them at once. Ranges and defaults follow the seeds; docs/dataplane-config.md lists them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from dataplane.rules import QPS_PER_CLIENT_IP, ForwardingRule, validate_rules

PROTOCOLS = ("http", "https", "tcp", "tcp_ssl", "udp", "quic")
HTTP_PROTOCOLS = frozenset({"http", "https"})
# Seed 003's Layer-7 listeners: requests go through the HTTP proxy.
LAYER7_PROTOCOLS = HTTP_PROTOCOLS | {"quic"}
TLS_PROTOCOLS = frozenset({"https", "tcp_ssl"})
# Listeners on UDP sockets; the others listen on TCP. Ports are unique per transport.
DATAGRAM_PROTOCOLS = frozenset({"udp", "quic"})
# Same names as dataplane.balancing.ALGORITHMS (a test keeps them equal); repeated here so the
# schema stays importable on its own by the console.
SCHEDULERS = (
    "weighted_round_robin",
    "round_robin",
    "weighted_least_connections",
    "source_ip_hash",
)
# Seed 004: a TCP SSL listener offers weighted round robin and weighted least connections.
TCP_SSL_SCHEDULERS = ("weighted_round_robin", "weighted_least_connections")
PERSISTENCE_MODES = ("none", "insert_cookie", "rewrite_cookie", "source_ip")
ACL_MODES = ("off", "whitelist", "blacklist")
XFF_MODES = ("add", "remove", "off")
# Seed 003: gRPC server groups serve HTTPS listeners with HTTP/2 enabled.
BACKEND_PROTOCOLS = ("http", "https", "grpc", "tcp", "udp")
HEALTH_CHECK_PROTOCOLS = ("tcp", "http", "https", "udp")
# Seed 001 "Data Compression": off, Gzip only (seed 000's GZIP), or Brotli with Gzip.
COMPRESSION_MODES = ("off", "gzip", "brotli_gzip")
# Client IP preservation for TCP listeners: the PROXY protocol header sent to backends (haproxy).
PROXY_PROTOCOL_VERSIONS = ("off", "v1", "v2")
PROXY_PROTOCOL_LISTENERS = frozenset({"tcp", "tcp_ssl"})
# Seed 000: a listener's bandwidth limit, in Mbit/s.
LISTENER_BANDWIDTH_MBIT = (1, 5120)
INSTANCE_BANDWIDTH_MBIT = (1, 100_000)
# Seed 002: slow start duration in seconds.
SLOW_START_DURATION = (30, 1200)
# A backend server's state: enabled takes traffic; draining takes nothing new and what it still
# serves is cut at its drain_deadline; maintenance takes nothing and keeps nothing.
SERVER_STATES = ("enabled", "draining", "maintenance")
# drain_deadline is wall-clock Unix seconds, so a node restarted mid-drain knows the time left.
# The upper bound (year 2100) only refuses nonsense; the console sets at most an hour ahead.
DRAIN_DEADLINE_MAX = 4_102_444_800
# Schedulers that take weights and so can ramp a server's weight (see dataplane.slowstart).
SLOW_START_SCHEDULERS = ("weighted_round_robin", "weighted_least_connections")
UDP_PAYLOAD_MAX = 64
# Throttling by QPS per client IP (seeds 001, 003): requests per second one client IP may send to
# a listener, or through one forwarding rule; over it the node answers 429 with Retry-After.
# QPS_PER_CLIENT_IP (1-100,000) comes from dataplane.rules, whose rules carry it too.
# Retries to another server after a connect failure (any method) or a 502/503 answer (idempotent
# methods only); the budget caps retries at this percentage of the listener's requests.
RETRIES = (0, 3)
RETRY_BUDGET_PERCENT = (1, 100)
# Passive health checks (outlier detection): a server failing this many requests in a row (5xx
# answers, connect failures) is ejected for base_ejection_time, longer at each repeated ejection up
# to max_ejection_time; never more than max_ejection_percent of a group at once (fail open).
PASSIVE_CONSECUTIVE_FAILURES = (1, 100)
PASSIVE_EJECTION_TIME = (1, 3600)
PASSIVE_MAX_EJECTION_PERCENT = (1, 100)
# A listener's own pages for the answers the node gives when no backend can: 502, 503, 504, and
# "maintenance" (a 503 served while every server of the group is in Maintenance).
ERROR_PAGE_STATUSES = ("502", "503", "504", "maintenance")
ERROR_PAGE_CONTENT_TYPES = ("text/html", "text/plain", "application/json")
ERROR_PAGE_MAX_BYTES = 65_536
# "leaf": the client's certificate is checked against its issuer's CRL; "chain": every
# certificate of the client's chain is (OpenSSL then needs a CRL from every CA in the chain).
CRL_CHECKS = ("leaf", "chain")
# The console counts generations in a 64-bit database column.
MAX_GENERATION = 2**63 - 1
STATUS_CLASSES = ("http_1xx", "http_2xx", "http_3xx", "http_4xx", "http_5xx")
TLS_VERSIONS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
PREDEFINED_TLS_POLICIES = (
    "tls_cipher_policy_1_0",
    "tls_cipher_policy_1_1",
    "tls_cipher_policy_1_2",
    "tls_cipher_policy_1_2_strict",
    "tls_cipher_policy_1_2_strict_with_1_3",
)
# The cipher suites a custom policy may name (the set the ALB security policies are built from).
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)
TLS13_CIPHERSUITES = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)

_ID_BODY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# Seed 002 health check path: 1-80 characters starting with "/", from this character set.
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9\-/.%?#&_~';@$*+,=!:()]{0,79}$")
_COOKIE_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,200}$")
# The backend protocols each listener protocol can forward to (seed 003's table).
_GROUP_PROTOCOLS = {
    "http": ("http", "https"),
    "https": ("http", "https", "grpc"),
    "tcp": ("tcp",),
    "tcp_ssl": ("tcp",),
    "udp": ("udp",),
    "quic": ("http",),
}
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
# An ACME key authorization: token "." base64url SHA-256 thumbprint of the account key.
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,256}\.[A-Za-z0-9_-]{43}")


class ConfigError(ValueError):
    """A snapshot that cannot be applied; `reasons` lists every problem as 'path: message'."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class BackendServer:
    id: str
    address: str
    port: int
    weight: int = 100
    state: str = "enabled"
    # draining only (required then, refused otherwise): when what remains on it is closed.
    drain_deadline: int | None = None

    @property
    def in_service(self) -> bool:
        return self.state == "enabled"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    enabled: bool = True
    protocol: str = "tcp"
    port: int | None = None
    domain: str | None = None
    path: str = "/"
    interval: int = 5
    timeout: int = 2
    healthy_threshold: int = 3
    unhealthy_threshold: int = 3
    expected_codes: tuple[str, ...] = ("http_2xx", "http_3xx")
    # UDP checks: the request datagram, and text the reply must contain ("" accepts any reply).
    udp_request: str = ""
    udp_expected: str = ""


@dataclass(frozen=True, slots=True)
class PassiveHealthCheck:
    """Outlier detection on live traffic; ranges in PASSIVE_* above."""

    enabled: bool = False
    consecutive_failures: int = 5
    base_ejection_time: int = 30
    max_ejection_time: int = 300
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class ServerGroup:
    id: str
    name: str = ""
    backend_protocol: str = "http"
    servers: tuple[BackendServer, ...] = ()
    health_check: HealthCheck = field(default_factory=HealthCheck)
    slow_start: bool = False
    slow_start_duration: int = 30
    # backend_protocol https only: verify the servers' certificates against this CA.
    backend_ca_certificate_id: str | None = None
    passive_health_check: PassiveHealthCheck = field(default_factory=PassiveHealthCheck)


@dataclass(frozen=True, slots=True)
class Persistence:
    mode: str = "none"
    # insert_cookie: the SERVERID cookie's Max-Age; source_ip: how long an idle client keeps its
    # server.
    cookie_timeout: int = 1000
    cookie_name: str | None = None


@dataclass(frozen=True, slots=True)
class AccessControl:
    mode: str = "off"
    acl_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveClientIp:
    enabled: bool = False
    trusted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """A page the node serves instead of its plain-text 502, 503 or 504, or while every server of
    the listener's group is in Maintenance (status "maintenance", sent as a 503)."""

    status: str
    content_type: str = "text/html"
    body: str = ""


@dataclass(frozen=True, slots=True)
class Listener:
    id: str
    protocol: str
    port: int
    server_group_id: str | None = None
    name: str = ""
    enabled: bool = True
    scheduler: str = "weighted_round_robin"
    persistence: Persistence = field(default_factory=Persistence)
    acl: AccessControl = field(default_factory=AccessControl)
    idle_timeout: int = 15
    # http, https: the client must deliver a request head within it (else 408), seed 002.
    request_timeout: int = 60
    # http, https, quic: the backend must answer within it (else 504), seed 002.
    response_timeout: int = 60
    # https: offer h2 in ALPN (seeds 000, 001, 003); backends still get HTTP/1.1.
    http2: bool = False
    x_forwarded_for: str = "add"
    x_forwarded_proto: bool = False
    x_forwarded_port: bool = False
    x_forwarded_host: bool = False
    x_forwarded_client_srcport: bool = False
    slb_id: bool = False
    slb_ip: bool = False
    clientcert_subjectdn: bool = False
    clientcert_issuerdn: bool = False
    clientcert_fingerprint: bool = False
    clientcert_clientverify: bool = False
    retrieve_client_ip: RetrieveClientIp = field(default_factory=RetrieveClientIp)
    default_certificate_id: str | None = None
    sni_certificate_ids: tuple[str, ...] = ()
    tls_policy: str = "tls_cipher_policy_1_0"
    ca_certificate_id: str | None = None
    compression: str = "off"
    bandwidth_mbit: int | None = None
    quic_listener_id: str | None = None
    # Seed 002 advanced forwarding (http, https): tried in order before the default group.
    forwarding_rules: tuple[ForwardingRule, ...] = ()
    # tcp, tcp_ssl: "v1" or "v2" sends a PROXY protocol header to the backend first.
    proxy_protocol: str = "off"
    # Seed 002 "Transfer Load Balancer EIP": X-Forwarded-ELB-IP carries the bind address.
    x_forwarded_elb_ip: bool = False
    # One JSON line per request (http, https) or connection (tcp, tcp_ssl, udp session) in the
    # node's access log and its in-memory ring (dataplane.accesslog).
    access_log: bool = False
    # http, https, quic: requests per second per settled client IP; over it, 429 (seeds 001/003).
    qps_per_client_ip: int | None = None
    # http, https, quic: tries on another server after the first (see RETRIES).
    retries: int = 1
    retry_budget_percent: int = 20
    # http, https, quic: at most one per status in ERROR_PAGE_STATUSES.
    error_pages: tuple[ErrorPage, ...] = ()

    @property
    def is_http(self) -> bool:
        return self.protocol in HTTP_PROTOCOLS

    @property
    def is_layer7(self) -> bool:
        """HTTP, HTTPS and QUIC (seed 003): requests go through the HTTP proxy, so forwarding
        rules, compression and cookie persistence apply."""
        return self.protocol in LAYER7_PROTOCOLS

    @property
    def is_tls(self) -> bool:
        return self.protocol in TLS_PROTOCOLS

    @property
    def is_datagram(self) -> bool:
        return self.protocol in DATAGRAM_PROTOCOLS

    @property
    def mutual_tls(self) -> bool:
        return self.ca_certificate_id is not None


@dataclass(frozen=True, slots=True)
class Certificate:
    id: str
    certificate_pem: str
    private_key_pem: str
    chain_pem: str = ""

    def __repr__(self) -> str:
        # Keep private keys out of logs and tracebacks.
        return f"Certificate(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class CaCertificate:
    id: str
    certificate_pem: str
    # Certificate revocation lists checked on the client certificates of mutual-TLS listeners,
    # one PEM "X509 CRL" block each; `crl_check` says how much of a client's chain is checked.
    crls: tuple[str, ...] = ()
    crl_check: str = "leaf"


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    id: str
    name: str = ""
    min_version: str = "TLSv1.2"
    max_version: str = "TLSv1.2"
    ciphers: tuple[str, ...] = ()
    tls13_ciphersuites: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Acl:
    id: str
    entries: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TlsAlpnChallenge:
    """An ACME TLS-ALPN-01 challenge (RFC 8737) the node's TLS listeners answer while pending."""

    domain: str
    key_authorization: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    instance_id: str
    generation: int
    bind_address: str = "127.0.0.1"
    listeners: tuple[Listener, ...] = ()
    server_groups: tuple[ServerGroup, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    ca_certificates: tuple[CaCertificate, ...] = ()
    tls_policies: tuple[TlsPolicy, ...] = ()
    acls: tuple[Acl, ...] = ()
    # The instance's bandwidth in Mbit/s; listener limits may not add up to more.
    bandwidth_mbit: int | None = None
    # ACME validations in progress (HTTP-01 ones travel as fixed-response forwarding rules).
    acme_tls_alpn_challenges: tuple[TlsAlpnChallenge, ...] = ()

    ID_PREFIXES: ClassVar[dict[str, str]] = {
        "listeners": "lsn-",
        "server_groups": "sgp-",
        "certificates": "cert-",
        "ca_certificates": "cert-",
        "tls_policies": "tls-",
        "acls": "acl-",
    }

    # -- JSON ------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: bytes | bytearray | str) -> Snapshot:
        """Decode and validate; raises ConfigError listing every problem found."""
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError([f"snapshot: not valid JSON ({exc})"]) from None
        except RecursionError:
            # The schema is a few levels deep; only a document built to exhaust the parser's
            # stack nests this far.
            raise ConfigError(["snapshot: JSON nested too deeply"]) from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Snapshot:
        errors: list[str] = []
        snapshot = _decode(cls, raw, "", errors)
        if errors:
            raise ConfigError(errors)
        snapshot.validate()
        return snapshot

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    # -- lookups ---------------------------------------------------------------------------------

    def server_group(self, group_id: str | None) -> ServerGroup | None:
        return next((g for g in self.server_groups if g.id == group_id), None)

    def certificate(self, cert_id: str | None) -> Certificate | None:
        return next((c for c in self.certificates if c.id == cert_id), None)

    def ca_certificate(self, cert_id: str | None) -> CaCertificate | None:
        return next((c for c in self.ca_certificates if c.id == cert_id), None)

    def tls_policy(self, policy_id: str) -> TlsPolicy | None:
        """A custom policy by id; None for predefined names (dataplane.tls knows those)."""
        return next((p for p in self.tls_policies if p.id == policy_id), None)

    def acl(self, acl_id: str | None) -> Acl | None:
        return next((a for a in self.acls if a.id == acl_id), None)

    def listener(self, listener_id: str | None) -> Listener | None:
        return next((x for x in self.listeners if x.id == listener_id), None)

    # -- validation ------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ConfigError with every range, format and cross-reference problem."""
        errors: list[str] = []
        _Validator(self, errors).run()
        if errors:
            raise ConfigError(errors)


# -- decoding --------------------------------------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return "a list" if typing.get_origin(tp) is tuple else str(tp)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _decode(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if value is None:
            return None
        return _decode(options[0], value, path, errors)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{path or 'snapshot'}: must be an object")
            return None
        hints = _hints(tp)
        errors_before = len(errors)
        known = {f.name for f in dataclasses.fields(tp)}
        for key in value:
            if key not in known:
                errors.append(f"{_join(path, key)}: unknown field")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(hints[f.name], value[f.name], _join(path, f.name), errors)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(f"{_join(path, f.name)}: is required")
        if len(errors) > errors_before:
            # Keep decoding siblings for more reasons, but never build a half-typed object.
            return None
        return tp(**kwargs)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        if not isinstance(value, list):
            errors.append(f"{path}: must be a list")
            return ()
        return tuple(
            _decode(item_type, item, f"{path}[{index}]", errors) for index, item in enumerate(value)
        )
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{path}: must be {_type_name(tp)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: must be {_type_name(tp)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            errors.append(f"{path}: must be {_type_name(tp)}")
        elif not _is_unicode(value):
            # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 writer (a log line, a
            # header, a certificate file) can encode later.
            errors.append(f"{path}: must be Unicode text (it holds a lone surrogate)")
        return value
    raise TypeError(f"unsupported schema type {tp!r}")  # a bug in this module, not in the input


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    return value


# -- validation ------------------------------------------------------------------------------------


def _in_range(errors: list[str], path: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        errors.append(f"{path}: {value} is out of range {low}-{high}")


def _one_of(errors: list[str], path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        errors.append(f"{path}: {value!r} is not one of {', '.join(allowed)}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_hostname(text: str) -> bool:
    if not text or len(text) > 253:
        return False
    labels = text.rstrip(".").split(".")
    return all(_HOSTNAME_LABEL.match(label) for label in labels)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return False
    return True


class _Validator:
    def __init__(self, snapshot: Snapshot, errors: list[str]) -> None:
        self.s = snapshot
        self.errors = errors

    def run(self) -> None:
        s, errors = self.s, self.errors
        if not re.fullmatch("lb-" + _ID_BODY, s.instance_id):
            errors.append(f"instance_id: {s.instance_id!r} must look like lb-xxxxxxxx")
        if s.generation < 1:
            errors.append(f"generation: {s.generation} must be at least 1")
        elif s.generation > MAX_GENERATION:
            # Accepted, it would make every later push from the console look older.
            errors.append(f"generation: {s.generation} is above {MAX_GENERATION}")
        if not _is_ip(s.bind_address):
            errors.append(f"bind_address: {s.bind_address!r} is not an IP address")
        for collection, prefix in Snapshot.ID_PREFIXES.items():
            seen: set[str] = set()
            for index, item in enumerate(getattr(s, collection)):
                path = f"{collection}[{index}].id"
                if not re.fullmatch(re.escape(prefix) + _ID_BODY, item.id):
                    errors.append(f"{path}: {item.id!r} must look like {prefix}xxxxxxxx")
                if item.id in seen:
                    errors.append(f"{path}: duplicate id {item.id!r}")
                seen.add(item.id)
        for index, group in enumerate(s.server_groups):
            self.server_group(f"server_groups[{index}]", group)
        for index, cert in enumerate(s.certificates):
            self.certificate(f"certificates[{index}]", cert)
        for index, ca in enumerate(s.ca_certificates):
            if "-----BEGIN CERTIFICATE-----" not in ca.certificate_pem:
                errors.append(f"ca_certificates[{index}].certificate_pem: not a PEM certificate")
            self.revocation_lists(f"ca_certificates[{index}]", ca)
        for index, policy in enumerate(s.tls_policies):
            self.tls_policy(f"tls_policies[{index}]", policy)
        for index, acl in enumerate(s.acls):
            for entry_index, entry in enumerate(acl.entries):
                if not _is_network(entry):
                    errors.append(
                        f"acls[{index}].entries[{entry_index}]: {entry!r} is not an IP address "
                        "or CIDR block"
                    )
        # http, https, tcp and tcp_ssl listen on TCP sockets, udp and quic on UDP sockets: a port
        # is taken per transport.
        ports: dict[tuple[bool, int], Listener] = {}
        for index, listener in enumerate(s.listeners):
            path = f"listeners[{index}]"
            self.listener(path, listener)
            if listener.enabled:
                key = (listener.is_datagram, listener.port)
                other = ports.get(key)
                if other is not None:
                    transport = "UDP" if listener.is_datagram else "TCP"
                    errors.append(
                        f"{path}.port: {transport} port {listener.port} is already used by "
                        f"{other.protocol} listener {other.id}"
                    )
                ports.setdefault(key, listener)
        for index, challenge in enumerate(s.acme_tls_alpn_challenges):
            self.tls_alpn_challenge(f"acme_tls_alpn_challenges[{index}]", challenge)
        if s.bandwidth_mbit is not None:
            _in_range(errors, "bandwidth_mbit", s.bandwidth_mbit, *INSTANCE_BANDWIDTH_MBIT)
            allocated = sum(x.bandwidth_mbit or 0 for x in s.listeners)
            if allocated > s.bandwidth_mbit:
                errors.append(
                    f"bandwidth_mbit: the listeners' limits add up to {allocated} Mbit/s, more "
                    f"than the instance's {s.bandwidth_mbit} Mbit/s"
                )

    def server_group(self, path: str, group: ServerGroup) -> None:
        errors = self.errors
        _one_of(errors, f"{path}.backend_protocol", group.backend_protocol, BACKEND_PROTOCOLS)
        ids: set[str] = set()
        endpoints: set[tuple[str, int]] = set()
        for index, server in enumerate(group.servers):
            spath = f"{path}.servers[{index}]"
            if not server.id:
                errors.append(f"{spath}.id: must not be empty")
            if server.id in ids:
                errors.append(f"{spath}.id: duplicate server id {server.id!r}")
            ids.add(server.id)
            if not (_is_ip(server.address) or _is_hostname(server.address)):
                errors.append(f"{spath}.address: {server.address!r} is not an IP address or host")
            _in_range(errors, f"{spath}.port", server.port, 1, 65535)
            _in_range(errors, f"{spath}.weight", server.weight, 0, 100)
            _one_of(errors, f"{spath}.state", server.state, SERVER_STATES)
            if server.state == "draining":
                if server.drain_deadline is None:
                    errors.append(f"{spath}.drain_deadline: is required while draining")
                else:
                    _in_range(
                        errors,
                        f"{spath}.drain_deadline",
                        server.drain_deadline,
                        0,
                        DRAIN_DEADLINE_MAX,
                    )
            elif server.drain_deadline is not None:
                errors.append(f"{spath}.drain_deadline: only a draining server has one")
            if (server.address, server.port) in endpoints:
                errors.append(f"{spath}: {server.address}:{server.port} is listed twice")
            endpoints.add((server.address, server.port))
        check = group.health_check
        hpath = f"{path}.health_check"
        _one_of(errors, f"{hpath}.protocol", check.protocol, HEALTH_CHECK_PROTOCOLS)
        if check.port is not None:
            _in_range(errors, f"{hpath}.port", check.port, 1, 65535)
        if check.domain is not None and not (
            _is_ip(check.domain) or (_is_hostname(check.domain) and len(check.domain) <= 100)
        ):
            errors.append(f"{hpath}.domain: {check.domain!r} is not a domain name or IP address")
        if not _HEALTH_PATH.match(check.path):
            errors.append(
                f"{hpath}.path: {check.path!r} must start with / and have 1-80 allowed characters"
            )
        # The wider union of seed 002 (1-50 s) and seed 004 (interval 5-300 s, timeout 2-60 s).
        _in_range(errors, f"{hpath}.interval", check.interval, 1, 300)
        _in_range(errors, f"{hpath}.timeout", check.timeout, 1, 60)
        if check.timeout > check.interval:
            errors.append(
                f"{hpath}.timeout: {check.timeout} must not exceed the interval {check.interval}"
            )
        _in_range(errors, f"{hpath}.healthy_threshold", check.healthy_threshold, 1, 10)
        _in_range(errors, f"{hpath}.unhealthy_threshold", check.unhealthy_threshold, 1, 10)
        if check.protocol in ("http", "https") and not check.expected_codes:
            errors.append(f"{hpath}.expected_codes: at least one is needed for HTTP checks")
        for index, code in enumerate(check.expected_codes):
            if code not in STATUS_CLASSES and not (
                len(code) == 3 and code.isdigit() and 100 <= int(code) <= 599
            ):
                errors.append(
                    f"{hpath}.expected_codes[{index}]: {code!r} is neither a class such as "
                    "http_2xx nor a status code 100-599"
                )
        for name in ("udp_request", "udp_expected"):
            text = getattr(check, name)
            if len(text) > UDP_PAYLOAD_MAX or not _PRINTABLE.match(text):
                errors.append(
                    f"{hpath}.{name}: at most {UDP_PAYLOAD_MAX} printable ASCII characters"
                )
        if check.enabled and (group.backend_protocol == "udp") != (check.protocol == "udp"):
            errors.append(
                f"{hpath}.protocol: udp server groups are checked with udp, other groups with "
                "tcp, http or https"
            )
        if check.enabled and group.backend_protocol == "grpc" and check.protocol != "tcp":
            # An HTTP/1.1 probe gets no answer from a server that speaks only HTTP/2.
            errors.append(f"{hpath}.protocol: grpc server groups are checked with tcp")
        _in_range(
            errors, f"{path}.slow_start_duration", group.slow_start_duration, *SLOW_START_DURATION
        )
        passive = group.passive_health_check
        ppath = f"{path}.passive_health_check"
        _in_range(
            errors,
            f"{ppath}.consecutive_failures",
            passive.consecutive_failures,
            *PASSIVE_CONSECUTIVE_FAILURES,
        )
        _in_range(
            errors,
            f"{ppath}.base_ejection_time",
            passive.base_ejection_time,
            *PASSIVE_EJECTION_TIME,
        )
        _in_range(
            errors, f"{ppath}.max_ejection_time", passive.max_ejection_time, *PASSIVE_EJECTION_TIME
        )
        if passive.max_ejection_time < passive.base_ejection_time:
            errors.append(
                f"{ppath}.max_ejection_time: {passive.max_ejection_time} is below the base "
                f"ejection time {passive.base_ejection_time}"
            )
        _in_range(
            errors,
            f"{ppath}.max_ejection_percent",
            passive.max_ejection_percent,
            *PASSIVE_MAX_EJECTION_PERCENT,
        )
        if group.backend_ca_certificate_id is not None:
            if group.backend_protocol != "https":
                errors.append(
                    f"{path}.backend_ca_certificate_id: only https server groups verify their "
                    "servers' certificates"
                )
            elif self.s.ca_certificate(group.backend_ca_certificate_id) is None:
                errors.append(
                    f"{path}.backend_ca_certificate_id: no CA certificate "
                    f"{group.backend_ca_certificate_id!r}"
                )

    def certificate(self, path: str, cert: Certificate) -> None:
        errors = self.errors
        if "-----BEGIN CERTIFICATE-----" not in cert.certificate_pem:
            errors.append(f"{path}.certificate_pem: not a PEM certificate")
        if not re.search(r"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----", cert.private_key_pem):
            errors.append(f"{path}.private_key_pem: not an unencrypted PEM private key")
        if cert.chain_pem and "-----BEGIN CERTIFICATE-----" not in cert.chain_pem:
            errors.append(f"{path}.chain_pem: not a PEM certificate chain")
        for name in ("certificate_pem", "private_key_pem", "chain_pem"):
            if "DH PARAMETERS" in getattr(cert, name):
                # Seed 000: DH parameter files are not supported (ECDHE only).
                errors.append(f"{path}.{name}: DH PARAMETERS are not supported")

    def revocation_lists(self, path: str, ca: CaCertificate) -> None:
        errors = self.errors
        _one_of(errors, f"{path}.crl_check", ca.crl_check, CRL_CHECKS)
        for index, crl in enumerate(ca.crls):
            # Exactly one block: the node loads CRLs the way OpenSSL loads a CA file, so a
            # CERTIFICATE block slipped in here would become a trusted client CA.
            text = crl.strip()
            if not (
                text.startswith("-----BEGIN X509 CRL-----")
                and text.endswith("-----END X509 CRL-----")
                and text.count("-----BEGIN ") == 1
            ):
                errors.append(f"{path}.crls[{index}]: not one PEM X509 CRL block")

    def tls_alpn_challenge(self, path: str, challenge: TlsAlpnChallenge) -> None:
        # The name goes into a certificate and the key authorization is token.thumbprint, both
        # base64url (RFC 8555 8.1).
        if not _is_hostname(challenge.domain) or "*" in challenge.domain:
            self.errors.append(f"{path}.domain: {challenge.domain!r} is not a host name")
        if not _KEY_AUTHORIZATION.fullmatch(challenge.key_authorization):
            self.errors.append(f"{path}.key_authorization: not an ACME key authorization")

    def tls_policy(self, path: str, policy: TlsPolicy) -> None:
        errors = self.errors
        if policy.id in PREDEFINED_TLS_POLICIES:
            errors.append(f"{path}.id: {policy.id!r} is a predefined policy name")
        _one_of(errors, f"{path}.min_version", policy.min_version, TLS_VERSIONS)
        _one_of(errors, f"{path}.max_version", policy.max_version, TLS_VERSIONS)
        if (
            policy.min_version in TLS_VERSIONS
            and policy.max_version in TLS_VERSIONS
            and TLS_VERSIONS.index(policy.min_version) > TLS_VERSIONS.index(policy.max_version)
        ):
            errors.append(f"{path}.min_version: {policy.min_version} is above max_version")
        for index, cipher in enumerate(policy.ciphers):
            _one_of(errors, f"{path}.ciphers[{index}]", cipher, TLS12_CIPHERS)
        for index, suite in enumerate(policy.tls13_ciphersuites):
            _one_of(errors, f"{path}.tls13_ciphersuites[{index}]", suite, TLS13_CIPHERSUITES)
        if policy.min_version != "TLSv1.3" and not policy.ciphers:
            errors.append(f"{path}.ciphers: at least one cipher is needed below TLSv1.3")
        if policy.max_version == "TLSv1.3" and not policy.tls13_ciphersuites:
            errors.append(f"{path}.tls13_ciphersuites: at least one is needed for TLSv1.3")

    def listener(self, path: str, listener: Listener) -> None:
        s, errors = self.s, self.errors
        _one_of(errors, f"{path}.protocol", listener.protocol, PROTOCOLS)
        _in_range(errors, f"{path}.port", listener.port, 1, 65535)
        if len(listener.name) > 255:
            errors.append(f"{path}.name: longer than 255 characters")
        schedulers = TCP_SSL_SCHEDULERS if listener.protocol == "tcp_ssl" else SCHEDULERS
        _one_of(errors, f"{path}.scheduler", listener.scheduler, schedulers)
        _in_range(errors, f"{path}.idle_timeout", listener.idle_timeout, 1, 600)
        _in_range(errors, f"{path}.request_timeout", listener.request_timeout, 1, 600)
        _in_range(errors, f"{path}.response_timeout", listener.response_timeout, 1, 300)
        if listener.http2 and listener.protocol != "https":
            errors.append(f"{path}.http2: only https listeners offer HTTP/2")
        _one_of(errors, f"{path}.x_forwarded_for", listener.x_forwarded_for, XFF_MODES)

        if listener.server_group_id is not None:
            group = s.server_group(listener.server_group_id)
            if group is None:
                errors.append(
                    f"{path}.server_group_id: no server group {listener.server_group_id!r}"
                )
            else:
                allowed = _GROUP_PROTOCOLS.get(listener.protocol, ())
                if group.backend_protocol not in allowed:
                    errors.append(
                        f"{path}.server_group_id: {listener.protocol} listeners need "
                        f"{' or '.join(allowed)} server groups, {group.id} is "
                        f"{group.backend_protocol}"
                    )
                elif group.backend_protocol == "grpc":
                    self.grpc_listener(path, listener, group)
                if group.slow_start and listener.scheduler not in SLOW_START_SCHEDULERS:
                    errors.append(
                        f"{path}.scheduler: server group {group.id} uses slow start, which needs "
                        f"weighted_round_robin or weighted_least_connections, not "
                        f"{listener.scheduler}"
                    )

        persistence = listener.persistence
        ppath = f"{path}.persistence"
        _one_of(errors, f"{ppath}.mode", persistence.mode, PERSISTENCE_MODES)
        _in_range(errors, f"{ppath}.cookie_timeout", persistence.cookie_timeout, 1, 86400)
        if listener.protocol == "udp" and persistence.mode != "none":
            errors.append(f"{ppath}.mode: udp listeners have no persistence")
        elif persistence.mode in ("insert_cookie", "rewrite_cookie") and not listener.is_layer7:
            errors.append(f"{ppath}.mode: cookie persistence is for http, https and quic listeners")
        if persistence.mode == "source_ip" and listener.is_layer7:
            errors.append(f"{ppath}.mode: source_ip persistence is for tcp and tcp_ssl listeners")
        if persistence.mode == "rewrite_cookie" and not (
            persistence.cookie_name and _COOKIE_NAME.match(persistence.cookie_name)
        ):
            errors.append(f"{ppath}.cookie_name: rewrite_cookie needs a valid cookie name")

        acl = listener.acl
        _one_of(errors, f"{path}.acl.mode", acl.mode, ACL_MODES)
        if acl.mode != "off" and s.acl(acl.acl_id) is None:
            errors.append(f"{path}.acl.acl_id: no access control list {acl.acl_id!r}")

        for index, entry in enumerate(listener.retrieve_client_ip.trusted):
            for part in entry.replace(";", ",").split(","):
                if part.strip() and not _is_network(part):
                    errors.append(
                        f"{path}.retrieve_client_ip.trusted[{index}]: {part.strip()!r} is not "
                        "an IP address or CIDR block"
                    )
        if listener.retrieve_client_ip.enabled and not listener.retrieve_client_ip.trusted:
            errors.append(f"{path}.retrieve_client_ip.trusted: list the trusted proxies")

        clientcert_flags = (
            listener.clientcert_subjectdn,
            listener.clientcert_issuerdn,
            listener.clientcert_fingerprint,
            listener.clientcert_clientverify,
        )
        _one_of(errors, f"{path}.compression", listener.compression, COMPRESSION_MODES)
        if listener.compression != "off" and not listener.is_layer7:
            errors.append(f"{path}.compression: only http, https and quic listeners compress")
        if listener.bandwidth_mbit is not None:
            _in_range(
                errors, f"{path}.bandwidth_mbit", listener.bandwidth_mbit, *LISTENER_BANDWIDTH_MBIT
            )
        self.forwarding_rules(path, listener)
        self.traffic_policy(path, listener)
        _one_of(errors, f"{path}.proxy_protocol", listener.proxy_protocol, PROXY_PROTOCOL_VERSIONS)
        if listener.proxy_protocol != "off" and listener.protocol not in PROXY_PROTOCOL_LISTENERS:
            errors.append(f"{path}.proxy_protocol: only tcp and tcp_ssl listeners send it")
        if listener.quic_listener_id is not None:
            quic = s.listener(listener.quic_listener_id)
            if listener.protocol != "https":
                errors.append(f"{path}.quic_listener_id: only https listeners upgrade to QUIC")
            elif quic is None or quic.protocol != "quic":
                errors.append(
                    f"{path}.quic_listener_id: no quic listener {listener.quic_listener_id!r}"
                )

        if listener.protocol == "quic":
            self.quic_listener(path, listener, clientcert_flags)
        elif listener.protocol == "udp":
            self.udp_listener(path, listener, clientcert_flags)
        elif listener.is_tls:
            if listener.default_certificate_id is None:
                errors.append(f"{path}.default_certificate_id: {listener.protocol} needs one")
            elif s.certificate(listener.default_certificate_id) is None:
                errors.append(
                    f"{path}.default_certificate_id: no certificate "
                    f"{listener.default_certificate_id!r}"
                )
            for index, cert_id in enumerate(listener.sni_certificate_ids):
                if s.certificate(cert_id) is None:
                    errors.append(
                        f"{path}.sni_certificate_ids[{index}]: no certificate {cert_id!r}"
                    )
            if listener.tls_policy not in PREDEFINED_TLS_POLICIES and (
                s.tls_policy(listener.tls_policy) is None
            ):
                errors.append(f"{path}.tls_policy: no TLS policy {listener.tls_policy!r}")
            if listener.ca_certificate_id is not None and (
                s.ca_certificate(listener.ca_certificate_id) is None
            ):
                errors.append(
                    f"{path}.ca_certificate_id: no CA certificate {listener.ca_certificate_id!r}"
                )
            if any(clientcert_flags) and listener.ca_certificate_id is None:
                errors.append(
                    f"{path}: client certificate headers need mutual authentication "
                    "(ca_certificate_id)"
                )
        else:
            for name in ("default_certificate_id", "ca_certificate_id"):
                if getattr(listener, name) is not None:
                    errors.append(f"{path}.{name}: only https and tcp_ssl listeners use TLS")
            if listener.sni_certificate_ids:
                errors.append(
                    f"{path}.sni_certificate_ids: only https and tcp_ssl listeners use TLS"
                )
            if any(clientcert_flags):
                errors.append(f"{path}: client certificate headers need an https listener")

    def traffic_policy(self, path: str, listener: Listener) -> None:
        """Throttling, retries and error pages: layer-7 listeners only."""
        errors = self.errors
        if listener.qps_per_client_ip is not None:
            _in_range(
                errors, f"{path}.qps_per_client_ip", listener.qps_per_client_ip, *QPS_PER_CLIENT_IP
            )
        _in_range(errors, f"{path}.retries", listener.retries, *RETRIES)
        _in_range(
            errors,
            f"{path}.retry_budget_percent",
            listener.retry_budget_percent,
            *RETRY_BUDGET_PERCENT,
        )
        seen: set[str] = set()
        for index, page in enumerate(listener.error_pages):
            ppath = f"{path}.error_pages[{index}]"
            _one_of(errors, f"{ppath}.status", page.status, ERROR_PAGE_STATUSES)
            if page.status in seen:
                errors.append(f"{ppath}.status: a second page for {page.status}")
            seen.add(page.status)
            _one_of(errors, f"{ppath}.content_type", page.content_type, ERROR_PAGE_CONTENT_TYPES)
            if len(page.body.encode()) > ERROR_PAGE_MAX_BYTES:
                errors.append(f"{ppath}.body: at most {ERROR_PAGE_MAX_BYTES} bytes")
        if not listener.is_layer7:
            if listener.qps_per_client_ip is not None:
                errors.append(
                    f"{path}.qps_per_client_ip: only http, https and quic listeners throttle"
                )
            if listener.error_pages:
                errors.append(
                    f"{path}.error_pages: only http, https and quic listeners serve error pages"
                )

    def forwarding_rules(self, path: str, listener: Listener) -> None:
        """Seed 002 advanced forwarding: http, https and quic listeners, forwarding to http(s)
        groups."""
        s, errors = self.s, self.errors
        rules = listener.forwarding_rules
        if not rules:
            return
        rpath = f"{path}.forwarding_rules"
        if not listener.is_layer7:
            errors.append(f"{rpath}: only http, https and quic listeners have forwarding rules")
            return
        errors.extend(
            str(problem)
            for problem in validate_rules(
                rules,
                path=rpath,
                server_group_ids={group.id for group in s.server_groups},
                listener_protocol=listener.protocol,
            )
        )
        for index, rule in enumerate(rules):
            group = s.server_group(rule.action.server_group_id)
            if rule.action.type != "forward" or group is None:
                continue
            gpath = f"{rpath}[{index}].action.server_group_id"
            if group.backend_protocol not in ("http", "https"):
                errors.append(
                    f"{gpath}: {listener.protocol} listeners forward to http or https server "
                    f"groups, {group.id} is {group.backend_protocol}"
                )
            if group.slow_start and listener.scheduler not in SLOW_START_SCHEDULERS:
                errors.append(
                    f"{gpath}: server group {group.id} uses slow start, which needs "
                    f"weighted_round_robin or weighted_least_connections, not "
                    f"{listener.scheduler}"
                )

    def grpc_listener(self, path: str, listener: Listener, group: ServerGroup) -> None:
        """Seed 003: gRPC backends need HTTP/2. Every stream goes to the group as it is, so the
        HTTP/1.1 features that rewrite requests or responses do not apply."""
        errors = self.errors
        if not listener.http2:
            errors.append(f"{path}.http2: gRPC server group {group.id} needs HTTP/2 enabled")
        if listener.forwarding_rules:
            errors.append(f"{path}.forwarding_rules: not offered with a gRPC server group")
        if listener.persistence.mode != "none":
            errors.append(f"{path}.persistence.mode: not offered with a gRPC server group")
        if listener.compression != "off":
            errors.append(f"{path}.compression: gRPC compresses its own messages")
        if listener.bandwidth_mbit is not None:
            errors.append(f"{path}.bandwidth_mbit: not offered with a gRPC server group")

    def quic_listener(self, path: str, listener: Listener, clientcert_flags: tuple) -> None:
        """Seed 003: a server certificate, and no mutual authentication."""
        s, errors = self.s, self.errors
        if listener.default_certificate_id is None:
            errors.append(f"{path}.default_certificate_id: quic needs one")
        elif s.certificate(listener.default_certificate_id) is None:
            errors.append(
                f"{path}.default_certificate_id: no certificate {listener.default_certificate_id!r}"
            )
        if listener.ca_certificate_id is not None:
            errors.append(f"{path}.ca_certificate_id: quic listeners have no mutual authentication")
        if listener.sni_certificate_ids:
            errors.append(f"{path}.sni_certificate_ids: quic listeners serve one certificate")
        if any(clientcert_flags):
            errors.append(f"{path}: quic listeners have no client certificate headers")
        if listener.retrieve_client_ip.enabled:
            errors.append(f"{path}.retrieve_client_ip: not offered on quic listeners")

    def udp_listener(self, path: str, listener: Listener, clientcert_flags: tuple) -> None:
        errors = self.errors
        for name in ("default_certificate_id", "ca_certificate_id"):
            if getattr(listener, name) is not None:
                errors.append(f"{path}.{name}: udp listeners use no TLS")
        if listener.sni_certificate_ids:
            errors.append(f"{path}.sni_certificate_ids: udp listeners use no TLS")
        header_flags = (
            listener.x_forwarded_proto,
            listener.x_forwarded_port,
            listener.x_forwarded_host,
            listener.x_forwarded_client_srcport,
            listener.slb_id,
            listener.slb_ip,
            listener.x_forwarded_elb_ip,
            *clientcert_flags,
        )
        if any(header_flags):
            errors.append(f"{path}: udp listeners carry no HTTP headers")
        if listener.retrieve_client_ip.enabled:
            errors.append(f"{path}.retrieve_client_ip: not offered on udp listeners")
