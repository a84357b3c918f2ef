"""Tiny inline-SVG charts: no JavaScript, no CDN (the dashboard must work offline and in any browser).

Every drawn value carries ``data-figure`` / ``data-value`` attributes so that a test (or a curious
analyst) can read the exact number behind a bar, a point or a slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#c4a25b", "#7f7f7f", "#b5123e", "#2a9db5", "#6a8f10", "#8e5ea2", "#e07b39", "#3b6ea8")
WON, LOST, LINE, ACCENT = "#7a9a01", "#c2185b", "#6a8f10", "#2a6db5"


@dataclass(frozen=True)
class Item:
    label: str
    value: float
    figure: str
    color: str = LINE


def swatch(color: str, size: int = 10) -> str:
    """A legend's colour square, drawn with SVG attributes (no inline style: strict CSP pages show it too)."""
    return (f'<svg class="sw" width="{size}" height="{size}" aria-hidden="true">'
            f'<rect width="{size}" height="{size}" rx="2" fill="{color}"/></svg>')


def compact(value: float) -> str:
    """186_000_000 -> '186M', 1_270_000_000 -> '1.27bn', 12_400 -> '12K'."""
    a = abs(value)
    if a >= 1e9:
        return f"{value / 1e9:.2f}bn"
    if a >= 1e6:
        return f"{value / 1e6:.0f}M" if a >= 1e7 else f"{value / 1e6:.1f}M"
    if a >= 1e3:
        return f"{value / 1e3:.0f}K"
    return f"{value:.0f}"


def _attr(figure: str, value: float) -> str:
    return f'data-figure="{escape(figure)}" data-value="{value!r}"'


def _svg(width: int, height: int, label: str, body: str) -> str:
    # The page's CSS keeps each chart at least as wide as its viewBox (scrolling if need be), so that
    # its text is never drawn smaller than the CSS font size, even on a phone.
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'class="chart w{width}" aria-label="{escape(label)}"><title>{escape(label)}</title>{body}</svg>')


def bars(items: Sequence[Item], label: str, width: int = 260, height: int = 200,
         fmt: Callable[[float], str] = compact) -> str:
    top, bottom = 22, 24
    peak = max((i.value for i in items), default=0.0) or 1.0
    slot = width / max(len(items), 1)
    bar_w = slot * 0.55
    parts = []
    for n, item in enumerate(items):
        h = (height - top - bottom) * item.value / peak
        x = n * slot + (slot - bar_w) / 2
        y = height - bottom - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{item.color}" '
                     f'{_attr(item.figure, item.value)}>'
                     f'<title>{escape(item.label)}: {escape(fmt(item.value))}</title></rect>'
                     f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle" class="v">'
                     f'{escape(fmt(item.value))}</text>'
                     f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(item.label)}</text>')
    return _svg(width, height, label, "".join(parts))


def lines(series: Sequence[Sequence[Item]], label: str, x_labels: Sequence[str], *, width: int = 640,
          height: int = 220, ticks: Sequence[int] | None = None, y_min: float | None = None,
          y_max: float | None = None, fmt: Callable[[float], str] = compact) -> str:
    """One or more series of points on one scale, a dot per point (NaN values are left out).

    ``ticks`` are the indices of ``x_labels`` written under the axis (default: all); the y range is the
    data's unless given; ``fmt`` writes the axis labels and the dots' tooltips.
    """
    left, right, top, bottom = 76, 14, 16, 30
    values = [i.value for items in series for i in items if not math.isnan(i.value)]
    lo = (min(values) if values else 0.0) if y_min is None else y_min
    hi = (max(values) if values else 1.0) if y_max is None else y_max
    hi = hi if hi > lo else lo + 1.0
    step = (width - left - right) / max(len(x_labels) - 1, 1)
    first = left if len(x_labels) > 1 else (left + width - right) / 2  # one point: in the middle
    radius = 2.5 if len(x_labels) > 40 else 3.5

    def xy(n: int, v: float) -> tuple[float, float]:
        return first + n * step, top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    parts = []
    for g in range(5):
        v = lo + (hi - lo) * g / 4
        y = xy(0, v)[1]
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(v))}</text>')
    for items in series:
        points = [(xy(n, i.value), i) for n, i in enumerate(items) if not math.isnan(i.value)]
        if not points:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for (x, y), _ in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{points[0][1].color}" stroke-width="2"/>')
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{i.color}" {_attr(i.figure, i.value)}>'
                     f"<title>{escape(i.label)}: {escape(fmt(i.value))}</title></circle>" for (x, y), i in points)
    for n in range(len(x_labels)) if ticks is None else ticks:
        if 0 <= n < len(x_labels):
            parts.append(f'<text x="{xy(n, lo)[0]:.1f}" y="{height - 8}" text-anchor="middle">'
                         f"{escape(x_labels[n])}</text>")
    return _svg(width, height, label, "".join(parts))


def donut(items: Sequence[Item], label: str, size: int = 200, fmt: Callable[[float], str] = compact,
          share_fmt: Callable[[float], str] = "{:.1%}".format) -> str:
    total = sum(max(i.value, 0.0) for i in items)
    r, cx, cy, width = size * 0.36, size / 2, size / 2, size * 0.16
    circumference = 2 * math.pi * r
    parts = [f'<circle cx="{cx}" cy="{cy}" r="{r:.1f}" fill="none" stroke="#eee" stroke-width="{width:.1f}"/>']
    offset = 0.0
    for item in items:
        share = max(item.value, 0.0) / total if total else 0.0
        length = share * circumference
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="{r:.1f}" fill="none" stroke="{item.color}" '
                     f'stroke-width="{width:.1f}" stroke-dasharray="{length:.2f} {circumference - length:.2f}" '
                     f'stroke-dashoffset="{-offset:.2f}" transform="rotate(-90 {cx} {cy})" '
                     f'{_attr(item.figure, item.value)}><title>{escape(item.label)}: {escape(fmt(item.value))} '
                     f'({escape(share_fmt(share))})</title></circle>')
        offset += length
    parts.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" class="v">{escape(fmt(total))}</text>')
    return _svg(size, size, label, "".join(parts))
