"""The one place that knows both sides: an instance's models become a dataplane Snapshot."""

from __future__ import annotations

import dataclasses
import math

from certificates.models import Certificate
from certificates.revocation import crl_check, crl_pem
from console.models import Instance
from dataplane import config as dp
from dataplane import rules as dp_rules
from listeners.forwarding import stored_rule
from listeners.models import Listener


def build_snapshot(instance: Instance) -> dp.Snapshot:
    """The instance's desired configuration at its current generation.

    Certificates travel with their decrypted private keys: the snapshot is built in the worker
    and sent only to the nodes' control APIs.
    """
    listeners = list(
        Listener.objects.filter(instance=instance)
        .select_related(
            "server_group__health_check",
            "server_group__backend_ca_certificate",
            "acl",
            "tls_policy",
        )
        .prefetch_related(
            "additional_certificates",
            "server_group__servers",
            "acl__entries",
            "rules__server_group__servers",
            "error_pages",
        )
        .order_by("port", "protocol")
    )
    groups, certificates, cas, policies, acls = {}, {}, {}, {}, {}
    snapshot_listeners = []
    for listener in listeners:
        group = listener.server_group
        groups[group.id] = group
        for rule in listener.rules.all() if listener.protocol in Listener.LAYER7_PROTOCOLS else ():
            if rule.server_group is not None:
                groups[rule.server_group.id] = rule.server_group
        sni_ids: tuple[str, ...] = ()
        if listener.needs_certificate and listener.default_certificate is not None:
            certificates[listener.default_certificate.id] = listener.default_certificate
        if listener.uses_tls:
            for certificate in listener.additional_certificates.all():
                certificates[certificate.id] = certificate
            sni_ids = tuple(c.id for c in listener.additional_certificates.all())
            if listener.mutual_authentication and listener.ca_certificate is not None:
                cas[listener.ca_certificate.id] = listener.ca_certificate
            if listener.tls_policy is not None and not listener.tls_policy.predefined:
                policies[listener.tls_policy.id] = listener.tls_policy
        if listener.acl is not None and listener.acl_mode != Listener.AclMode.OFF:
            acls[listener.acl.id] = listener.acl
        snapshot_listeners.append(_listener(listener, sni_ids))
    for group in groups.values():
        if group.backend_ca_certificate is not None:
            cas[group.backend_ca_certificate.id] = group.backend_ca_certificate
    snapshot_listeners, tls_alpn_challenges = _acme_challenges(instance, snapshot_listeners)
    return dp.Snapshot(
        instance_id=instance.id,
        generation=instance.generation,
        bind_address=instance.bind_address,
        bandwidth_mbit=instance.bandwidth_mbit,
        listeners=tuple(snapshot_listeners),
        server_groups=tuple(_group(group) for group in groups.values()),
        certificates=tuple(
            dp.Certificate(
                id=c.id,
                certificate_pem=c.certificate_pem,
                private_key_pem=c.private_key_pem(),
                chain_pem=c.chain_pem,
            )
            for c in certificates.values()
        ),
        ca_certificates=tuple(_ca_certificate(c) for c in cas.values()),
        tls_policies=tuple(
            dp.TlsPolicy(
                id=p.id,
                name=p.name,
                min_version=p.min_version,
                max_version=p.max_version,
                ciphers=tuple(p.ciphers),
                tls13_ciphersuites=tuple(p.tls13_ciphersuites),
            )
            for p in policies.values()
        ),
        acls=tuple(
            dp.Acl(id=a.id, entries=tuple(e.cidr for e in a.entries.all())) for a in acls.values()
        ),
        acme_tls_alpn_challenges=tls_alpn_challenges,
    )


def _acme_challenges(
    instance: Instance, listeners: list[dp.Listener]
) -> tuple[list[dp.Listener], tuple[dp.TlsAlpnChallenge, ...]]:
    """ACME challenges being validated (certificates/renewal.py): an HTTP-01 one is a fixed
    response ahead of every forwarding rule of the HTTP listeners on the validation port; the
    TLS-ALPN-01 ones travel as they are and every TLS listener answers them."""
    from django.conf import settings

    from certificates.acme_models import AcmeChallenge

    challenges = list(AcmeChallenge.objects.filter(instance=instance))
    if not challenges:
        return listeners, ()
    answers = tuple(
        dp_rules.ForwardingRule(
            id=f"acme-challenge-{challenge.pk}",
            name="ACME HTTP-01 challenge",
            conditions=(
                dp_rules.RuleCondition(type="host", values=(challenge.domain,)),
                dp_rules.RuleCondition(
                    type="path",
                    match="exact",
                    values=(f"/.well-known/acme-challenge/{challenge.token}",),
                ),
            ),
            action=dp_rules.RuleAction(
                type="fixed_response",
                status_code=200,
                content_type="text/plain",
                body=challenge.key_authorization,
            ),
        )
        for challenge in challenges
        if challenge.type == "http-01"
    )
    if answers:
        listeners = [
            dataclasses.replace(x, forwarding_rules=answers + x.forwarding_rules)
            if x.protocol == "http" and x.port == settings.ACME_HTTP01_PORT
            else x
            for x in listeners
        ]
    tls_alpn = tuple(
        dp.TlsAlpnChallenge(domain=c.domain, key_authorization=c.key_authorization)
        for c in challenges
        if c.type == "tls-alpn-01"
    )
    return listeners, tls_alpn


def _ca_certificate(ca: Certificate) -> dp.CaCertificate:
    """A CA with the revocation lists the node checks client certificates against."""
    crls = list(ca.revocation_lists.all())
    return dp.CaCertificate(
        id=ca.id,
        certificate_pem=ca.certificate_pem,
        crls=tuple(crl_pem(crl.der) for crl in crls),
        crl_check=crl_check(ca.subject, crls),
    )


def _listener(listener: Listener, sni_ids: tuple[str, ...]) -> dp.Listener:
    mutual = listener.uses_tls and listener.mutual_authentication
    # Forwarding rules and compression travel for each Layer-7 listener (QUIC requests go
    # through the same HTTP exchange on the node as HTTP and HTTPS ones).
    layer7 = listener.protocol in Listener.LAYER7_PROTOCOLS
    return dp.Listener(
        id=listener.id,
        protocol=listener.protocol,
        port=listener.port,
        name=listener.name,
        server_group_id=listener.server_group_id,
        enabled=listener.desired_state == Listener.DesiredState.RUNNING,
        scheduler=listener.scheduler,
        persistence=dp.Persistence(
            mode=listener.persistence,
            cookie_timeout=listener.persistence_timeout,
            cookie_name=listener.cookie_name or None,
        ),
        acl=dp.AccessControl(
            mode=listener.acl_mode if listener.acl_id else "off",
            acl_id=listener.acl_id if listener.acl_mode != Listener.AclMode.OFF else None,
        ),
        idle_timeout=listener.idle_timeout,
        request_timeout=listener.request_timeout,
        response_timeout=listener.response_timeout,
        http2=listener.http2 and listener.protocol == Listener.Protocol.HTTPS,
        x_forwarded_for=listener.x_forwarded_for,
        x_forwarded_proto=listener.header_x_forwarded_proto,
        x_forwarded_port=listener.header_x_forwarded_port,
        x_forwarded_host=listener.header_x_forwarded_host,
        x_forwarded_client_srcport=listener.header_x_forwarded_client_srcport,
        slb_id=listener.header_slb_id,
        slb_ip=listener.header_slb_ip,
        clientcert_subjectdn=mutual and listener.header_clientcert_subjectdn,
        clientcert_issuerdn=mutual and listener.header_clientcert_issuerdn,
        clientcert_fingerprint=mutual and listener.header_clientcert_fingerprint,
        clientcert_clientverify=mutual and listener.header_clientcert_clientverify,
        retrieve_client_ip=dp.RetrieveClientIp(
            # Seed 003: not supported for QUIC listeners (nor outside HTTP and HTTPS).
            enabled=listener.retrieve_client_ip and listener.is_http,
            trusted=tuple(p for p in listener.trusted_proxies.split(";") if p),
        ),
        default_certificate_id=(
            listener.default_certificate_id if listener.needs_certificate else None
        ),
        sni_certificate_ids=sni_ids,
        tls_policy=(listener.tls_policy_id or "tls_cipher_policy_1_0"),
        ca_certificate_id=listener.ca_certificate_id if mutual else None,
        compression=listener.compression if layer7 else "off",
        bandwidth_mbit=listener.bandwidth_mbit,
        quic_listener_id=(
            listener.quic_listener_id if listener.protocol == Listener.Protocol.HTTPS else None
        ),
        forwarding_rules=(
            tuple(stored_rule(rule) for rule in listener.rules.all()) if layer7 else ()
        ),
        proxy_protocol=listener.proxy_protocol,
        x_forwarded_elb_ip=listener.header_x_forwarded_elb_ip,
        access_log=listener.access_log,
        **_traffic_policy(listener),
    )


def _traffic_policy(listener: Listener) -> dict:
    """Throttling, retries and error pages: the node applies them to Layer-7 requests only."""
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        return {}
    return {
        "qps_per_client_ip": listener.qps_per_client_ip,
        "retries": listener.retries,
        "retry_budget_percent": listener.retry_budget_percent,
        "error_pages": tuple(
            dp.ErrorPage(status=page.status, content_type=page.content_type, body=page.body)
            for page in listener.error_pages.all()
        ),
    }


def _drain_deadline(server) -> int | None:
    """A draining server's deadline in Unix seconds, rounded up: the nodes never cut early."""
    deadline = server.drain_deadline
    if deadline is None:
        return None
    return math.ceil(deadline.timestamp())


def _group(group) -> dp.ServerGroup:
    check = getattr(group, "health_check", None)
    health = dp.HealthCheck(enabled=False)
    if check is not None:
        health = dp.HealthCheck(
            enabled=check.enabled,
            protocol=check.protocol,
            port=check.port,
            domain=check.domain or None,
            path=check.path or "/",
            interval=check.interval,
            timeout=check.timeout,
            healthy_threshold=check.healthy_threshold,
            unhealthy_threshold=check.unhealthy_threshold,
            expected_codes=tuple(check.expected_codes or ("http_2xx", "http_3xx")),
            udp_request=check.udp_request,
            udp_expected=check.udp_expected,
        )
    return dp.ServerGroup(
        id=group.id,
        name=group.name,
        backend_protocol=group.backend_protocol,
        servers=tuple(
            dp.BackendServer(
                id=s.server_id,
                address=s.address,
                port=s.port,
                weight=s.weight,
                state=s.state,
                drain_deadline=_drain_deadline(s),
            )
            for s in group.servers.all()
        ),
        health_check=health,
        slow_start=group.slow_start,
        slow_start_duration=group.slow_start_duration,
        backend_ca_certificate_id=group.backend_ca_certificate_id,
        passive_health_check=dp.PassiveHealthCheck(
            enabled=group.passive_health_check,
            consecutive_failures=group.passive_consecutive_failures,
            base_ejection_time=group.passive_base_ejection_time,
            max_ejection_time=group.passive_max_ejection_time,
            max_ejection_percent=group.passive_max_ejection_percent,
        ),
    )
