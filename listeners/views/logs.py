"""The Logs tab of a listener: its recent access-log lines, read from the instance's nodes.

Each node keeps the latest lines of every listener whose Access Log is on (dataplane.accesslog)
and filters them itself; the page asks every node of the instance at once, merges the answers
newest first, and polls while it is open. Download gives the same lines as JSON lines. Nothing
here changes anything: the switch itself is an Advanced Setting (Modify Listener).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from console import nodeclient
from console.models import DataplaneNode
from listeners.models import Listener
from listeners.views.listeners import _crumbs, _listener

# Seconds between two refreshes while the tab is open.
REFRESH_SECONDS = 3
LIMITS = (100, 500, 1000)
_CLIENT = re.compile(r"[0-9A-Fa-f.:]{1,45}")


class LogFilterForm(forms.Form):
    """The Logs tab's filters, as the nodes' access-log query takes them."""

    status = forms.ChoiceField(
        label="Status",
        required=False,
        choices=[("", "All"), ("2xx", "2xx"), ("3xx", "3xx"), ("4xx", "4xx"), ("5xx", "5xx")],
    )
    path = forms.CharField(label="Path Contains", required=False, max_length=256, strip=True)
    client = forms.CharField(
        label="Client IP Address",
        required=False,
        max_length=45,
        strip=True,
        help_text="An address or its beginning, such as 10.0.",
    )
    limit = forms.TypedChoiceField(
        label="Lines",
        required=False,
        coerce=int,
        choices=[(limit, str(limit)) for limit in LIMITS],
        empty_value=LIMITS[0],
    )

    def clean_client(self) -> str:
        client = self.cleaned_data["client"]
        if client and not _CLIENT.fullmatch(client):
            raise forms.ValidationError("Enter an IPv4 or IPv6 address, or its beginning.")
        return client

    def filters(self) -> dict[str, Any]:
        """The valid filters (an invalid form filters nothing but shows its errors)."""
        if not self.is_valid():
            return {"limit": LIMITS[0]}
        data = self.cleaned_data
        return {
            "limit": data.get("limit") or LIMITS[0],
            "status": data.get("status") or "",
            "path": data.get("path") or "",
            "client": data.get("client") or "",
        }


def recent_lines(
    listener: Listener, filters: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[DataplaneNode, str]]]:
    """The listener's lines on every node of its instance, newest first, and the nodes that did
    not answer (with why)."""
    nodes = list(listener.instance.nodes.all())
    if not nodes:
        return [], []
    jobs = [(node, node.control_url, node.token) for node in nodes]

    def ask(job: tuple[DataplaneNode, str, str]) -> nodeclient.NodeAnswer:
        return nodeclient.get_access_log(job[1], job[2], listener.id, **filters)

    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        answers = list(pool.map(ask, jobs))
    lines: list[dict[str, Any]] = []
    missing = []
    for (node, _, _), answer in zip(jobs, answers, strict=True):
        if not answer.ok:
            missing.append((node, answer.error or "; ".join(answer.reasons) or "no answer"))
            continue
        # The node's answer is input from the network: lines that are not a list of objects
        # are read as none.
        found = answer.payload.get("lines")
        for line in found if isinstance(found, list) else []:
            if isinstance(line, dict):
                lines.append({**line, "node": node.name})
    # RFC 3339 times of one format sort as text.
    lines.sort(key=lambda line: str(line.get("time") or ""), reverse=True)
    return lines[: filters["limit"]], missing


@require_GET
def listener_logs(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    """The full page, or for htmx (the filters and the poll) only the logs block."""
    listener = _listener(instance_id, listener_id)
    form = LogFilterForm(request.GET or None)
    filters = form.filters()
    lines, missing = recent_lines(listener, filters)
    context = {
        "listener": listener,
        "instance": listener.instance,
        "form": form,
        "lines": [_row(line) for line in lines],
        "missing": missing,
        "filters": filters,
        "query": request.GET.urlencode(),
        "refresh": REFRESH_SECONDS,
        "updated": timezone.now(),
        "title": listener.name,
        "breadcrumbs": _crumbs(listener.instance),
    }
    if request.htmx:
        return render(request, "listeners/_logs.html", context)
    return render(request, "listeners/listener_logs.html", context)


@require_GET
def listener_logs_download(
    request: HttpRequest, instance_id: str, listener_id: str
) -> HttpResponse:
    """The lines the tab shows with the same filters, one JSON object per line."""
    listener = _listener(instance_id, listener_id)
    filters = LogFilterForm(request.GET or None).filters()
    lines, _ = recent_lines(listener, filters)
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    response = HttpResponse(body, content_type="application/x-ndjson; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="{listener.id}-access-{stamp}.jsonl"'
    return response


def _row(line: dict[str, Any]) -> dict[str, Any]:
    """One line as the table shows it; every value stays text the template escapes."""
    status = line.get("status")
    version, name = line.get("http_version"), line.get("protocol")
    protocol = version if isinstance(version, str) and version else ""
    protocol = protocol or (name.upper() if isinstance(name, str) else "")
    return {
        **line,
        "status_class": f"{status // 100}xx" if isinstance(status, int) else "",
        "request": " ".join(
            str(part)
            for part in (line.get("method"), line.get("authority"), line.get("path"))
            if part
        ),
        "shown_protocol": protocol,
        "client": f"{line.get('client_ip') or ''}:{line.get('client_port') or ''}",
        "bytes": f"{_number(line.get('bytes_in'))} / {_number(line.get('bytes_out'))}",
    }


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "\N{EN DASH}"
