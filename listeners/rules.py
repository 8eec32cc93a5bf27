"""The seeds' rules for listeners, in one place for the wizard, Quick Create and Modify.

Each function returns an error message or None, so the caller decides which field shows it.
"""

from __future__ import annotations

from console.models import Instance
from listeners.models import Listener, Scheduler, ServerGroup, TlsPolicy

# Seed 001/003: HTTP and HTTPS listeners never share a port. One TCP port can be bound only
# once, so the same holds for TCP and TCP SSL (seed 004: "The listener port must be unique in
# the same CLB instance"). UDP and QUIC form their own transport and may reuse a TCP port
# number, so HTTPS 443 and QUIC 443 live side by side.
TRANSPORT = {
    Listener.Protocol.HTTP: "tcp",
    Listener.Protocol.HTTPS: "tcp",
    Listener.Protocol.TCP: "tcp",
    Listener.Protocol.TCP_SSL: "tcp",
    Listener.Protocol.UDP: "udp",
    Listener.Protocol.QUIC: "udp",
}


def port_conflict(instance: Instance, protocol: str, port: int, exclude_id: str = "") -> str | None:
    transport = TRANSPORT[protocol]
    clashing = (
        instance.listeners.filter(port=port)
        .exclude(pk=exclude_id)
        .only("id", "name", "protocol", "port")
    )
    for other in clashing:
        if TRANSPORT[other.protocol] != transport:
            continue
        if other.protocol == protocol:
            return (
                f"Port {port} is already used by {other.get_protocol_display()} listener "
                f"{other.name} ({other.id}). Listeners of the same protocol need unique ports."
            )
        if {other.protocol, protocol} == {Listener.Protocol.HTTP, Listener.Protocol.HTTPS}:
            return (
                f"Port {port} is used by {other.get_protocol_display()} listener {other.name} "
                f"({other.id}). HTTP and HTTPS listeners cannot use the same port."
            )
        carrier = "TCP" if transport == "tcp" else "UDP"
        return (
            f"Port {port} is used by {other.get_protocol_display()} listener {other.name} "
            f"({other.id}). Listeners carried over {carrier} cannot share a port."
        )
    return None


def quota_exceeded(instance: Instance) -> str | None:
    count = instance.listeners.count()
    if count >= instance.listener_quota:
        return (
            f"This instance already has {count} listeners, its quota of "
            f"{instance.listener_quota}. Delete a listener or raise the instance's quota."
        )
    return None


def policy_cannot_serve(policy: TlsPolicy, certificate) -> str | None:
    if policy.can_serve(certificate.key_algorithm):
        return None
    return (
        f"TLS security policy {policy.name} has no cipher suite for a {certificate.key_type} "
        f"certificate ({certificate.name}). Choose a policy with "
        f"{'ECDSA' if certificate.key_algorithm == 'ECDSA' else 'RSA'} suites or TLS 1.3."
    )


def slow_start_conflict(slow_start: bool, scheduler: str) -> str | None:
    # Seed 002: slow start works with weighted round robin and weighted least connections.
    if slow_start and scheduler not in (Scheduler.WRR, Scheduler.WLC):
        return (
            "Slow start works only with Weighted Round-robin and Weighted Least Connections; "
            f"this listener uses {Scheduler(scheduler).label}."
        )
    return None


def configuring_refusal(listener: Listener, action: str) -> str | None:
    if listener.is_configuring:
        return (
            f"Listener {listener.name} is Configuring; {action} is possible once the "
            "configuration has been applied."
        )
    return None


def compatible_backend_protocols(protocol: str) -> list[str]:
    # Seed 003: HTTP and HTTPS listeners forward to HTTP or HTTPS backends; TCP and TCP SSL
    # listeners forward raw bytes, so their group speaks TCP.
    if protocol == Listener.Protocol.HTTPS:
        return [
            ServerGroup.BackendProtocol.HTTP,
            ServerGroup.BackendProtocol.HTTPS,
            ServerGroup.BackendProtocol.GRPC,
        ]
    if protocol == Listener.Protocol.HTTP:
        return [ServerGroup.BackendProtocol.HTTP, ServerGroup.BackendProtocol.HTTPS]
    if protocol == Listener.Protocol.QUIC:
        return [ServerGroup.BackendProtocol.HTTP]
    if protocol == Listener.Protocol.UDP:
        return [ServerGroup.BackendProtocol.UDP]
    return [ServerGroup.BackendProtocol.TCP]


def grpc_conflicts(
    *,
    http2: bool,
    persistence: str = "none",
    compression: str = "off",
    bandwidth_mbit: int | None = None,
    forwarding_rules: int = 0,
) -> list[tuple[str, str]]:
    """Seed 003: gRPC backends need HTTP/2. A gRPC call is relayed as it is, so the options that
    rewrite HTTP/1.1 requests or responses do not apply. Returns (field, message) pairs."""
    problems = []
    if not http2:
        problems.append(("http2", "gRPC backends need HTTP/2; enable HTTP/2."))
    if persistence != "none":
        problems.append(("persistence", "cookie session persistence is not offered for gRPC."))
    if compression != "off":
        problems.append(("compression", "gRPC compresses its own messages; turn this off."))
    if bandwidth_mbit:
        problems.append(("bandwidth_mbit", "bandwidth throttling is not offered for gRPC."))
    if forwarding_rules:
        problems.append(
            (
                "server_group",
                "forwarding rules send requests to HTTP server groups; delete the "
                f"listener's {forwarding_rules} forwarding rule(s) first.",
            )
        )
    return problems
