"""The Monitoring tab of a listener: traffic graphs over the last hour or day (console.graphs),
drawn as SVG on the server (console.svg_charts), with the numbers as a table beside them."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from console import graphs, svg_charts
from listeners.views.listeners import _crumbs, _listener


@require_GET
def listener_monitoring(request: HttpRequest, instance_id: str, listener_id: str) -> HttpResponse:
    """The full page, or for htmx (the range switch and the poll) only the monitoring block."""
    listener = _listener(instance_id, listener_id)
    range_key = request.GET.get("range", "")
    if range_key not in graphs.RANGES:
        range_key = graphs.DEFAULT_RANGE
    http = listener.is_http or listener.protocol == "quic"
    data = graphs.traffic(listener.id, range_key, http=http)
    context = {
        "listener": listener,
        "instance": listener.instance,
        "traffic": data,
        "ranges": graphs.RANGES.values(),
        "charts": [_chart(chart, data) for chart in data.charts],
        "columns": _columns(data),
        "rows": _rows(data),
        "updated": timezone.now(),
        "title": listener.name,
        "breadcrumbs": _crumbs(listener.instance),
    }
    if request.htmx:
        return render(request, "listeners/_monitoring.html", context)
    return render(request, "listeners/listener_monitoring.html", context)


def _chart(chart: graphs.Chart, data: graphs.Traffic) -> dict[str, Any]:
    drawn = not chart.empty and data.samples > 0
    return {
        "chart": chart,
        "svg": svg_charts.line_chart(chart, data.times, chart_id=f"chart-{chart.key}")
        if drawn
        else None,
        "legend": [
            (
                svg_charts.swatch(index),
                series.name,
                svg_charts.format_value(series.latest(), chart.unit),
            )
            for index, series in enumerate(chart.series)
        ],
    }


def _columns(data: graphs.Traffic) -> list[tuple[str, graphs.Chart, graphs.Series]]:
    """The table's columns: every series of every chart that has data, named in full."""
    return [
        (f"{chart.title}: {series.name}", chart, series)
        for chart in data.charts
        if not chart.empty
        for series in chart.series
    ]


def _rows(data: graphs.Traffic) -> list[tuple[Any, list[str]]]:
    """Newest first; a moment with no value in any column is left out."""
    columns = _columns(data)
    rows = []
    for index in range(len(data.times) - 1, -1, -1):
        values = [series.values[index] for _, _, series in columns]
        if all(value is None for value in values):
            continue
        cells = [
            svg_charts.format_value(value, chart.unit)
            for value, (_, chart, _) in zip(values, columns, strict=True)
        ]
        rows.append((data.times[index], cells))
    return rows
