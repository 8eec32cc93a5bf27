"""A listener's observed status, derived when it is read from what its instance's nodes reported.

The pipeline records facts with their times: each node's latest per-listener state (from its
answer to a push, or from its /v1/status), when the pipeline last tried to reach it and whether it
answered. The status every page shows (and any API will) is derived from those facts and the clock
here, and nowhere else. Deriving it on read keeps it honest when nothing can write: a node that
stopped answering, or a broker that is down so that no task runs.

- A change that not every node has applied yet is Configuring until CONFIGURING_DEADLINE; after
  that it is Failed with the reason, and edits are allowed again.
- Otherwise a listener is Running only while every node of its instance reported it running
  recently (within two reconcile intervals); else it is Failed with the node's problem, and it
  recovers on its own once the nodes report it running again.

The pipeline writes the same derivation into ``Listener.status`` each time it runs (see
``console.pipeline.settle``), as a cache for lists and filters; pages read ``Listener.observed``.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils import timezone

if TYPE_CHECKING:
    from console.models import DataplaneNode
    from listeners.models import Listener

NO_NODE = "no dataplane node is registered for this instance"


@dataclass(frozen=True)
class Observed:
    status: str
    reason: str = ""


def freshness() -> datetime.timedelta:
    """How recent a node's report must be for the console to vouch for it."""
    return datetime.timedelta(seconds=2 * settings.RECONCILE_INTERVAL)


def clock_time(moment: datetime.datetime) -> str:
    """14:03:12, with the date when it is not today (local time of the console)."""
    local = timezone.localtime(moment)
    if local.date() == timezone.localdate():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def observe(listener: Listener, nodes: list[DataplaneNode], *, now=None) -> Observed:
    """The status and reason to show for ``listener``, given its instance's nodes."""
    from listeners.models import Listener

    now = now or timezone.now()
    if listener.change_pending:
        if not listener.overdue(now):
            return Observed(Listener.Status.CONFIGURING)
        if not nodes:
            return Observed(Listener.Status.FAILED, NO_NODE)
        deadline = f"{settings.CONFIGURING_DEADLINE:g}"
        why = pending_reason(listener.instance.generation, nodes, now)
        return Observed(Listener.Status.FAILED, f"not applied within {deadline} s: {why}")
    if not nodes:
        # No node reports anything to correct the pipeline's last verdict with (settle writes
        # "no dataplane node is registered" there once the last node is removed).
        return Observed(listener.status, listener.last_error)
    return combine(listener, nodes, now=now)


def combine(listener: Listener, nodes: list[DataplaneNode], *, now=None) -> Observed:
    """A settled listener: Running only when every node runs it and said so recently; any node's
    failure or silence fails it, with that node's reason."""
    from listeners.models import Listener

    now = now or timezone.now()
    if not nodes:
        return Observed(Listener.Status.FAILED, NO_NODE)
    silent = _pipeline_silent(nodes, now)
    problems, statuses = [], set()
    for node in nodes:
        problem = silent or node_problem(node, now)
        if problem:
            if problem not in problems:
                problems.append(problem)
            continue
        result = _result(node, listener.id)
        if result is None:
            generation = node.applied_generation or 0
            problems.append(f"node {node.name}: not in the configuration it runs ({generation})")
            continue
        status, reason = result
        statuses.add(status)
        if status == "failed":
            problems.append(f"node {node.name}: {reason or 'failed'}")
    if listener.desired_state == Listener.DesiredState.STOPPED and statuses <= {"stopped"}:
        # Stopped as asked: a silent node does not make it serve.
        return Observed(Listener.Status.STOPPED)
    if problems:
        return Observed(Listener.Status.FAILED, "; ".join(problems))
    if statuses == {"running"}:
        return Observed(Listener.Status.RUNNING)
    if statuses == {"stopped"}:
        return Observed(Listener.Status.STOPPED)
    return Observed(Listener.Status.FAILED, f"nodes disagree: {sorted(statuses)}")


def _result(node: DataplaneNode, listener_id: str) -> tuple[str, str] | None:
    """The node's last word on one listener (status, reason), from what it answered to a push or
    to /v1/status; the node is not trusted to have sent strings."""
    results = node.listener_results if isinstance(node.listener_results, dict) else {}
    result = results.get(listener_id) or results.get("*")
    if not isinstance(result, dict):
        return None
    status, reason = result.get("status"), result.get("reason")
    return (
        status if isinstance(status, str) else repr(status),
        reason if isinstance(reason, str) else "",
    )


def node_problem(node: DataplaneNode, now: datetime.datetime) -> str:
    """Why the console cannot vouch for this node now, or "" when it answered recently."""
    if not node.reachable and node.unreachable_since is not None:
        error = node.last_error.removeprefix("unreachable: ")
        detail = f" ({error})" if error else ""
        return f"node {node.name} unreachable since {clock_time(node.unreachable_since)}{detail}"
    if node.checked_at is None:
        return f"node {node.name} has not been contacted yet"
    if now - node.checked_at > freshness():
        return f"node {node.name}: no report since {clock_time(node.checked_at)}"
    return ""


def pending_reason(generation: int, nodes: list[DataplaneNode], now: datetime.datetime) -> str:
    """Why a change has not reached every node."""
    silent = _pipeline_silent(nodes, now)
    if silent:
        return silent
    reasons = []
    for node in nodes:
        if node.acked_generation == generation:
            continue
        problem = node_problem(node, now)
        reasons.append(problem or f"node {node.name} has not applied generation {generation}")
    return "; ".join(reasons) or "waiting for the dataplane"


def _pipeline_silent(nodes: list[DataplaneNode], now: datetime.datetime) -> str:
    """When no node has been contacted for two reconcile intervals, nothing is running the
    pipeline: say why (the broker, or no worker), once, instead of blaming every node."""
    latest = max((node.checked_at for node in nodes if node.checked_at), default=None)
    if latest is not None and now - latest <= freshness():
        return ""
    if latest is None:
        return f"{pipeline_problem()} (no node checked yet)"
    return f"{pipeline_problem()} (nodes last checked at {clock_time(latest)})"


_probe: tuple[float, str] = (0.0, "")


def pipeline_problem() -> str:
    """Why the push pipeline is not running: the task broker down, or no worker and beat.

    Asked from page views only when no node has been checked recently; the answer is kept for one
    reconcile interval so a page full of listeners probes the broker once.
    """
    global _probe
    checked, answer = _probe
    if answer and time.monotonic() - checked < settings.RECONCILE_INTERVAL:
        return answer
    from kombu.exceptions import OperationalError

    from console.celery import app

    try:
        with app.connection_for_write(connect_timeout=1) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=1)
    except (OperationalError, OSError):
        answer = "the task broker is unreachable"
    else:
        answer = "no Celery worker and beat are running reconcile"
    _probe = (time.monotonic(), answer)
    return answer
