"""TLS for HTTPS and TCP SSL listeners: security policies, SNI certificates, mutual authentication.

One listener gets one *front* SSLContext. It carries the policy (versions, ciphers, security
level), the mutual-authentication CA and the default certificate, and its SNI callback swaps in a
per-certificate context when the client asks for a name another certificate covers. OpenSSL's
SSL_set_SSL_CTX only swaps the certificate, so the policy and verification of the front context
apply to every handshake, whichever certificate is served.

Contexts are cached by content: a snapshot that does not change a listener's TLS material gives it
the very same front context, which is how the node can tell that its server need not be replaced.

Four OpenSSL knobs are not exposed by Python's ssl module, so `_NativeSsl` reaches them through
ctypes on the SSL_CTX behind an SSLContext (falling back to OpenSSL's defaults when it cannot):
- SSL_CTX_set_timeout: the session lifetime, which is also the lifetime hint of session tickets
  (seed 000/001: 300 s; OpenSSL's default is 7200 s);
- SSL_CTX_set_ciphersuites: the TLS 1.3 suites of a policy;
- SSL_CTX_set_tlsext_ticket_keys: with worker processes (`set_ticket_secret`), the session ticket
  keys of a front context, so that a ticket one worker issued resumes in the others. OpenSSL's
  default is random keys per context, which would make every connection the kernel gives to
  another worker a full handshake;
- SSL_CTX_set_client_CA_list: the CA names a mutual-TLS listener sends in its CertificateRequest
  (`load_verify_locations` only makes OpenSSL trust the CA; the list it names stays empty).

A refused handshake ends with the alert OpenSSL chose (handshake_failure, certificate_required,
unknown_ca, inappropriate_fallback...): see `AlertingSSLObject`.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import hashlib
import logging
import os
import ssl
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from dataplane import acme_tls
from dataplane.config import (
    TLS12_CIPHERS,
    TLS13_CIPHERSUITES,
    CaCertificate,
    Certificate,
    Listener,
    Snapshot,
)
from dataplane.hostnames import CertificateSelector
from dataplane.stats import handshake_failed

log = logging.getLogger(__name__)

SESSION_TICKET_LIFETIME = 300
# OpenSSL's ticket key block, and the SSL_CTX_ctrl command that sets it (ssl.h).
TICKET_KEYS_LENGTH = 80
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
# Set by worker processes: the secret all workers derive the same ticket keys from.
_ticket_secret: bytes | None = None


def set_ticket_secret(secret: bytes | None) -> None:
    """Make every front context built from now on use ticket keys derived from `secret`.

    Worker processes of one node are given the same secret, so each listener's tickets resume in
    every worker. The keys are derived per context from its whole TLS input (policy, CA, and
    certificates), so a ticket never resumes on a context with other rules: a session from a
    listener without mutual authentication cannot skip the client certificate on one with it.
    """
    global _ticket_secret
    if secret is not None and len(secret) < 16:
        raise ValueError("a ticket secret needs at least 16 bytes")
    _ticket_secret = secret


def _ticket_keys(secret: bytes, *parts: object) -> bytes:
    material = hashlib.sha256()
    for part in parts:
        text = repr(part).encode()
        # Length-prefixed, so that no two different inputs hash the same stream.
        material.update(b"%d:" % len(text) + text)
    return hashlib.shake_256(secret + material.digest()).digest(TICKET_KEYS_LENGTH)


_VERSIONS = {
    "TLSv1.0": "TLSv1",
    "TLSv1.1": "TLSv1_1",
    "TLSv1.2": "TLSv1_2",
    "TLSv1.3": "TLSv1_3",
}

# The legacy policies offer every suite a custom policy may name.
_LEGACY_CIPHERS = TLS12_CIPHERS
_STRICT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-RSA-AES256-SHA",
)
_TLS13_SUITES = TLS13_CIPHERSUITES


# HTTPS listeners with HTTP/2 on: h2 first, so clients that speak both use it (RFC 7301 lets
# the server choose; OpenSSL picks the server's first protocol the client also offers).
HTTP2_ALPN = ("h2", "http/1.1")


class TlsError(ValueError):
    """TLS material of a listener that OpenSSL refuses; the message is the listener's reason."""


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """Versions, ciphers and OpenSSL security level of one TLS security policy."""

    name: str
    min_version: str
    max_version: str
    ciphers: tuple[str, ...]
    tls13_ciphersuites: tuple[str, ...]
    # OpenSSL 3 refuses TLS 1.0/1.1 handshakes above level 0 (they sign with SHA-1/MD5), and RSA
    # 1024 keys above level 1; level 2 is OpenSSL's default.
    security_level: int


# The ALB predefined policies (seed 001 "TLS security policies").
PREDEFINED_POLICIES: dict[str, PolicySpec] = {
    "tls_cipher_policy_1_0": PolicySpec(
        "tls_cipher_policy_1_0", "TLSv1.0", "TLSv1.2", _LEGACY_CIPHERS, (), 0
    ),
    "tls_cipher_policy_1_1": PolicySpec(
        "tls_cipher_policy_1_1", "TLSv1.1", "TLSv1.2", _LEGACY_CIPHERS, (), 0
    ),
    "tls_cipher_policy_1_2": PolicySpec(
        "tls_cipher_policy_1_2", "TLSv1.2", "TLSv1.2", _LEGACY_CIPHERS, (), 1
    ),
    "tls_cipher_policy_1_2_strict": PolicySpec(
        "tls_cipher_policy_1_2_strict", "TLSv1.2", "TLSv1.2", _STRICT_CIPHERS, (), 2
    ),
    "tls_cipher_policy_1_2_strict_with_1_3": PolicySpec(
        "tls_cipher_policy_1_2_strict_with_1_3",
        "TLSv1.2",
        "TLSv1.3",
        _STRICT_CIPHERS,
        _TLS13_SUITES,
        2,
    ),
}


def resolve_policy(name: str, snapshot: Snapshot) -> PolicySpec:
    """The policy a listener names: predefined, or custom from the snapshot."""
    predefined = PREDEFINED_POLICIES.get(name)
    if predefined is not None:
        return predefined
    custom = snapshot.tls_policy(name)
    if custom is None:
        raise TlsError(f"no TLS policy {name!r}")
    legacy = custom.min_version in ("TLSv1.0", "TLSv1.1")
    return PolicySpec(
        custom.id,
        custom.min_version,
        custom.max_version,
        custom.ciphers,
        custom.tls13_ciphersuites,
        0 if legacy else 2,
    )


# -- OpenSSL knobs Python does not expose ----------------------------------------------------------


class _NativeSsl:
    """SSL_CTX_set_timeout and SSL_CTX_set_ciphersuites on the SSL_CTX of an SSLContext.

    CPython's PySSLContext starts with PyObject_HEAD followed by the SSL_CTX pointer. The pointer
    is only trusted after SSL_CTX_get_options() through it agrees with SSLContext.options.
    """

    def __init__(self) -> None:
        self.lib: ctypes.CDLL | None = None
        if sys.implementation.name != "cpython":
            return
        import _ssl

        try:
            lib = ctypes.CDLL(_ssl.__file__)
            lib.SSL_CTX_get_options.restype = ctypes.c_uint64
            lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_timeout.restype = ctypes.c_long
            lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
            lib.SSL_CTX_get_timeout.restype = ctypes.c_long
            lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.SSL_load_client_CA_file.restype = ctypes.c_void_p
            lib.SSL_load_client_CA_file.argtypes = [ctypes.c_char_p]
            lib.SSL_CTX_set_client_CA_list.restype = None
            lib.SSL_CTX_set_client_CA_list.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_ctrl.argtypes = [
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_long,
                ctypes.c_void_p,
            ]
        except (OSError, AttributeError):
            log.warning("OpenSSL session timeout and TLS 1.3 suites cannot be set on this Python")
            return
        self.lib = lib
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if lib.SSL_CTX_get_options(self._pointer(probe)) != probe.options:
            log.warning("unexpected SSLContext layout; using OpenSSL's default session timeout")
            self.lib = None

    @staticmethod
    def _pointer(context: ssl.SSLContext) -> int:
        return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value or 0

    def set_session_timeout(self, context: ssl.SSLContext, seconds: int) -> bool:
        if self.lib is None:
            return False
        self.lib.SSL_CTX_set_timeout(self._pointer(context), seconds)
        return True

    def session_timeout(self, context: ssl.SSLContext) -> int | None:
        if self.lib is None:
            return None
        return int(self.lib.SSL_CTX_get_timeout(self._pointer(context)))

    def set_ciphersuites(self, context: ssl.SSLContext, suites: str) -> None:
        if self.lib is None:
            return
        if self.lib.SSL_CTX_set_ciphersuites(self._pointer(context), suites.encode()) != 1:
            raise TlsError(f"OpenSSL refused the TLS 1.3 cipher suites {suites}")

    def set_ticket_keys(self, context: ssl.SSLContext, keys: bytes) -> bool:
        """SSL_CTX_set_tlsext_ticket_keys: name (16), HMAC key (32), AES key (32)."""
        if self.lib is None or len(keys) != TICKET_KEYS_LENGTH:
            return False
        buffer = ctypes.create_string_buffer(keys, len(keys))
        done = self.lib.SSL_CTX_ctrl(
            self._pointer(context), _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), buffer
        )
        return done == 1

    def set_client_ca_list(self, context: ssl.SSLContext, ca_pem: str) -> bool:
        """SSL_CTX_set_client_CA_list with the subjects of the certificates in `ca_pem`."""
        if self.lib is None:
            return False
        # SSL_load_client_CA_file only reads files; the CA is public, but a memory file keeps
        # this path the same as the certificates'.
        fd = os.memfd_create("lb-client-ca", os.MFD_CLOEXEC)
        try:
            os.write(fd, ca_pem.encode())
            names = self.lib.SSL_load_client_CA_file(f"/proc/self/fd/{fd}".encode())
        finally:
            os.close(fd)
        if not names:
            return False
        # The context owns the list from here on.
        self.lib.SSL_CTX_set_client_CA_list(self._pointer(context), names)
        return True


native = _NativeSsl()


class AlertingSSLObject(ssl.SSLObject):
    """A server-side SSLObject whose failed handshake still sends OpenSSL's alert to the client.

    A TLS layer that aborts as soon as do_handshake() raises loses the fatal alert OpenSSL left in
    the outgoing memory BIO: asyncio's and uvloop's drop it unsent (CPython gh-98078), and an
    abort with the client's bytes unread sends a reset that can destroy it in flight. The client
    then sees a bare close and cannot tell a missing certificate from a network fault. Here the
    first failure is reported as "want read" instead, which makes the node's TLS layer
    (dataplane.protocols.tls_layer) flush the BIO as after any handshake step and keep the
    connection; the real error is raised on the next call, which comes with the client's close
    (a client closes on a fatal alert) or its next bytes, and the handshake timeout ends the rest.

    A failure with no alert to send (plain HTTP on a TLS port: OpenSSL sends none) is raised at
    once: that client is waiting for an HTTP answer, not closing, so waiting for it would hold the
    connection until the handshake timeout.
    """

    _handshake_failure: ssl.SSLError | None = None
    _outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(  # type: ignore[override]
        cls,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        *args: Any,
        **kwargs: Any,
    ) -> AlertingSSLObject:
        ssl_object = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        ssl_object._outgoing = outgoing
        return ssl_object

    def do_handshake(self) -> None:
        if self._handshake_failure is not None:
            # A copy: the one raised takes this frame, and so this object, into its traceback,
            # which the stored one must not hold (see below).
            raise copy.copy(self._handshake_failure)
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            handshake_failed(self, exc)
            if self._outgoing is not None and not self._outgoing.pending:
                raise
            # Kept without its traceback, whose frame holds this object: a failed handshake is
            # then freed by reference counting, not left to the cycle collector.
            self._handshake_failure = exc.with_traceback(None)
            raise ssl.SSLWantReadError("handshake failed; the alert is being sent") from exc


# -- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    names: tuple[str, ...]
    weak_key: bool


@functools.lru_cache(maxsize=4096)
def certificate_info(certificate_pem: str) -> CertificateInfo:
    """DNS names (SANs, else the CN) and whether the key needs security level 1 (RSA < 2048)."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    except ValueError as exc:
        raise TlsError(f"unreadable certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        names = tuple(
            str(attribute.value)
            for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    key = cert.public_key()
    weak = (isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048) or (
        isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 224
    )
    return CertificateInfo(names, weak)


def _load_certificate(context: ssl.SSLContext, cert: Certificate) -> None:
    # load_cert_chain only reads files. An anonymous memory file keeps the private key off disk.
    fd = os.memfd_create("lb-certificate", os.MFD_CLOEXEC)
    try:
        pem = cert.certificate_pem.strip() + "\n"
        if cert.chain_pem.strip():
            pem += cert.chain_pem.strip() + "\n"
        pem += cert.private_key_pem.strip() + "\n"
        os.write(fd, pem.encode())
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    except ssl.SSLError as exc:
        raise TlsError(f"certificate {cert.id}: {exc.reason or exc}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Revocation:
    """The CRLs a mutual-TLS listener checks client certificates against, and how far."""

    crls: tuple[str, ...]
    check: str  # "leaf" or "chain" (dataplane.config.CRL_CHECKS)


def revocation_of(ca: CaCertificate | None) -> Revocation | None:
    return Revocation(ca.crls, ca.crl_check) if ca is not None and ca.crls else None


def _load_revocation_lists(context: ssl.SSLContext, revocation: Revocation) -> None:
    """Load the CRLs and turn on OpenSSL's revocation check for client certificates.

    load_verify_locations(cadata=...) reads CERTIFICATE blocks only and skips CRLs; a CA file is
    read with X509_load_cert_crl_file, which takes both, so the CRLs go in through an anonymous
    memory file. OpenSSL fails closed: once CRL checking is on, a client certificate whose
    issuer has no CRL here is refused ("unable to get certificate CRL"), as is every client
    while a CRL is past its next update. "leaf" checks the client's certificate only; "chain"
    (VERIFY_CRL_CHECK_CHAIN) checks its intermediates too and needs a CRL from every CA of the
    chain, the trusted CA included, which is why the console asks for it only then.
    """
    fd = os.memfd_create("lb-client-crls", os.MFD_CLOEXEC)
    try:
        os.write(fd, "".join(crl.strip() + "\n" for crl in revocation.crls).encode())
        context.load_verify_locations(cafile=f"/proc/self/fd/{fd}")
    except (ssl.SSLError, ValueError) as exc:
        raise TlsError(f"unreadable certificate revocation list: {exc}") from None
    finally:
        os.close(fd)
    if revocation.check == "chain":
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    else:
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _policy_context(
    policy: PolicySpec,
    security_level: int,
    ca_pem: str | None,
    alpn: tuple[str, ...] = (),
    revocation: Revocation | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = AlertingSSLObject
    if alpn:
        context.set_alpn_protocols(list(alpn))
    with warnings.catch_warnings():
        # TLSVersion.TLSv1 and TLSv1_1 are deprecated in Python; the seeds still offer them.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = getattr(ssl.TLSVersion, _VERSIONS[policy.min_version])
        context.maximum_version = getattr(ssl.TLSVersion, _VERSIONS[policy.max_version])
    ciphers = ":".join(policy.ciphers) if policy.ciphers else "DEFAULT"
    try:
        context.set_ciphers(f"{ciphers}:@SECLEVEL={security_level}")
    except ssl.SSLError:
        raise TlsError(f"TLS policy {policy.name}: OpenSSL supports none of its ciphers") from None
    if policy.tls13_ciphersuites:
        native.set_ciphersuites(context, ":".join(policy.tls13_ciphersuites))
    # The server picks the cipher (the policy lists the preferred ones first), and session
    # tickets stay on; their lifetime is the session timeout.
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options &= ~ssl.OP_NO_TICKET
    native.set_session_timeout(context, SESSION_TICKET_LIFETIME)
    if ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise TlsError(f"unreadable CA certificate: {exc}") from None
        if revocation is not None:
            _load_revocation_lists(context, revocation)
        # The CertificateRequest names the CA, so a client with several certificates offers
        # the one this listener trusts (and tools show which one that is).
        if not native.set_client_ca_list(context, ca_pem):
            log.warning("the CertificateRequest cannot name the client CA on this Python")
    return context


class ListenerTls:
    """The TLS side of one listener generation: its front context and certificate choice."""

    __slots__ = ("context", "key", "mutual", "selector")

    def __init__(
        self, context: ssl.SSLContext, selector: CertificateSelector, mutual: bool, key: tuple
    ) -> None:
        self.context = context
        self.selector = selector
        self.mutual = mutual
        self.key = key


class TlsContextCache:
    """Builds listener contexts, reusing those whose inputs did not change since the last apply."""

    def __init__(self) -> None:
        self._listeners: dict[tuple, ListenerTls] = {}
        self._certificates: dict[tuple, ssl.SSLContext] = {}
        self._used_listeners: set[tuple] = set()
        self._used_certificates: set[tuple] = set()

    def begin(self) -> None:
        """Start an apply: track what the new snapshot uses."""
        self._used_listeners = set()
        self._used_certificates = set()

    def end(self) -> None:
        """Finish an apply: drop contexts no listener uses any more."""
        self._listeners = {k: v for k, v in self._listeners.items() if k in self._used_listeners}
        self._certificates = {
            k: v for k, v in self._certificates.items() if k in self._used_certificates
        }

    def listener_tls(self, listener: Listener, snapshot: Snapshot) -> ListenerTls:
        """The TLS setup of a listener; raises TlsError with a reason for its status."""
        tls = self._listener_tls(listener, snapshot)
        # While the snapshot carries ACME TLS-ALPN-01 challenges, the front context answers them.
        acme_tls.answer(tls.context, AlertingSSLObject, snapshot.acme_tls_alpn_challenges)
        return tls

    def _listener_tls(self, listener: Listener, snapshot: Snapshot) -> ListenerTls:
        policy = resolve_policy(listener.tls_policy, snapshot)
        default = snapshot.certificate(listener.default_certificate_id)
        if default is None:
            raise TlsError(f"no certificate {listener.default_certificate_id!r}")
        sni = tuple(
            cert
            for cert in (snapshot.certificate(cert_id) for cert_id in listener.sni_certificate_ids)
            if cert is not None and cert.id != default.id
        )
        ca = snapshot.ca_certificate(listener.ca_certificate_id)
        ca_pem = ca.certificate_pem if ca is not None else None
        revocation = revocation_of(ca)
        infos = {cert.id: certificate_info(cert.certificate_pem) for cert in (default, *sni)}
        level = policy.security_level
        if any(info.weak_key for info in infos.values()):
            # Seed 000 allows RSA 1024 certificates; OpenSSL 3 serves them only up to level 1.
            level = min(level, 1)
        # ALPN is offered only where HTTP/2 is on (the schema allows it on https alone): an
        # HTTP/1.1-only listener must not let a client believe h2 was agreed.
        alpn = HTTP2_ALPN if listener.http2 else ()
        key = (policy, level, ca_pem, default, sni, alpn, revocation)
        self._used_listeners.add(key)
        cached = self._listeners.get(key)
        if cached is not None:
            for cert in sni:
                self._used_certificates.add((policy, level, ca_pem, cert, alpn, revocation))
            return cached

        front = _policy_context(policy, level, ca_pem, alpn, revocation)
        _load_certificate(front, default)
        if _ticket_secret is not None:
            # Tickets are sealed with the keys of the context the handshake began on, whichever
            # certificate SNI picks, so the front context's keys are the ones that count.
            keys = _ticket_keys(
                _ticket_secret,
                policy,
                level,
                ca_pem,
                default.certificate_pem,
                tuple(cert.certificate_pem for cert in sni),
                alpn,
                revocation,
            )
            if not native.set_ticket_keys(front, keys):
                log.warning("session tickets cannot be shared between worker processes here")
        by_id = {
            cert.id: self._certificate_context(
                policy, level, ca_pem, cert, alpn, revocation=revocation
            )
            for cert in sni
        }
        names = {cert.id: infos[cert.id].names for cert in sni}
        names[default.id] = infos[default.id].names
        selector = CertificateSelector(names, default.id)
        if by_id:
            front.sni_callback = _sni_callback(selector, by_id)
        tls = ListenerTls(front, selector, ca_pem is not None, key)
        self._listeners[key] = tls
        return tls

    def _certificate_context(
        self,
        policy: PolicySpec,
        level: int,
        ca_pem: str | None,
        cert: Certificate,
        alpn: tuple[str, ...],
        *,
        revocation: Revocation | None = None,
    ) -> ssl.SSLContext:
        key = (policy, level, ca_pem, cert, alpn, revocation)
        self._used_certificates.add(key)
        context = self._certificates.get(key)
        if context is None:
            # The SNI callback swaps the handshake onto this context before ALPN is chosen, so
            # it must offer the same protocols as the front one.
            context = _policy_context(policy, level, ca_pem, alpn, revocation)
            _load_certificate(context, cert)
            self._certificates[key] = context
        return context


def _sni_callback(
    selector: CertificateSelector, by_id: dict[str, ssl.SSLContext]
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    def choose_certificate(
        ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        context = by_id.get(selector.select(server_name) or "")
        if context is not None:
            ssl_object.context = context

    return choose_certificate


# -- client certificates and backends --------------------------------------------------------------


def client_certificate_headers(ssl_object: ssl.SSLObject | None, listener: Listener) -> bytes:
    """The X-Forwarded-Clientcert-* header lines a listener asks for (seed 001)."""
    if ssl_object is None:
        return b""
    der = ssl_object.getpeercert(binary_form=True)
    lines = []
    if der is None:
        if listener.clientcert_clientverify:
            lines.append(b"X-Forwarded-Clientcert-clientverify: NONE\r\n")
        return b"".join(lines)
    cert = x509.load_der_x509_certificate(der)
    if listener.clientcert_subjectdn:
        lines.append(b"X-Forwarded-Clientcert-subjectdn: %s\r\n" % _header_text(cert.subject))
    if listener.clientcert_issuerdn:
        lines.append(b"X-Forwarded-Clientcert-issuerdn: %s\r\n" % _header_text(cert.issuer))
    if listener.clientcert_fingerprint:
        fingerprint = hashlib.sha1(der).hexdigest().encode()
        lines.append(b"X-Forwarded-Clientcert-fingerprint: %s\r\n" % fingerprint)
    if listener.clientcert_clientverify:
        # A client whose certificate fails verification never completes the handshake.
        lines.append(b"X-Forwarded-Clientcert-clientverify: SUCCESS\r\n")
    return b"".join(lines)


def _header_text(name: x509.Name) -> bytes:
    text = name.rfc4514_string()
    return text.encode("utf-8").replace(b"\r", b" ").replace(b"\n", b" ")


@functools.cache
@functools.cache
def backend_client_context() -> ssl.SSLContext:
    """Context for HTTPS backends: encrypted, not verified (self-signed backends are common).

    One shared context: pooled backend connections are keyed by it, so every unverified HTTPS
    group reuses the same warm connections.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=1")
    return context


def backend_verified_context(ca_pem: str) -> ssl.SSLContext:
    """Context for HTTPS backends verified against one CA (a group's backend_ca_certificate_id).

    The chain must lead to that CA only (not the system store), and the certificate must name the
    server as the group lists it: an IP address in an IP subject alternative name, a host name in
    a DNS one. Raises TlsError when the CA cannot be loaded.
    """
    # Not create_default_context: it would trust the system CAs as well.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_ciphers("DEFAULT:@SECLEVEL=1")
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsError(f"backend CA certificate cannot be loaded: {exc}") from None
    return context
