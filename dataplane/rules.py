"""Advanced forwarding: ordered rules that send a request to a server group, redirect it, or answer.

Seed 002 ("Advanced Forwarding", HTTP and HTTPS listeners): forwarding policies send requests "to
different backend server groups based on HTTP request method, HTTP header, query string, or CIDR
block in addition to domain names and URLs". Seed 003 calls the listener's own server group the
"Default Forwarding Rule", and says SourceIp matching uses the real client IP once Retrieve Client
IP is on. The seeds say nothing more, so this module decides the rest:

Conditions (every condition of a rule must match; within one condition any value may match):
- `host`: names compared by the wildcard rules of dataplane.hostnames (seed 001), case-insensitive,
  without the Host header's port.
- `path` with `match` = `prefix`, `exact` or `regex`: compared with the normalized path (see
  "Paths" below), case sensitive, as nginx locations are; a regex may match anywhere
  (`re.search`), so anchor it with `^`/`$` for a whole-path match.
- `method`: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH or TRACE, as the client sent it.
- `header` with a `name`: the header's whole value, case-insensitive; `*` stands for any run of
  characters and `?` for one, so `*` alone means "present with any value".
- `query`: `key=value` pairs from the decoded query string, case-insensitive, value wildcards as
  for headers.
- `source_ip`: IPv4 or IPv6 addresses or CIDR blocks, matched against the client IP the listener
  settled on (after Retrieve Client IP).

Rules are tried in order and the first whose conditions all match wins; no match means the
listener's default server group. Actions:
- `forward` to a server group id;
- `redirect` with status 301, 302 (the default), 303, 307 or 308; `protocol` left unset keeps the
  request's own; `port` left unset keeps the request's port, except when the protocol changes,
  where it becomes the new protocol's default (an HTTP-to-HTTPS redirect goes to 443, not to
  https://host:80); `host`, `path` and `query` are templates in which `${protocol}`, `${host}`,
  `${port}`, `${path}` and `${query}` stand for the request's values (defaults: keep them; `host`
  may only use `${host}`). A redirect that would change nothing is refused because it would loop.
  The port is left out of the URL when it is the protocol's default;
- `fixed_response`: status 2xx, 4xx or 5xx (default 200), a content type of text/plain, text/css,
  text/html, application/javascript or application/json, and a body of at most 1,024 bytes.
A rule may also carry `qps_per_client_ip` (seeds 001/003): compiled into a limiter on its action
(dataplane.throttle), which the proxy asks when the rule matches, before the action runs.

Paths: a client must not get past a path rule by writing the same path another way, since the
backend will read it the way it likes. On a listener with path conditions:
- `normalize_path()` is the form forwarded to the backend: escaped unreserved characters decoded,
  runs of slashes merged, `.` and `..` segments removed (RFC 3986 2.3, 6.2.2, 5.2.4), so a
  backend that normalizes again finds nothing left to change, and gets the path the rules judged.
- `ambiguous_path()` paths are refused (400): an escaped slash or backslash (`%2F`, `%5C`) or a
  raw backslash. Backends disagree on whether these separate segments (IIS reads a backslash as `/`,
  Apache refuses `%2F`, most keep it inside one segment), so no one reading is safe to judge:
  `/public/..%2Fsecret` is under /public for one backend and /secret for another.
- Conditions compare `matching_path()`: every escape decoded, repeatedly (`%2561` is `a`, for
  backends that decode twice), path parameters dropped (`/x/..;/admin` is `/admin` to Tomcat),
  then slashes and dot segments squashed. With escaped slashes refused, what remains can only
  make a rule match more paths than a backend would read the same way, never fewer.

`ForwardingRule`, `RuleCondition` and `RuleAction` use only the types dataplane.config can decode
(str, int, bool, tuples, nested dataclasses), so the snapshot schema can hold them as they are.
`validate_rules()` reports every problem as a `RuleError(path, message)`; `RuleTable` compiles a
valid list once (regexes, sets, templates) and `match()` is what the proxy calls per request.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from dataplane.hostnames import CertificateSelector, is_recognized_wildcard
from dataplane.throttle import QpsLimiter, rule_limiter

CONDITION_TYPES: Final = ("host", "path", "method", "header", "query", "source_ip")
PATH_MATCHES: Final = ("prefix", "exact", "regex")
HTTP_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
ACTION_TYPES: Final = ("forward", "redirect", "fixed_response")
REDIRECT_CODES: Final = (301, 302, 303, 307, 308)
REDIRECT_PROTOCOLS: Final = ("http", "https")
FIXED_RESPONSE_CONTENT_TYPES: Final = (
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
)
DEFAULT_REDIRECT_CODE: Final = 302
DEFAULT_FIXED_STATUS: Final = 200
MAX_FIXED_BODY_BYTES: Final = 1024
MAX_CONDITIONS: Final = 10
MAX_VALUES: Final = 10
MAX_VALUE_LENGTH: Final = 128
MAX_REGEX_LENGTH: Final = 256
PLACEHOLDERS: Final = ("protocol", "host", "port", "path", "query")
# Same as dataplane.config.QPS_PER_CLIENT_IP (config imports this module, not the reverse).
QPS_PER_CLIENT_IP: Final = (1, 100_000)

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
# Visible ASCII without space; "#" never belongs in a path or query sent to a server.
_URL_TEXT = re.compile(r"^[!-~]*$")
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


# -- the rules as the snapshot carries them ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleCondition:
    type: str
    values: tuple[str, ...] = ()
    # Path conditions only.
    match: str = "prefix"
    # Header conditions only.
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RuleAction:
    type: str
    # forward
    server_group_id: str | None = None
    # redirect (301-308, default 302) and fixed_response (2xx/4xx/5xx, default 200)
    status_code: int | None = None
    # redirect: None and the ${...} defaults keep the request's own values
    protocol: str | None = None
    host: str = "${host}"
    port: int | None = None
    path: str = "${path}"
    query: str = "${query}"
    # fixed_response
    content_type: str = "text/plain"
    body: str = ""


@dataclass(frozen=True, slots=True)
class ForwardingRule:
    id: str
    conditions: tuple[RuleCondition, ...]
    action: RuleAction
    name: str = ""
    # Seeds 001/003 "QPS per client IP": a matching request over this many per second from one
    # client IP is answered 429 before the action runs.
    qps_per_client_ip: int | None = None


class RuleError(ValueError):
    """One problem in a rule list; `path` names the field, as the console shows it."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# -- validation ----------------------------------------------------------------------------------


def _is_host_name(value: str) -> bool:
    if len(value) > 253:
        return False
    labels = value.rstrip(".").split(".")
    return all(_HOST_LABEL.match(label) for label in labels)


def _template_errors(path: str, template: str, allowed: tuple[str, ...]) -> list[RuleError]:
    errors = []
    for name in _PLACEHOLDER.findall(template):
        if name not in allowed:
            names = ", ".join("${" + a + "}" for a in allowed)
            errors.append(RuleError(path, f"unknown placeholder ${{{name}}}; allowed: {names}"))
    return errors


def _condition_errors(path: str, condition: RuleCondition) -> list[RuleError]:
    errors: list[RuleError] = []
    kind = condition.type
    if kind not in CONDITION_TYPES:
        return [RuleError(f"{path}.type", f"{kind!r} is not one of {', '.join(CONDITION_TYPES)}")]
    values = condition.values
    if not values:
        errors.append(RuleError(f"{path}.values", "at least one value is needed"))
    elif len(values) > MAX_VALUES:
        errors.append(RuleError(f"{path}.values", f"at most {MAX_VALUES} values are allowed"))
    if kind == "path" and condition.match not in PATH_MATCHES:
        errors.append(
            RuleError(
                f"{path}.match", f"{condition.match!r} is not one of {', '.join(PATH_MATCHES)}"
            )
        )
    if kind == "header":
        if not condition.name:
            errors.append(RuleError(f"{path}.name", "a header condition needs a header name"))
        elif not _TOKEN.match(condition.name):
            errors.append(RuleError(f"{path}.name", f"{condition.name!r} is not a header name"))
    elif condition.name is not None:
        errors.append(RuleError(f"{path}.name", "only a header condition has a name"))
    for index, value in enumerate(values):
        vpath = f"{path}.values[{index}]"
        limit = MAX_REGEX_LENGTH if kind == "path" and condition.match == "regex" else None
        if not value:
            errors.append(RuleError(vpath, "must not be empty"))
            continue
        if len(value) > (limit or MAX_VALUE_LENGTH):
            errors.append(RuleError(vpath, f"longer than {limit or MAX_VALUE_LENGTH} characters"))
            continue
        message = _value_problem(kind, condition.match, value)
        if message:
            errors.append(RuleError(vpath, message))
    return errors


def _value_problem(kind: str, match: str, value: str) -> str | None:
    """What is wrong with one condition value, or None."""
    if kind == "host":
        if is_recognized_wildcard(value) or ("*" not in value and _is_host_name(value)):
            return None
        return f"{value!r} is not a domain name or a wildcard such as *.example.com"
    if kind == "path":
        if match == "regex":
            try:
                re.compile(value.encode())
            except re.error as exc:
                return f"not a valid regular expression: {exc}"
            return None
        if not value.startswith("/"):
            return "must start with /"
        if not _URL_TEXT.match(value) or "?" in value or "#" in value:
            return "may hold only visible characters, without spaces, ? or #"
        return None
    if kind == "method":
        if value not in HTTP_METHODS:
            return f"{value!r} is not one of {', '.join(HTTP_METHODS)}"
        return None
    if kind == "header":
        if not value.isascii() or not value.isprintable():
            return "may hold only printable ASCII characters"
        return None
    if kind == "query":
        key, eq, rest = value.partition("=")
        if not eq or not key:
            return f"{value!r} must look like key=value"
        if not _URL_TEXT.match(value) or "&" in value or "#" in rest:
            return "may hold only visible characters, without spaces, & or #"
        return None
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"{value!r} is not an IP address or CIDR block"
    return None


def _action_errors(
    path: str,
    action: RuleAction,
    server_group_ids: Collection[str] | None,
    listener_protocol: str | None,
) -> list[RuleError]:
    errors: list[RuleError] = []
    kind = action.type
    if kind == "forward":
        if not action.server_group_id:
            errors.append(RuleError(f"{path}.server_group_id", "choose a server group"))
        elif server_group_ids is not None and action.server_group_id not in server_group_ids:
            errors.append(
                RuleError(f"{path}.server_group_id", f"no server group {action.server_group_id!r}")
            )
    elif kind == "redirect":
        code = action.status_code
        if code is not None and code not in REDIRECT_CODES:
            allowed = ", ".join(map(str, REDIRECT_CODES))
            errors.append(RuleError(f"{path}.status_code", f"{code} is not one of {allowed}"))
        if action.protocol is not None and action.protocol not in REDIRECT_PROTOCOLS:
            errors.append(
                RuleError(f"{path}.protocol", f"{action.protocol!r} is not http or https")
            )
        if action.port is not None and not 1 <= action.port <= 65535:
            errors.append(RuleError(f"{path}.port", f"{action.port} is out of range 1-65535"))
        errors += _redirect_template_errors(path, action)
        if (
            action.protocol in (None, listener_protocol)
            and action.port is None
            and action.host == "${host}"
            and action.path == "${path}"
            and action.query == "${query}"
        ):
            errors.append(
                RuleError(
                    path,
                    "a redirect must change the protocol, host, port, path or query; "
                    "otherwise it sends the client back to the same URL",
                )
            )
    elif kind == "fixed_response":
        code = action.status_code
        if code is not None and not (200 <= code <= 299 or 400 <= code <= 599):
            errors.append(RuleError(f"{path}.status_code", f"{code} is not a 2xx, 4xx or 5xx code"))
        if action.content_type not in FIXED_RESPONSE_CONTENT_TYPES:
            allowed = ", ".join(FIXED_RESPONSE_CONTENT_TYPES)
            errors.append(
                RuleError(
                    f"{path}.content_type", f"{action.content_type!r} is not one of {allowed}"
                )
            )
        size = len(action.body.encode())
        if size > MAX_FIXED_BODY_BYTES:
            errors.append(
                RuleError(f"{path}.body", f"{size} bytes; at most {MAX_FIXED_BODY_BYTES} allowed")
            )
    else:
        errors.append(
            RuleError(f"{path}.type", f"{kind!r} is not one of {', '.join(ACTION_TYPES)}")
        )
    return errors


def _redirect_template_errors(path: str, action: RuleAction) -> list[RuleError]:
    errors: list[RuleError] = []
    host = action.host
    errors += _template_errors(f"{path}.host", host, ("host",))
    literal_host = _PLACEHOLDER.sub("", host)
    if not host:
        errors.append(RuleError(f"{path}.host", "must not be empty"))
    elif len(host) > MAX_VALUE_LENGTH:
        errors.append(RuleError(f"{path}.host", f"longer than {MAX_VALUE_LENGTH} characters"))
    elif literal_host and not re.fullmatch(r"[A-Za-z0-9.-]+", literal_host):
        errors.append(RuleError(f"{path}.host", f"{host!r} is not a domain name"))
    elif host == literal_host and not _is_host_name(host):
        errors.append(RuleError(f"{path}.host", f"{host!r} is not a domain name"))
    for field in ("path", "query"):
        value = getattr(action, field)
        fpath = f"{path}.{field}"
        errors += _template_errors(fpath, value, PLACEHOLDERS)
        if len(value) > MAX_VALUE_LENGTH:
            errors.append(RuleError(fpath, f"longer than {MAX_VALUE_LENGTH} characters"))
        elif not _URL_TEXT.match(value) or "#" in value:
            errors.append(RuleError(fpath, "may hold only visible characters, without spaces or #"))
    if not action.path.startswith(("/", "${path}")):
        errors.append(RuleError(f"{path}.path", "must start with / or ${path}"))
    if action.query.startswith("?"):
        errors.append(RuleError(f"{path}.query", "give the query without the leading ?"))
    return errors


def validate_rules(
    rules: Sequence[ForwardingRule],
    *,
    path: str = "forwarding_rules",
    server_group_ids: Collection[str] | None = None,
    listener_protocol: str | None = None,
) -> list[RuleError]:
    """Every problem in a listener's rule list; empty when it can be compiled.

    `server_group_ids`, when given, are the groups a forward action may name; `listener_protocol`
    ("http" or "https"), when given, also catches a redirect to the listener's own protocol that
    changes nothing else.
    """
    errors: list[RuleError] = []
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        rpath = f"{path}[{index}]"
        if not rule.id:
            errors.append(RuleError(f"{rpath}.id", "must not be empty"))
        elif rule.id in seen:
            errors.append(RuleError(f"{rpath}.id", f"duplicate rule id {rule.id!r}"))
        seen.add(rule.id)
        if len(rule.name) > 255:
            errors.append(RuleError(f"{rpath}.name", "longer than 255 characters"))
        qps = rule.qps_per_client_ip
        if qps is not None and not QPS_PER_CLIENT_IP[0] <= qps <= QPS_PER_CLIENT_IP[1]:
            errors.append(
                RuleError(
                    f"{rpath}.qps_per_client_ip",
                    f"{qps} is out of range {QPS_PER_CLIENT_IP[0]}-{QPS_PER_CLIENT_IP[1]}",
                )
            )
        if not rule.conditions:
            errors.append(
                RuleError(
                    f"{rpath}.conditions",
                    "at least one condition is needed; requests that match no rule already go "
                    "to the default server group",
                )
            )
        elif len(rule.conditions) > MAX_CONDITIONS:
            errors.append(
                RuleError(f"{rpath}.conditions", f"at most {MAX_CONDITIONS} conditions are allowed")
            )
        for cindex, condition in enumerate(rule.conditions):
            errors += _condition_errors(f"{rpath}.conditions[{cindex}]", condition)
        errors += _action_errors(
            f"{rpath}.action", rule.action, server_group_ids, listener_protocol
        )
    return errors


# -- paths ---------------------------------------------------------------------------------------

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Rounds of percent-decoding for matching; more than two levels of escaping is no real path.
_DECODE_ROUNDS = 3
# Separators some backends see and others do not: an escaped slash or backslash, a backslash.
_AMBIGUOUS = re.compile(rb"%(?:2[Ff]|5[Cc])|\\")
# A segment's parameters (RFC 3986 3.3), which servlet containers drop before resolving the path.
_PATH_PARAMETERS = re.compile(rb";[^/]*")


def _unreserved(escape: re.Match[bytes]) -> bytes:
    byte = int(escape[1], 16)
    return bytes((byte,)) if byte in _UNRESERVED else escape[0]


def _squash(path: bytes) -> bytes:
    """`path` with dot segments removed (RFC 3986 5.2.4) and runs of slashes merged."""
    out: list[bytes] = []
    segments = path.split(b"/")
    last = len(segments) - 1
    for index in range(1, last + 1):
        segment = segments[index]
        if segment == b"..":
            if out:
                out.pop()
        elif segment and segment != b".":
            out.append(segment)
            continue
        if index == last:
            out.append(b"")  # "/a/." and "/a/" name the directory: keep the trailing slash
    return b"/" + b"/".join(out)


def ambiguous_path(path: bytes) -> bool:
    """Whether backends may disagree on where `path`'s segments end (see "Paths" above)."""
    return _AMBIGUOUS.search(path) is not None


# Whether a path may need normalizing, or its matching form differs from it. One regex search
# each: on bytes, `b"%" in path` raises and clears a TypeError inside CPython (it tries the
# operand as an integer first), which costs more than the search itself.
needs_normalizing = re.compile(rb"[%\\]|//|/\.").search
_NEEDS_MATCHING_FORM = re.compile(rb"[%;]|//|/\.").search
_SQUASHABLE = re.compile(rb"//|/\.").search


def normalize_path(path: bytes) -> bytes:
    """The path a listener with path conditions forwards: escaped unreserved characters decoded,
    slashes merged, dot segments removed. Other escapes (`%2F`, `%3F`, `%25`...) stay as they
    are: decoding them would change what the path means. Not an origin-form path: unchanged."""
    if path[:1] != b"/" or needs_normalizing(path) is None:
        return path
    if path.find(b"%") >= 0:
        path = _ESCAPE.sub(_unreserved, path)
    if _SQUASHABLE(path) is not None:
        path = _squash(path)
    return path


def matching_path(path: bytes) -> bytes:
    """The form path conditions compare: every escape decoded (up to three levels), parameters
    dropped, then normalized, so no spelling a backend could read as `/admin` escapes `/admin`."""
    if _NEEDS_MATCHING_FORM(path) is None:
        return path
    for _ in range(_DECODE_ROUNDS):
        if path.find(b"%") < 0:
            break
        decoded = urllib.parse.unquote_to_bytes(path)
        if decoded == path:
            break
        path = decoded
    if path.find(b";") >= 0:
        path = _PATH_PARAMETERS.sub(b"", path)
    if path[:1] == b"/" and _SQUASHABLE(path) is not None:
        path = _squash(path)
    return path


# -- the request as the rules see it ---------------------------------------------------------------


class _Request:
    """One request's values, each derived at most once and only when a condition needs it."""

    __slots__ = (
        "_decoded_path",
        "_host",
        "_ip",
        "_query",
        "client_ip",
        "headers",
        "method",
        "path",
        "query",
        "raw_host",
    )

    def __init__(  # noqa: PLR0917 - the six request fields RuleTable.match passes on
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        host: bytes | None,
        headers: Mapping[bytes, bytes],
        client_ip: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.raw_host = host
        self.headers = headers
        self.client_ip = client_ip
        self._decoded_path: bytes | None = None
        self._host: str | None = None
        self._query: dict[bytes, list[bytes]] | None = None
        self._ip: ipaddress.IPv4Address | ipaddress.IPv6Address | bool | None = False

    def decoded_path(self) -> bytes:
        decoded = self._decoded_path
        if decoded is None:
            path = self.path
            # Most paths are in matching form already: one search, no call.
            if _NEEDS_MATCHING_FORM(path) is not None:
                path = matching_path(path)
            decoded = self._decoded_path = path
        return decoded

    def host(self) -> str:
        host = self._host
        if host is None:
            raw = self.raw_host or b""
            if raw.startswith(b"["):
                host = ""  # an IPv6 literal never matches a domain name
            else:
                host = raw.partition(b":")[0].decode("latin-1")
            self._host = host
        return host

    def query_map(self) -> dict[bytes, list[bytes]]:
        parsed = self._query
        if parsed is None:
            parsed = {}
            for key, value in urllib.parse.parse_qsl(self.query, keep_blank_values=True):
                parsed.setdefault(key.lower(), []).append(value.lower())
            self._query = parsed
        return parsed

    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        ip = self._ip
        if ip is False:
            try:
                ip = ipaddress.ip_address(self.client_ip)
            except ValueError:
                ip = None
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
            self._ip = ip
        return ip  # type: ignore[return-value]


# -- compiled conditions ---------------------------------------------------------------------------


def _wildcard_regex(pattern: str) -> re.Pattern[bytes]:
    """`*` any run, `?` one character, the rest literal; whole value, case-insensitive."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts).encode(), re.IGNORECASE | re.DOTALL)


class _ValueSet:
    """Values compared whole and case-insensitively; exact ones by set, wildcards by regex."""

    __slots__ = ("_exact", "_patterns")

    def __init__(self, values: Sequence[str]) -> None:
        self._exact = frozenset(v.lower().encode() for v in values if "*" not in v and "?" not in v)
        self._patterns = tuple(_wildcard_regex(v) for v in values if "*" in v or "?" in v)

    def matches(self, value: bytes) -> bool:
        if value.lower() in self._exact:
            return True
        for pattern in self._patterns:
            if pattern.fullmatch(value):
                return True
        return False


class _HostCondition:
    __slots__ = ("_cache", "_selector")

    # Host names seen per listener are few, so answers are remembered; the cache is emptied when
    # full, which bounds it against clients that send a new name on every request.
    CACHE_SIZE = 1024

    def __init__(self, values: Sequence[str]) -> None:
        # The matcher behind SNI certificate selection, so rule hosts and certificate names follow
        # the same wildcard rules.
        self._selector = CertificateSelector({"rule": values}, None)
        self._cache: dict[str, bool] = {}

    def matches(self, request: _Request) -> bool:
        host = request.host()
        found = self._cache.get(host)
        if found is None:
            found = bool(host) and self._selector.select(host) is not None
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[host] = found
        return found


def _decoded(value: str) -> bytes:
    # Requests are compared in matching form, so a rule written with escapes or dot segments
    # must be in that form too.
    return matching_path(value.encode())


class _PathPrefixCondition:
    __slots__ = ("_prefixes",)

    def __init__(self, values: Sequence[str]) -> None:
        self._prefixes = tuple(_decoded(v) for v in values)

    def matches(self, request: _Request) -> bool:
        return request.decoded_path().startswith(self._prefixes)


class _PathExactCondition:
    __slots__ = ("_paths",)

    def __init__(self, values: Sequence[str]) -> None:
        self._paths = frozenset(_decoded(v) for v in values)

    def matches(self, request: _Request) -> bool:
        return request.decoded_path() in self._paths


class _PathRegexCondition:
    __slots__ = ("_patterns",)

    def __init__(self, values: Sequence[str]) -> None:
        self._patterns = tuple(re.compile(v.encode()) for v in values)

    def matches(self, request: _Request) -> bool:
        path = request.decoded_path()
        for pattern in self._patterns:
            if pattern.search(path):
                return True
        return False


class _MethodCondition:
    __slots__ = ("_methods",)

    def __init__(self, values: Sequence[str]) -> None:
        self._methods = frozenset(v.encode() for v in values)

    def matches(self, request: _Request) -> bool:
        return request.method in self._methods


class _HeaderCondition:
    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: Sequence[str]) -> None:
        self._name = name.lower().encode()
        self._values = _ValueSet(values)

    def matches(self, request: _Request) -> bool:
        value = request.headers.get(self._name)
        return value is not None and self._values.matches(value)


class _QueryCondition:
    __slots__ = ("_pairs",)

    def __init__(self, values: Sequence[str]) -> None:
        pairs = []
        for value in values:
            key, _, expected = value.partition("=")
            pairs.append((key.lower().encode(), _ValueSet([expected])))
        self._pairs = tuple(pairs)

    def matches(self, request: _Request) -> bool:
        if not request.query:
            return False
        parsed = request.query_map()
        for key, expected in self._pairs:
            for value in parsed.get(key, ()):
                if expected.matches(value):
                    return True
        return False


class _SourceIpCondition:
    __slots__ = ("_networks",)

    def __init__(self, values: Sequence[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(v, strict=False) for v in values)

    def matches(self, request: _Request) -> bool:
        ip = request.ip()
        if ip is None:
            return False
        for network in self._networks:
            if ip in network:
                return True
        return False


_Condition = (
    _HostCondition
    | _PathPrefixCondition
    | _PathExactCondition
    | _PathRegexCondition
    | _MethodCondition
    | _HeaderCondition
    | _QueryCondition
    | _SourceIpCondition
)


def _compile_condition(condition: RuleCondition) -> _Condition:
    kind, values = condition.type, condition.values
    if kind == "host":
        return _HostCondition(values)
    if kind == "path":
        if condition.match == "exact":
            return _PathExactCondition(values)
        if condition.match == "regex":
            return _PathRegexCondition(values)
        return _PathPrefixCondition(values)
    if kind == "method":
        return _MethodCondition(values)
    if kind == "header":
        return _HeaderCondition(condition.name or "", values)
    if kind == "query":
        return _QueryCondition(values)
    return _SourceIpCondition(values)


# -- actions -------------------------------------------------------------------------------------


class ForwardAction:
    """Send the request to another server group than the listener's default."""

    __slots__ = ("limiter", "rule_id", "server_group_id")

    def __init__(self, rule_id: str, server_group_id: str) -> None:
        self.rule_id = rule_id
        self.server_group_id = server_group_id
        # The rule's QPS per client IP (dataplane.throttle), checked before the action runs.
        self.limiter: QpsLimiter | None = None

    def __repr__(self) -> str:
        return f"<ForwardAction {self.rule_id} -> {self.server_group_id}>"


def _compile_template(template: str) -> tuple[bytes | int, ...]:
    """Literal bytes and placeholder indexes (into PLACEHOLDERS), in order."""
    parts: list[bytes | int] = []
    position = 0
    for found in _PLACEHOLDER.finditer(template):
        if found.start() > position:
            parts.append(template[position : found.start()].encode())
        parts.append(PLACEHOLDERS.index(found.group(1)))
        position = found.end()
    if position < len(template):
        parts.append(template[position:].encode())
    return tuple(parts)


def _render(parts: tuple[bytes | int, ...], values: tuple[bytes, ...]) -> bytes:
    if len(parts) == 1:
        part = parts[0]
        return values[part] if isinstance(part, int) else part
    return b"".join(values[part] if isinstance(part, int) else part for part in parts)


class RedirectAction:
    """Answer with a redirect built from the request's protocol, host, port, path and query."""

    __slots__ = (
        "_host",
        "_path",
        "_port",
        "_protocol",
        "_query",
        "limiter",
        "reason",
        "rule_id",
        "status",
    )

    def __init__(self, rule_id: str, action: RuleAction) -> None:
        self.rule_id = rule_id
        self.limiter: QpsLimiter | None = None
        self.status = action.status_code or DEFAULT_REDIRECT_CODE
        self.reason = HTTPStatus(self.status).phrase.encode()
        self._protocol = action.protocol.encode() if action.protocol else None
        self._port = action.port
        self._host = _compile_template(action.host)
        self._path = _compile_template(action.path)
        self._query = _compile_template(action.query)

    def location(
        self, protocol: bytes, host: bytes | None, port: int, path: bytes, query: bytes
    ) -> bytes:
        """The Location header value for a request.

        `protocol` is b"http" or b"https" (the listener's), `host` the Host header (a port in it
        is dropped; the listener's `port` is the request's port), `path` and `query` as received,
        still percent-encoded, the query without "?".
        """
        host_name = b""
        if host:
            if host.startswith(b"["):
                host_name = host[: host.find(b"]") + 1] or host  # an IPv6 literal, without port
            else:
                host_name = host.partition(b":")[0]
        values = (protocol, host_name, b"%d" % port, path, query)
        target_protocol = self._protocol or protocol
        target_host = _render(self._host, values)
        if self._port is not None:
            target_port = self._port
        elif target_protocol == protocol:
            target_port = port
        else:
            target_port = _DEFAULT_PORTS[target_protocol]
        target = _render(self._path, values)
        target_query = _render(self._query, values)
        if target_query:
            target += b"?" + target_query
        if not target_host:
            # No Host header to build an absolute URL from (HTTP/1.0): a relative one still works.
            return target
        if _DEFAULT_PORTS.get(target_protocol) == target_port:
            return b"%s://%s%s" % (target_protocol, target_host, target)
        return b"%s://%s:%d%s" % (target_protocol, target_host, target_port, target)

    def __repr__(self) -> str:
        return f"<RedirectAction {self.rule_id} {self.status}>"


class FixedResponseAction:
    """Answer from the load balancer itself with a fixed status, content type and body."""

    __slots__ = ("body", "content_type", "limiter", "reason", "rule_id", "status")

    def __init__(self, rule_id: str, action: RuleAction) -> None:
        self.rule_id = rule_id
        self.limiter: QpsLimiter | None = None
        self.status = action.status_code or DEFAULT_FIXED_STATUS
        try:
            self.reason = HTTPStatus(self.status).phrase.encode()
        except ValueError:
            self.reason = b""  # a valid code without a registered phrase, such as 599
        self.content_type = action.content_type.encode()
        self.body = action.body.encode()

    def __repr__(self) -> str:
        return f"<FixedResponseAction {self.rule_id} {self.status}>"


Action = ForwardAction | RedirectAction | FixedResponseAction


def _compile_action(rule: ForwardingRule) -> Action:
    action = rule.action
    compiled: Action
    if action.type == "forward":
        compiled = ForwardAction(rule.id, action.server_group_id or "")
    elif action.type == "redirect":
        compiled = RedirectAction(rule.id, action)
    else:
        compiled = FixedResponseAction(rule.id, action)
    compiled.limiter = rule_limiter(rule.qps_per_client_ip)
    return compiled


# -- the table -------------------------------------------------------------------------------------


class RuleTable:
    """A listener's forwarding rules, compiled; `match()` runs once per request."""

    __slots__ = ("_rules", "header_names", "limiters", "normalizes_paths", "server_group_ids")

    def __init__(
        self,
        rules: Sequence[ForwardingRule],
        *,
        server_group_ids: Collection[str] | None = None,
    ) -> None:
        """Compile the rules; raises the first RuleError when the list is not valid."""
        errors = validate_rules(rules, server_group_ids=server_group_ids)
        if errors:
            raise errors[0]
        self._rules = tuple(
            (tuple(_compile_condition(c) for c in rule.conditions), _compile_action(rule))
            for rule in rules
        )
        # Rules that throttle, by id: a new generation takes over their tables (dataplane.throttle).
        self.limiters = {
            action.rule_id: action.limiter
            for _, action in self._rules
            if action.limiter is not None
        }
        # The proxy keeps only these request headers for matching, lower-cased.
        self.header_names = frozenset(
            c.name.lower().encode()
            for rule in rules
            for c in rule.conditions
            if c.type == "header" and c.name
        )
        # With path conditions the proxy forwards the normalized path (normalize_path): the
        # backend then reads the path the rules judged. Without, it forwards what it received.
        self.normalizes_paths = any(c.type == "path" for rule in rules for c in rule.conditions)
        # Groups the proxy must have schedulers for, besides the listener's default.
        self.server_group_ids = frozenset(
            rule.action.server_group_id
            for rule in rules
            if rule.action.type == "forward" and rule.action.server_group_id
        )

    def __len__(self) -> int:
        return len(self._rules)

    def match(  # noqa: PLR0917 - one positional call per request on the hot path
        self,
        method: bytes,
        path: bytes,
        query: bytes,
        host: bytes | None,
        headers: Mapping[bytes, bytes],
        client_ip: str,
    ) -> Action | None:
        """The action of the first rule whose conditions all match, or None for the default.

        `path` is the request path (percent-encoded, no query; `normalize_path`'s form when
        `normalizes_paths`, though any form matches the same), `query` the query
        string without "?", `host` the Host header, `headers` the values of `header_names` keyed
        by lower-case name (repeated lines joined with ", "), `client_ip` the client address the
        listener settled on.
        """
        if not self._rules:
            return None
        request = _Request(method, path, query, host, headers, client_ip)
        for conditions, action in self._rules:
            for condition in conditions:
                if not condition.matches(request):
                    break
            else:
                return action
        return None


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query) of a request target in origin form (`/a?b`) or absolute form."""
    if not target.startswith(b"/") and b"://" in target:
        rest = target.partition(b"://")[2]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    path, _, query = target.partition(b"?")
    path = path.partition(b"#")[0]
    query = query.partition(b"#")[0]
    return path, query
