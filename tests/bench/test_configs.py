"""Equivalent configurations: the dataplane takes its snapshot, HAProxy and nginx their files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import configs
from bench.tools import STREAM_MODULE_DIRS
from dataplane.config import Snapshot

PORTS = configs.ProxyPorts(http=21001, https=21002, tcp_ssl=21003)
BACKEND = 21000


@pytest.fixture(scope="module")
def certificate() -> configs.ServerCertificate:
    return configs.make_certificate()


def test_certificate_is_ecdsa_p256_and_matches_its_key(
    certificate: configs.ServerCertificate,
) -> None:
    cert = x509.load_pem_x509_certificate(certificate.certificate_pem.encode())
    key = serialization.load_pem_private_key(certificate.private_key_pem.encode(), None)

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()


def test_certificate_files_are_private_and_haproxy_gets_both(
    certificate: configs.ServerCertificate, tmp_path: Path
) -> None:
    files = configs.write_certificate_files(certificate, tmp_path)

    assert {path.stat().st_mode & 0o777 for path in files.values()} == {0o600}
    combined = files["haproxy"].read_text()
    assert certificate.certificate_pem in combined
    assert certificate.private_key_pem in combined


def test_bodies_have_their_sizes(tmp_path: Path) -> None:
    configs.write_bodies(tmp_path)

    assert {path.name: path.stat().st_size for path in tmp_path.iterdir()} == configs.BODIES


def test_bodies_are_readable_by_nginx_workers_under_umask_077() -> None:
    # The bench's directory is made 0755 (bench/__main__.py); the docroot in it must be too.
    previous = os.umask(0o077)
    try:
        directory = Path(tempfile.mkdtemp(prefix="bench-test-"))
        directory.chmod(0o755)
        docroot = directory / "docroot"
        configs.write_bodies(docroot)
    finally:
        os.umask(previous)
    try:
        assert stat.S_IMODE(docroot.stat().st_mode) == 0o755
        assert {stat.S_IMODE(path.stat().st_mode) for path in docroot.iterdir()} == {0o644}
        if os.geteuid() == 0:
            # As nginx's workers run when the bench starts it as root.
            read = subprocess.run(
                ["head", "-c", "1024", str(docroot / "1k")],
                user="nobody",
                capture_output=True,
                check=False,
            )
            assert (read.returncode, read.stdout) == (0, b"x" * 1024)
    finally:
        shutil.rmtree(directory)


def test_dataplane_snapshot_is_valid_with_the_same_features(
    certificate: configs.ServerCertificate,
) -> None:
    snapshot = Snapshot.from_dict(
        configs.dataplane_snapshot(
            generation=3, ports=PORTS, backend_port=BACKEND, certificate=certificate
        )
    )

    by_protocol = {listener.protocol: listener for listener in snapshot.listeners}
    assert {p: listener.port for p, listener in by_protocol.items()} == {
        "http": 21001,
        "https": 21002,
        "tcp_ssl": 21003,
    }
    assert by_protocol["http"].x_forwarded_for == "add"
    assert by_protocol["https"].x_forwarded_for == "add"
    assert by_protocol["https"].tls_policy == "tls_cipher_policy_1_2_strict_with_1_3"
    assert by_protocol["tcp_ssl"].tls_policy == "tls_cipher_policy_1_2_strict_with_1_3"
    assert all(group.servers[0].port == BACKEND for group in snapshot.server_groups)
    assert snapshot.generation == 3


def test_dataplane_extra_listeners_and_revisions(certificate: configs.ServerCertificate) -> None:
    first = configs.dataplane_snapshot(
        generation=1, ports=PORTS, backend_port=BACKEND, certificate=certificate
    )
    second = configs.dataplane_snapshot(
        generation=2,
        ports=PORTS,
        backend_port=BACKEND,
        certificate=certificate,
        extra_ports=range(22000, 22100),
        revision=1,
    )

    snapshot = Snapshot.from_dict(second)
    assert len(snapshot.listeners) == 103
    assert first["listeners"][0]["name"] != second["listeners"][0]["name"]
    assert first["listeners"][1:] == second["listeners"][1:3]


def test_haproxy_config_has_the_common_settings() -> None:
    text = configs.haproxy_cfg(
        workers=2, ports=PORTS, backend_port=BACKEND, pem=Path("/x.pem"), extra_ports=[22000]
    )

    assert "nbthread 2" in text
    assert text.count("option forwardfor") == 1
    assert "ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3" in text
    assert "bind 127.0.0.1:22000" in text
    assert "log " not in text


def test_nginx_config_has_the_common_settings(tmp_path: Path) -> None:
    text = configs.proxy_nginx_conf(
        workers=1,
        ports=PORTS,
        backend_port=BACKEND,
        certificate=tmp_path / "cert.pem",
        key=tmp_path / "key.pem",
        directory=tmp_path,
        stream_module=None,
    )

    assert "access_log off;" in text
    assert "$proxy_add_x_forwarded_for" in text
    assert "keepalive 256;" in text
    assert text.count("ssl_protocols TLSv1.2 TLSv1.3;") == 2


def _stream_module() -> str | None:
    for directory in STREAM_MODULE_DIRS:
        if (directory / "ngx_stream_module.so").exists():
            return str(directory / "ngx_stream_module.so")
    return None


@pytest.mark.skipif(shutil.which("haproxy", path="/usr/sbin:/usr/bin") is None, reason="no haproxy")
def test_haproxy_accepts_its_config(certificate: configs.ServerCertificate, tmp_path: Path) -> None:
    files = configs.write_certificate_files(certificate, tmp_path)
    path = tmp_path / "haproxy.cfg"
    path.write_text(
        configs.haproxy_cfg(
            workers=1, ports=PORTS, backend_port=BACKEND, pem=files["haproxy"], extra_ports=[22000]
        )
    )

    done = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/sbin:/usr/bin"},
    )

    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    shutil.which("nginx", path="/usr/sbin:/usr/bin") is None or _stream_module() is None,
    reason="no nginx with the stream module",
)
def test_nginx_accepts_the_proxy_and_backend_configs(
    certificate: configs.ServerCertificate, tmp_path: Path
) -> None:
    files = configs.write_certificate_files(certificate, tmp_path)
    proxy = tmp_path / "proxy.conf"
    proxy.write_text(
        configs.proxy_nginx_conf(
            workers=2,
            ports=PORTS,
            backend_port=BACKEND,
            certificate=files["certificate"],
            key=files["key"],
            directory=tmp_path,
            stream_module=_stream_module(),
            extra_ports=[22000, 22001],
        )
    )
    backend = tmp_path / "backend.conf"
    backend.write_text(
        configs.backend_nginx_conf(port=BACKEND, docroot=tmp_path, directory=tmp_path)
    )

    for path in (proxy, backend):
        done = subprocess.run(
            ["nginx", "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/usr/sbin:/usr/bin"},
        )
        assert done.returncode == 0, done.stderr
