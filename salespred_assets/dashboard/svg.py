"""Tiny inline-SVG charts: no JavaScript, no CDN (the dashboard must work offline and in any browser).

Every drawn value carries ``data-figure`` / ``data-value`` attributes so that a test (or a curious
analyst) can read the exact number behind a bar, a point or a slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-label="{escape(label)}"><title>{escape(label)}</title>{body}</svg>')


def bars(items: Sequence[Item], label: str, width: int = 260, height: int = 200) -> str:
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
                     f'{_attr(item.figure, item.value)}><title>{escape(item.label)}: {compact(item.value)}</title></rect>'
                     f'<text x="{x + bar_w / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle" class="v">'
                     f'{compact(item.value)}</text>'
                     f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(item.label)}</text>')
    return _svg(width, height, label, "".join(parts))


def line(items: Sequence[Item], label: str, width: int = 640, height: int = 220, ticks: Sequence[int] = (),
         y_min: float | None = None, y_max: float | None = None) -> str:
    """A polyline with a dot per point; ``ticks`` are the indices labelled on the x axis."""
    left, right, top, bottom = 52, 12, 14, 30
    if not items:
        return _svg(width, height, label, "")
    lo = min(i.value for i in items) if y_min is None else y_min
    hi = max(i.value for i in items) if y_max is None else y_max
    hi = hi if hi > lo else lo + 1.0
    step = (width - left - right) / max(len(items) - 1, 1)

    def xy(n: int, v: float) -> tuple[float, float]:
        return left + n * step, top + (height - top - bottom) * (1 - (v - lo) / (hi - lo))

    grid = []
    for g in range(5):
        v = lo + (hi - lo) * g / 4
        _, y = xy(0, v)
        grid.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                    f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{compact(v)}</text>')
    points = [xy(n, i.value) for n, i in enumerate(items)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    color = items[0].color
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.5 if len(items) > 40 else 3.5}" fill="{i.color}" '
                   f'{_attr(i.figure, i.value)}><title>{escape(i.label)}: {compact(i.value)}</title></circle>'
                   for (x, y), i in zip(points, items))
    labels = "".join(f'<text x="{xy(n, lo)[0]:.1f}" y="{height - 8}" text-anchor="middle">{escape(items[n].label)}</text>'
                     for n in ticks if 0 <= n < len(items))
    body = f'{"".join(grid)}<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>{dots}{labels}'
    return _svg(width, height, label, body)


def lines(series: Sequence[Sequence[Item]], label: str, x_labels: Sequence[str], width: int = 640,
          height: int = 220, y_min: float = 0.0, y_max: float = 1.0) -> str:
    """Several series on one scale (model quality: ROC AUC and accuracy per version)."""
    left, right, top, bottom = 52, 12, 14, 30
    step = (width - left - right) / max(len(x_labels) - 1, 1)
    first = left if len(x_labels) > 1 else (left + width - right) / 2  # one version: in the middle

    def xy(n: int, v: float) -> tuple[float, float]:
        return first + n * step, top + (height - top - bottom) * (1 - (v - y_min) / (y_max - y_min))

    parts = []
    for g in range(5):
        v = y_min + (y_max - y_min) * g / 4
        _, y = xy(0, v)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    for items in series:
        pts = [(n, i) for n, i in enumerate(items) if i.value is not None and not math.isnan(i.value)]
        if not pts:
            continue
        path = " ".join("{:.1f},{:.1f}".format(*xy(n, i.value)) for n, i in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{pts[0][1].color}" stroke-width="2"/>')
        for n, i in pts:
            x, y = xy(n, i.value)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{i.color}" {_attr(i.figure, i.value)}>'
                         f'<title>{escape(i.label)}: {i.value:.4f}</title></circle>')
    for n, text in enumerate(x_labels):
        x, _ = xy(n, y_min)
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="middle">{escape(text)}</text>')
    return _svg(width, height, label, "".join(parts))


def donut(items: Sequence[Item], label: str, size: int = 200) -> str:
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
                     f'{_attr(item.figure, item.value)}><title>{escape(item.label)}: {compact(item.value)} '
                     f'({share:.1%})</title></circle>')
        offset += length
    parts.append(f'<text x="{cx}" y="{cy + 5}" text-anchor="middle" class="v">{compact(total)}</text>')
    return _svg(size, size, label, "".join(parts))
