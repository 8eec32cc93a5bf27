"""Line charts as SVG, drawn on the server: no JavaScript library, nothing from a CDN.

Readable without colour: every series has its own dash pattern and marker shape as well as its
colour, its name is written at the end of its line and in the legend, and the chart carries a
text title and description for screen readers (the page also gives the numbers as a table).
Only presentation attributes are used (the console's Content-Security-Policy forbids inline
styles), and every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from console.graphs import Chart, Series

# (colour, dash pattern, marker): colours from the console's palette, each distinct without it.
STYLES = (
    ("#0b6ee1", "", "circle"),
    ("#d93026", "7 3", "square"),
    ("#1a7f43", "2 3", "triangle"),
    ("#b35f00", "9 3 2 3", "diamond"),
    ("#6b3fa0", "1 4", "cross"),
)
WIDTH, HEIGHT = 480, 200
LEFT, RIGHT, TOP, BOTTOM = 58, 124, 12, 28
TEXT = "#4a5561"
GRID = "#dde2e8"
# Roughly how many markers one series gets along its line.
MARKERS = 8
LABEL_GAP = 14


def format_value(value: float | None, unit: str) -> str:
    """A value as people read it: 12.5/s, 35 ms, 1.2 Mbit/s, 3."""
    if value is None:
        return "—"
    if unit == "rate":
        return f"{_number(value)}/s"
    if unit == "seconds":
        if value < 1:
            return f"{_number(value * 1000)} ms"
        return f"{_number(value)} s"
    if unit == "bits":
        for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if value >= size:
                return f"{_number(value / size)} {prefix}bit/s"
        return f"{_number(value)} bit/s"
    return _number(value)


def _number(value: float) -> str:
    # Rates are sums of fractions: 8.9999999 is 9.
    value = round(value, 6)
    if value == 0:
        return "0"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value`` (1 for nothing)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= value * (1 - 1e-9):
            return factor * power
    return 10 * power


def _clock(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


def _marker(shape: str, x: float, y: float, colour: str, title: str = "") -> str:
    tip = format_html("<title>{}</title>", title) if title else ""
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{colour}">{tip}</circle>'
    if shape == "square":
        return (
            f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}">'
            f"{tip}</rect>"
        )
    if shape == "triangle":
        points = f"{x:.1f},{y - 4:.1f} {x - 4:.1f},{y + 3:.1f} {x + 4:.1f},{y + 3:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'
    if shape == "diamond":
        points = f"{x:.1f},{y - 4:.1f} {x + 4:.1f},{y:.1f} {x:.1f},{y + 4:.1f} {x - 4:.1f},{y:.1f}"
        return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'
    return (
        f'<path d="M{x - 3.5:.1f} {y - 3.5:.1f}L{x + 3.5:.1f} {y + 3.5:.1f}'
        f'M{x - 3.5:.1f} {y + 3.5:.1f}L{x + 3.5:.1f} {y - 3.5:.1f}" stroke="{colour}" '
        f'stroke-width="2" fill="none">{tip}</path>'
    )


def swatch(index: int) -> SafeString:
    """A legend sample of series ``index``: its line, dash pattern and marker."""
    colour, dash, shape = STYLES[index % len(STYLES)]
    dash_attribute = f' stroke-dasharray="{dash}"' if dash else ""
    # Built from constants only.
    return mark_safe(
        '<svg class="swatch" width="36" height="12" viewBox="0 0 36 12" aria-hidden="true">'
        f'<line x1="1" y1="6" x2="35" y2="6" stroke="{colour}" stroke-width="2"{dash_attribute}/>'
        f"{_marker(shape, 18, 6, colour)}</svg>"
    )


def line_chart(chart: Chart, times: Sequence[datetime], *, chart_id: str) -> SafeString:
    """One chart: a line per series over ``times``, a gap where a value is None."""
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    points = len(times)
    values = [value for series in chart.series for value in series.values if value is not None]
    top = nice_ceiling(max(values, default=0.0))
    if chart.unit == "count":
        # Whole things: the value axis counts in steps of at least one.
        top = max(top, 4.0)

    def x_of(index: int) -> float:
        return LEFT + (plot_width * index / (points - 1) if points > 1 else plot_width / 2)

    def y_of(value: float) -> float:
        return TOP + plot_height * (1 - min(value, top) / top)

    latest = "; ".join(
        f"{series.name} {format_value(series.latest(), chart.unit)}" for series in chart.series
    )
    parts = [
        format_html(
            '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="{}-title {}-desc"'
            ' font-family="system-ui, sans-serif" font-size="12">'
            '<title id="{}-title">{}</title><desc id="{}-desc">{} to {}. Latest: {}.</desc>',
            WIDTH,
            HEIGHT,
            chart_id,
            chart_id,
            chart_id,
            chart.title,
            chart_id,
            _clock(times[0]) if times else "",
            _clock(times[-1]) if times else "",
            latest,
        )
    ]
    # Grid and axes: four steps up the value axis, about six time labels along the bottom.
    for step in range(5):
        value = top * step / 4
        y = y_of(value)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_width}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
        )
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="end" fill="{}">{}</text>',
                LEFT - 6,
                f"{y + 4:.1f}",
                TEXT,
                format_value(value, chart.unit),
            )
        )
    if points:
        # About six time labels, the last one at the newest point.
        every = max(1, (points - 1) // 6)
        for index in range(points - 1, -1, -every):
            parts.append(
                format_html(
                    '<text x="{}" y="{}" text-anchor="middle" fill="{}">{}</text>',
                    f"{x_of(index):.1f}",
                    HEIGHT - 8,
                    TEXT,
                    _clock(times[index]),
                )
            )
    labels: list[tuple[float, int, Series]] = []
    for number, series in enumerate(chart.series):
        parts.append(_line(series, number, unit=chart.unit, times=times, x_of=x_of, y_of=y_of))
        last = series.latest()
        if last is not None:
            labels.append((y_of(last), number, series))
    parts.extend(_end_labels(labels, chart.unit, LEFT + plot_width, TOP, TOP + plot_height))
    parts.append("</svg>")
    # Every text went through format_html; the rest is numbers and constants.
    return mark_safe("".join(str(part) for part in parts))


def _line(series: Series, number: int, *, unit: str, times, x_of, y_of) -> str:
    colour, dash, shape = STYLES[number % len(STYLES)]
    path, pen_down, alone = [], False, []
    values = series.values
    for index, value in enumerate(values):
        if value is None:
            pen_down = False
            continue
        command = "L" if pen_down else "M"
        path.append(f"{command}{x_of(index):.1f} {y_of(value):.1f}")
        isolated = (index == 0 or values[index - 1] is None) and (
            index == len(values) - 1 or values[index + 1] is None
        )
        if isolated:
            alone.append(index)
        pen_down = True
    out = []
    if path:
        dash_attribute = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<path d="{"".join(path)}" fill="none" stroke="{colour}" stroke-width="2"'
            f'{dash_attribute} stroke-linejoin="round"/>'
        )
    # Markers along the line (offset per series so they do not sit on each other), on points
    # that have no neighbour to draw a line to, and on the latest point.
    every = max(1, len(values) // MARKERS)
    offset = (number * every) // max(1, len(STYLES))
    marked = {index for index in range(offset, len(values), every)} | set(alone)
    known = [index for index, value in enumerate(values) if value is not None]
    if known:
        marked.add(known[-1])
    for index in sorted(marked):
        value = values[index] if index < len(values) else None
        if value is None:
            continue
        tip = f"{_clock(times[index])} {series.name}: {format_value(value, unit)}"
        out.append(_marker(shape, x_of(index), y_of(value), colour, tip))
    # Markers' titles went through format_html; the rest is numbers and constants.
    return format_html('<g aria-hidden="true">{}</g>', mark_safe("".join(out)))


def _end_labels(labels, unit: str, right: float, top: float, bottom: float) -> list[str]:
    """Series names at the right of the plot, at their latest value, pushed apart to stay
    readable."""
    labels.sort(key=lambda item: item[0])
    placed: list[float] = []
    for wanted, _, _ in labels:
        y = max(wanted, top + 4)
        if placed and y - placed[-1] < LABEL_GAP:
            y = placed[-1] + LABEL_GAP
        placed.append(y)
    overflow = placed[-1] - (bottom + 4) if placed else 0
    if overflow > 0:
        placed = [y - overflow for y in placed]
    out = []
    for (_, number, series), y in zip(labels, placed, strict=True):
        colour, _, shape = STYLES[number % len(STYLES)]
        out.append(_marker(shape, right + 8, y, colour))
        out.append(
            format_html(
                '<text x="{}" y="{}" fill="{}">{} {}</text>',
                f"{right + 15:.1f}",
                f"{y + 4:.1f}",
                TEXT,
                series.name,
                format_value(series.latest(), unit),
            )
        )
    return out
