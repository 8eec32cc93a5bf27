"""Push desired state to dataplane nodes, read their answers back, and converge.

The database is the source of truth: a node's answer only ever moves listener statuses, and any
node that lags (a lost message, a restart with empty state, a broker outage) is found by
``reconcile`` and pushed again.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console import nodeclient
from console.models import DataplaneNode, Instance, PushAttempt
from console.snapshot import build_snapshot
from listeners.models import Listener

log = logging.getLogger(__name__)
HISTORY_PER_NODE = 50


@dataclass
class Outcome:
    summary: str
    retry: bool = False


def _parallel(nodes: list[DataplaneNode], call) -> list[tuple[DataplaneNode, object, int]]:
    """Run ``call(node)`` for every node at once; HTTP only, no database access in threads."""
    if not nodes:
        return []
    jobs = [(node, node.control_url, node.token) for node in nodes]

    def run(job):
        node, url, token = job
        started = time.monotonic()
        answer = call(url, token)
        return node, answer, int((time.monotonic() - started) * 1000)

    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        return list(pool.map(run, jobs))


def push(instance_id: str, generation: int) -> Outcome:
    """Send the instance's current snapshot to every node that has not applied ``generation``."""
    instance = Instance.objects.filter(pk=instance_id).first()
    if instance is None:
        return Outcome(f"instance {instance_id} no longer exists")
    nodes = list(instance.nodes.all())
    pending = [
        node
        for node in nodes
        if (node.applied_generation or 0) < generation
        and node.acked_generation != instance.generation
    ]
    if not pending:
        settle(instance.id)
        return Outcome(f"generation {generation} already applied by every node")
    snapshot = build_snapshot(instance)
    body = snapshot.to_json()
    answers = _parallel(pending, lambda url, token: nodeclient.put_config(url, token, body))
    unreachable = False
    for node, answer, duration in answers:
        unreachable |= not answer.reachable
        _record_push(node, snapshot.generation, answer, duration)
    settle(instance.id)
    return Outcome(
        f"generation {snapshot.generation} pushed to {len(pending)} node(s)", retry=unreachable
    )


def _record_push(node: DataplaneNode, generation: int, answer, duration: int) -> None:
    now = timezone.now()
    if not answer.reachable:
        result, detail = PushAttempt.Result.UNREACHABLE, answer.error
        node.reachable, node.last_error = False, answer.error
    elif answer.ok:
        result = PushAttempt.Result.ACK
        failed = {
            lid: r.get("reason", "")
            for lid, r in (answer.payload.get("listeners") or {}).items()
            if r.get("status") == "failed"
        }
        detail = "; ".join(f"{lid}: {reason}" for lid, reason in failed.items())
        node.applied_generation = answer.payload.get("generation", generation)
        node.acked_generation = node.applied_generation
        node.listener_results = answer.payload.get("listeners") or {}
        node.reachable, node.last_contact, node.last_error = True, now, ""
    else:
        result = PushAttempt.Result.NACK
        detail = "; ".join(answer.reasons)
        node.reachable, node.last_contact = True, now
        node.last_error = f"rejected generation {generation}: {detail}"
        if answer.status == 409:
            # The node runs a newer generation than the database knows (a restored database):
            # move past it so the next push is accepted.
            node_generation = int(answer.payload.get("generation") or 0)
            Instance.objects.filter(pk=node.instance_id, generation__lte=node_generation).update(
                generation=node_generation + 1
            )
            node.applied_generation = node_generation
        else:
            # The node keeps serving its last good snapshot; every listener of this generation
            # failed on it, for the same reasons.
            node.acked_generation = generation
            node.listener_results = {"*": {"status": "failed", "reason": f"rejected: {detail}"}}
    node.save()
    PushAttempt.objects.create(
        node=node, generation=generation, result=result, detail=detail[:4000], duration_ms=duration
    )
    stale = PushAttempt.objects.filter(node=node).order_by("-started_at", "-id")[HISTORY_PER_NODE:]
    PushAttempt.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
    log.info(
        "push %s",
        result,
        extra={"node": node.name, "generation": generation, "instance_id": node.instance_id},
    )


def settle(instance_id: str) -> None:
    """Derive listener statuses once every node has answered the current generation."""
    with transaction.atomic():
        instance = Instance.objects.select_for_update().filter(pk=instance_id).first()
        if instance is None:
            return
        nodes = list(instance.nodes.all())
        if not nodes or any(node.acked_generation != instance.generation for node in nodes):
            return
        for listener in instance.listeners.all():
            status, reason = _combined_status(listener, nodes)
            if (listener.status, listener.last_error) != (status, reason):
                Listener.objects.filter(pk=listener.pk).update(
                    status=status, last_error=reason, configuring_since=None
                )


def _combined_status(listener: Listener, nodes: list[DataplaneNode]) -> tuple[str, str]:
    """Running only when every node runs it; any node's failure fails it, with its reason."""
    statuses, failures = set(), []
    for node in nodes:
        result = node.listener_results.get(listener.id) or node.listener_results.get("*")
        if result is None:
            failures.append(f"node {node.name}: not in its configuration")
            continue
        statuses.add(result.get("status"))
        if result.get("status") == "failed":
            failures.append(f"node {node.name}: {result.get('reason') or 'failed'}")
    if failures:
        return Listener.Status.FAILED, "; ".join(failures)
    if statuses == {"running"}:
        return Listener.Status.RUNNING, ""
    if statuses == {"stopped"}:
        return Listener.Status.STOPPED, ""
    return Listener.Status.FAILED, f"nodes disagree: {sorted(statuses)}"


def collect(instance: Instance) -> list[DataplaneNode]:
    """Read every node's /v1/status: counters for the console, and its real generation."""
    nodes = list(instance.nodes.all())
    now = timezone.now()
    for node, answer, _ in _parallel(nodes, nodeclient.get_status):
        if not answer.ok:
            node.reachable = False
            node.last_error = answer.error or f"status answered HTTP {answer.status}"
            node.save(update_fields=["reachable", "last_error"])
            continue
        reported = int(answer.payload.get("generation") or 0)
        if reported != (node.applied_generation or 0):
            # Restarted (perhaps empty) or changed behind our back: what it runs is the truth.
            node.applied_generation = reported
            if reported != instance.generation:
                node.acked_generation = None
        node.previous_report, node.previous_report_at = node.status_report, node.status_report_at
        node.status_report, node.status_report_at = answer.payload, now
        node.reachable, node.last_contact = True, now
        if node.last_error.startswith(("unreachable", "status answered")):
            node.last_error = ""
        node.save()
    return nodes


def reconcile() -> list[str]:
    """Bring every node to its instance's generation; fail listeners stuck in Configuring."""
    actions = []
    for instance in Instance.objects.all():
        nodes = collect(instance)
        lagging = [node for node in nodes if node.acked_generation != instance.generation]
        if lagging:
            outcome = push(instance.id, instance.generation)
            actions.append(f"{instance.id}: {outcome.summary}")
        else:
            settle(instance.id)
        fail_overdue(instance)
    return actions


def fail_overdue(instance: Instance) -> None:
    deadline = timezone.now() - timedelta(seconds=settings.CONFIGURING_DEADLINE)
    overdue = instance.listeners.filter(
        status=Listener.Status.CONFIGURING, configuring_since__lt=deadline
    )
    if not overdue.exists():
        return
    instance.refresh_from_db(fields=["generation"])
    nodes = list(instance.nodes.all())
    if not nodes:
        reason = "no dataplane node is registered for this instance"
    else:
        reasons = [
            f"node {node.name} unreachable ({node.last_error})"
            if not node.reachable
            else f"node {node.name} has not applied generation {instance.generation}"
            for node in nodes
            if node.acked_generation != instance.generation
        ]
        reason = "; ".join(reasons) or "waiting for the dataplane"
    # configuring_since stays set: the listener is still waiting, and settles when nodes answer.
    overdue.update(status=Listener.Status.FAILED, last_error=reason)


def recent_attempts(instance: Instance, limit: int = 10):
    return (
        PushAttempt.objects.filter(node__instance=instance)
        .select_related("node")
        .order_by("-started_at", "-id")[:limit]
    )
