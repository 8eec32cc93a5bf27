"""Equivalent configurations for the backend, the dataplane, HAProxy and nginx.

Every proxy gets the same things: one backend (an nginx serving fixed bodies), X-Forwarded-For
added, keep-alive connections to the backend, no access log, the same ECDSA P-256 certificate and
the dataplane's `tls_cipher_policy_1_2_strict_with_1_3` policy (TLS 1.2 and 1.3, the 12 ECDHE
suites and the 5 TLS 1.3 suites), a 15 s client idle timeout, and a TCP health check every 5 s
where the proxy has one (nginx open source has no active health checks).

The HTTPS listener offers ALPN `h2, http/1.1` on all three. Clients that send no ALPN (wrk,
openssl s_time) still get HTTP/1.1 there, so one listener serves the HTTP/1.1 and the HTTP/2
scenarios, and the backend side stays HTTP/1.1 keep-alive either way.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataplane.tls import PREDEFINED_POLICIES

TLS_POLICY = PREDEFINED_POLICIES["tls_cipher_policy_1_2_strict_with_1_3"]
SERVER_NAME = "bench.example.com"
INSTANCE_ID = "lb-bench0001"
CERTIFICATE_ID = "cert-bench001"
WEB_GROUP_ID = "sgp-benchweb1"
TCP_GROUP_ID = "sgp-benchtcp1"
IDLE_TIMEOUT = 15
TCP_IDLE_TIMEOUT = 60
REQUEST_TIMEOUT = 60
HEALTH_INTERVAL = 5
# Bodies the backend serves, by path: name -> size in bytes.
BODIES = {"0": 0, "1k": 1024, "64k": 64 * 1024, "100m": 100 * 1024 * 1024}


@dataclass(frozen=True)
class ProxyPorts:
    """The three listeners every proxy runs."""

    http: int
    https: int
    tcp_ssl: int


@dataclass(frozen=True)
class ServerCertificate:
    certificate_pem: str
    private_key_pem: str


def make_certificate(name: str = SERVER_NAME) -> ServerCertificate:
    """A self-signed ECDSA P-256 certificate made at run time, never written to the tree."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return ServerCertificate(
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def write_certificate_files(certificate: ServerCertificate, directory: Path) -> dict[str, Path]:
    """cert.pem and key.pem for nginx, and haproxy.pem (both in one file) for HAProxy."""
    files = {
        "certificate": directory / "cert.pem",
        "key": directory / "key.pem",
        "haproxy": directory / "haproxy.pem",
    }
    for kind, path in files.items():
        path.touch(mode=0o600)
        if kind == "certificate":
            path.write_text(certificate.certificate_pem)
        elif kind == "key":
            path.write_text(certificate.private_key_pem)
        else:
            path.write_text(certificate.certificate_pem + certificate.private_key_pem)
    return files


def write_bodies(docroot: Path) -> None:
    """The backend's fixed bodies; the 100 MiB one is sparse, so it costs no disk.

    Readable by all whatever the umask: nginx's workers run as nobody when started as root, and
    a docroot made under umask 077 would answer every request with "permission denied".
    """
    docroot.mkdir(parents=True, exist_ok=True)
    docroot.chmod(0o755)
    for name, size in BODIES.items():
        path = docroot / name
        if size <= 64 * 1024:
            path.write_bytes(b"x" * size)
        else:
            with path.open("wb") as body:
                body.truncate(size)
        path.chmod(0o644)


def _nginx_head(*, workers: int, directory: Path, name: str, module: str | None) -> str:
    load = f"load_module {module};\n" if module else ""
    return (
        f"{load}"
        f"worker_processes {workers};\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {directory}/{name}.pid;\n"
        f"error_log {directory}/{name}-error.log error;\n"
        "worker_rlimit_nofile 16384;\n"
        "events { worker_connections 8192; }\n"
    )


def backend_nginx_conf(*, port: int, docroot: Path, directory: Path) -> str:
    """The common backend: fixed bodies by path, keep-alive without a request limit."""
    return _nginx_head(workers=1, directory=directory, name="backend", module=None) + (
        "http {\n"
        "    access_log off;\n"
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    tcp_nodelay on;\n"
        "    keepalive_requests 10000000;\n"
        "    keepalive_timeout 120s;\n"
        "    default_type application/octet-stream;\n"
        "    open_file_cache max=64 inactive=600s;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port} backlog=4096;\n"
        f"        root {docroot};\n"
        "        location / { }\n"
        "    }\n"
        "}\n"
    )


def _nginx_tls(certificate: Path, key: Path, indent: str) -> str:
    lines = [
        f"ssl_certificate {certificate};",
        f"ssl_certificate_key {key};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        f"ssl_ciphers {':'.join(TLS_POLICY.ciphers)};",
        "ssl_prefer_server_ciphers on;",
        f"ssl_conf_command Ciphersuites {':'.join(TLS_POLICY.tls13_ciphersuites)};",
        "ssl_session_tickets on;",
        "ssl_session_timeout 300s;",
    ]
    return "".join(f"{indent}{line}\n" for line in lines)


def proxy_nginx_conf(
    *,
    workers: int,
    ports: ProxyPorts,
    backend_port: int,
    certificate: Path,
    key: Path,
    directory: Path,
    stream_module: str | None,
    extra_ports: Sequence[int] = (),
    revision: int = 0,
) -> str:
    """nginx as the proxy under test; `revision` changes the file so a reload has work to do."""
    extra = "".join(
        f"    server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://web; }} }}\n"
        for port in extra_ports
    )
    return _nginx_head(workers=workers, directory=directory, name="proxy", module=stream_module) + (
        f"# revision {revision}\n"
        "worker_shutdown_timeout 5s;\n"
        "http {\n"
        "    access_log off;\n"
        "    tcp_nodelay on;\n"
        "    keepalive_requests 10000000;\n"
        f"    keepalive_timeout {IDLE_TIMEOUT}s;\n"
        "    upstream web {\n"
        f"        server 127.0.0.1:{backend_port};\n"
        "        keepalive 256;\n"
        "        keepalive_requests 10000000;\n"
        "        keepalive_timeout 60s;\n"
        "    }\n"
        "    proxy_http_version 1.1;\n"
        '    proxy_set_header Connection "";\n'
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        f"    proxy_read_timeout {REQUEST_TIMEOUT}s;\n"
        # Responses stream through memory buffers, never a temporary file, like the others.
        "    proxy_buffer_size 16k;\n"
        "    proxy_buffers 8 16k;\n"
        "    proxy_max_temp_file_size 0;\n"
        + _nginx_tls(certificate, key, "    ")
        + f"    server {{ listen 127.0.0.1:{ports.http} backlog=4096;"
        " location / { proxy_pass http://web; } }\n"
        f"    server {{ listen 127.0.0.1:{ports.https} ssl http2 backlog=4096;"
        " location / { proxy_pass http://web; } }\n" + extra + "}\n"
        "stream {\n"
        f"    upstream tcp {{ server 127.0.0.1:{backend_port}; }}\n"
        "    server {\n"
        f"        listen 127.0.0.1:{ports.tcp_ssl} ssl backlog=4096;\n"
        + _nginx_tls(certificate, key, "        ")
        + f"        proxy_timeout {TCP_IDLE_TIMEOUT}s;\n"
        "        proxy_pass tcp;\n"
        "    }\n"
        "}\n"
    )


def haproxy_cfg(
    *,
    workers: int,
    ports: ProxyPorts,
    backend_port: int,
    pem: Path,
    extra_ports: Sequence[int] = (),
    revision: int = 0,
) -> str:
    """HAProxy as the proxy under test, one process with `workers` threads."""
    lines = [
        f"# revision {revision}",
        "global",
        f"    nbthread {workers}",
        "    maxconn 8000",
        "    hard-stop-after 5s",
        f"    ssl-default-bind-ciphers {':'.join(TLS_POLICY.ciphers)}",
        f"    ssl-default-bind-ciphersuites {':'.join(TLS_POLICY.tls13_ciphersuites)}",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
        "    tune.ssl.lifetime 300",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        f"    timeout client {IDLE_TIMEOUT}s",
        f"    timeout http-request {IDLE_TIMEOUT}s",
        f"    timeout http-keep-alive {IDLE_TIMEOUT}s",
        f"    timeout server {REQUEST_TIMEOUT}s",
        "frontend fe_http",
        f"    bind 127.0.0.1:{ports.http}",
        "    default_backend web",
        "frontend fe_https",
        f"    bind 127.0.0.1:{ports.https} ssl crt {pem} alpn h2,http/1.1",
        "    default_backend web",
        "frontend fe_tcp_ssl",
        "    mode tcp",
        f"    timeout client {TCP_IDLE_TIMEOUT}s",
        f"    bind 127.0.0.1:{ports.tcp_ssl} ssl crt {pem}",
        "    default_backend tcp",
    ]
    for index, port in enumerate(extra_ports):
        lines += [
            f"frontend fe_extra_{index}",
            f"    bind 127.0.0.1:{port}",
            "    default_backend web",
        ]
    lines += [
        "backend web",
        # Set once here, it covers every frontend that uses this backend.
        "    option forwardfor",
        # Pool backend connections for every request, as nginx's keepalive and the dataplane do;
        # HAProxy's default ("safe") opens a new one for the first request of each client.
        "    http-reuse always",
        f"    server s1 127.0.0.1:{backend_port} check inter {HEALTH_INTERVAL}s",
        "backend tcp",
        "    mode tcp",
        f"    timeout server {TCP_IDLE_TIMEOUT}s",
        f"    server s1 127.0.0.1:{backend_port} check inter {HEALTH_INTERVAL}s",
    ]
    return "\n".join(lines) + "\n"


def _listener(listener_id: str, name: str, protocol: str, port: int) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "id": listener_id,
        "name": name,
        "protocol": protocol,
        "port": port,
        "server_group_id": TCP_GROUP_ID if protocol == "tcp_ssl" else WEB_GROUP_ID,
        "idle_timeout": TCP_IDLE_TIMEOUT if protocol == "tcp_ssl" else IDLE_TIMEOUT,
    }
    if protocol in {"http", "https"}:
        listener["request_timeout"] = REQUEST_TIMEOUT
        listener["x_forwarded_for"] = "add"
    if protocol in {"https", "tcp_ssl"}:
        listener["default_certificate_id"] = CERTIFICATE_ID
        listener["tls_policy"] = TLS_POLICY.name
    if protocol == "https":
        listener["http2"] = True
    return listener


def _group(group_id: str, backend_protocol: str, backend_port: int) -> dict[str, Any]:
    return {
        "id": group_id,
        "backend_protocol": backend_protocol,
        "servers": [{"id": "srv-backend1", "address": "127.0.0.1", "port": backend_port}],
        "health_check": {"enabled": True, "protocol": "tcp", "interval": HEALTH_INTERVAL},
    }


def dataplane_snapshot(
    *,
    generation: int,
    ports: ProxyPorts,
    backend_port: int,
    certificate: ServerCertificate,
    extra_ports: Sequence[int] = (),
    revision: int = 0,
) -> dict[str, Any]:
    """The dataplane's snapshot; `revision` renames the HTTP listener, so it really changes."""
    listeners = [
        _listener("lsn-benchhttp", f"bench-http-r{revision}", "http", ports.http),
        _listener("lsn-benchhttps", "bench-https", "https", ports.https),
        _listener("lsn-benchtcpssl", "bench-tcp-ssl", "tcp_ssl", ports.tcp_ssl),
    ]
    listeners += [
        _listener(f"lsn-extra{index:05d}", f"extra-{index}", "http", port)
        for index, port in enumerate(extra_ports)
    ]
    return {
        "instance_id": INSTANCE_ID,
        "generation": generation,
        "bind_address": "127.0.0.1",
        "listeners": listeners,
        "server_groups": [
            _group(WEB_GROUP_ID, "http", backend_port),
            _group(TCP_GROUP_ID, "tcp", backend_port),
        ],
        "certificates": [
            {
                "id": CERTIFICATE_ID,
                "certificate_pem": certificate.certificate_pem,
                "private_key_pem": certificate.private_key_pem,
            }
        ],
    }
