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
from django.db.models import Q
from django.utils import timezone

from console import nodeclient, push_counters
from console.models import DataplaneNode, Instance, PushAttempt
from console.snapshot import build_snapshot
from console.status import combine, observe
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
    # A node is done once its answer to the instance's current generation (which is at least
    # ``generation``) is recorded: an ACK, or a NACK that resending would only repeat.
    pending = [node for node in nodes if node.acked_generation != instance.generation]
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


# A node's answers are network input: a value of another shape than the node sends counts as
# absent, so one broken or hostile node cannot stop the pipeline for its whole instance.
_MAX_GENERATION = 2**63 - 1
_MAX_REASON = 1000


def _generation(payload: dict, default: int) -> int:
    value = payload.get("generation")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_GENERATION:
        return value
    return default


def _listener_results(payload: dict) -> dict[str, dict[str, str]]:
    """Each listener's status and reason from a node's answer, as text."""
    listeners = payload.get("listeners")
    if not isinstance(listeners, dict):
        return {}
    results = {}
    for listener_id, entry in listeners.items():
        if not isinstance(entry, dict):
            continue
        status, reason = entry.get("status"), entry.get("reason", "")
        results[listener_id] = {
            "status": status if isinstance(status, str) else "",
            "reason": reason[:_MAX_REASON] if isinstance(reason, str) else "",
        }
    return results


def _record_push(node: DataplaneNode, generation: int, answer, duration: int) -> None:
    """Store one node's answer; only the fields a push owns are written (reconcile runs
    concurrently and writes the status-report fields of the same row)."""
    now = timezone.now()
    changes: dict[str, object]
    if not answer.reachable:
        result, detail = PushAttempt.Result.UNREACHABLE, answer.error
        changes = {"reachable": False, "last_error": answer.error, "checked_at": now}
        DataplaneNode.objects.filter(pk=node.pk, unreachable_since__isnull=True).update(
            unreachable_since=now
        )
    elif answer.ok:
        result = PushAttempt.Result.ACK
        listeners = _listener_results(answer.payload)
        detail = "; ".join(
            f"{lid}: {r['reason']}" for lid, r in listeners.items() if r["status"] == "failed"
        )
        applied = _generation(answer.payload, generation)
        changes = {
            "applied_generation": applied,
            "acked_generation": applied,
            "listener_results": listeners,
            "results_at": now,
            "reachable": True,
            "last_contact": now,
            "checked_at": now,
            "unreachable_since": None,
            "last_error": "",
        }
    else:
        result = PushAttempt.Result.NACK
        detail = "; ".join(answer.reasons)
        changes = {
            "reachable": True,
            "last_contact": now,
            "checked_at": now,
            "unreachable_since": None,
            "last_error": f"rejected generation {generation}: {detail}",
        }
        if answer.status == 409:
            # The node runs a newer generation than the database knows (a restored database):
            # move past it so the next push is accepted.
            node_generation = _generation(answer.payload, 0)
            Instance.objects.filter(pk=node.instance_id, generation__lte=node_generation).update(
                generation=node_generation + 1
            )
            changes["applied_generation"] = node_generation
        else:
            # The node keeps serving its last good snapshot; every listener of this generation
            # failed on it, for the same reasons.
            changes["acked_generation"] = generation
            changes["listener_results"] = {
                "*": {"status": "failed", "reason": f"rejected: {detail}"}
            }
            changes["results_at"] = now
    DataplaneNode.objects.filter(pk=node.pk).update(**changes)
    for name, value in changes.items():
        setattr(node, name, value)
    PushAttempt.objects.create(
        node=node, generation=generation, result=result, detail=detail[:4000], duration_ms=duration
    )
    push_counters.record(node.pk, result, duration / 1000)
    stale = PushAttempt.objects.filter(node=node).order_by("-started_at", "-id")[HISTORY_PER_NODE:]
    PushAttempt.objects.filter(pk__in=list(stale.values_list("pk", flat=True))).delete()
    # A node answering a push is a state change (routine reconcile passes push nothing).
    log.info(
        "node %s: generation %d %s in %d ms%s",
        node.name,
        generation,
        result,
        duration,
        f": {detail}" if detail else "",
        extra={"node": node.name, "generation": generation, "instance_id": node.instance_id},
    )


def settle(instance_id: str) -> None:
    """Write each listener's status, derived from the nodes' latest reports (console.status),
    into its row; a pending change settles once every node has answered the current generation.
    """
    with transaction.atomic():
        instance = Instance.objects.select_for_update().filter(pk=instance_id).first()
        if instance is None:
            return
        nodes = list(instance.nodes.all())
        generation = instance.generation
        applied = bool(nodes) and all(node.acked_generation == generation for node in nodes)
        now = timezone.now()
        # A listener a change holds locked right now is skipped: it leaves it Configuring.
        for listener in instance.listeners.select_for_update(skip_locked=True):
            if listener.change_pending and not applied:
                continue
            observed = combine(listener, nodes, now=now)
            row = (listener.status, listener.last_error, listener.configuring_since)
            if row != (observed.status, observed.reason, None):
                Listener.objects.filter(pk=listener.pk).update(
                    status=observed.status, last_error=observed.reason, configuring_since=None
                )


def collect(instance: Instance) -> list[DataplaneNode]:
    """Read every node's /v1/status: counters for the console, its real generation, and the
    state of each of its listeners (a listener the node started again on its own shows here)."""
    nodes = list(instance.nodes.all())
    asked_at = timezone.now()
    for node, answer, _ in _parallel(nodes, nodeclient.get_status):
        rows = DataplaneNode.objects.filter(pk=node.pk)
        now = timezone.now()
        if not answer.ok:
            error = answer.error or f"status answered HTTP {answer.status}"
            rows.update(reachable=False, last_error=error, checked_at=now)
            rows.filter(unreachable_since__isnull=True).update(unreachable_since=asked_at)
            continue
        reported = _generation(answer.payload, 0)
        results = _listener_results(answer.payload)
        # The report is the node's state as of ``asked_at``; a push recorded after that is newer.
        newer = rows.filter(Q(results_at__isnull=True) | Q(results_at__lt=asked_at))
        if reported == instance.generation:
            # The node runs the current generation: as good as its ACK, so an ACK that was lost
            # (the worker or the node killed right after the apply) costs nothing.
            newer.update(
                applied_generation=reported,
                acked_generation=reported,
                listener_results=results,
                results_at=asked_at,
            )
        else:
            # A node that reports less than it applied restarted (perhaps empty): forget its
            # acknowledgement so it is pushed again.
            newer.filter(applied_generation__gt=reported).update(
                applied_generation=reported,
                acked_generation=None,
                listener_results=results,
                results_at=asked_at,
            )
        rows.update(
            previous_report=node.status_report,
            previous_report_at=node.status_report_at,
            status_report=answer.payload,
            status_report_at=now,
            reachable=True,
            last_contact=now,
            checked_at=now,
            unreachable_since=None,
        )
        rows.filter(
            Q(last_error__startswith="unreachable") | Q(last_error__startswith="status answered")
        ).update(last_error="")
    return list(instance.nodes.all())


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
    """Write the deadline's verdict into the rows of listeners Configuring for too long (pages
    derive it when read either way, so it holds while no task can run)."""
    now = timezone.now()
    deadline = now - timedelta(seconds=settings.CONFIGURING_DEADLINE)
    overdue = list(
        instance.listeners.filter(
            status=Listener.Status.CONFIGURING, configuring_since__lt=deadline
        )
    )
    if not overdue:
        return
    instance.refresh_from_db(fields=["generation"])
    nodes = list(instance.nodes.all())
    for listener in overdue:
        listener.instance = instance
        observed = observe(listener, nodes, now=now)
        if observed.status == Listener.Status.CONFIGURING:
            continue
        # configuring_since stays set: the listener still waits, and settles when nodes answer.
        Listener.objects.filter(pk=listener.pk, status=Listener.Status.CONFIGURING).update(
            status=observed.status, last_error=observed.reason
        )


def recent_attempts(instance: Instance, limit: int = 10):
    return (
        PushAttempt.objects.filter(node__instance=instance)
        .select_related("node")
        .order_by("-started_at", "-id")[:limit]
    )
