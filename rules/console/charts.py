"""Server-side SVG charts. Pure: data in, markup out (every label escaped).

The console draws its few charts itself instead of shipping a JavaScript
chart library: a time axis, lines, horizontal threshold lines and shaded
periods are all it needs, the page stays usable without scripts, and
nothing has to be fetched or vendored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    css: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class HLine:
    value: float
    label: str
    css: str


def _nice_max(v: float) -> float:
    if v <= 0 or not math.isfinite(v):
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return 10 * mag


def _time_ticks(start: float, end: float, n: int = 6) -> list[float]:
    span = max(1.0, end - start)
    steps = (60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
    step = next((s for s in steps if span / s <= n), 86400 * math.ceil(span / (n * 86400)))
    first = math.ceil(start / step) * step
    return _frange(first, end, step)


def _frange(a: float, b: float, step: float) -> list[float]:
    out: list[float] = []
    t = a
    while t <= b and len(out) < 50:
        out.append(t)
        t += step
    return out


def _fmt_time(t: float, span: float) -> str:
    return time.strftime("%H:%M" if span <= 86400 else "%m-%d %H:%M", time.localtime(t))


def line_chart(
    lines: Sequence[Line],
    start: float,
    end: float,
    hlines: Sequence[HLine] = (),
    bands: Sequence[tuple[float, float]] = (),
    width: int = 900,
    height: int = 260,
    title: str = "",
) -> Markup:
    left, right, top, bottom = 48, 12, 22, 26
    w, h = width - left - right, height - top - bottom
    span = max(1.0, end - start)
    ymax_data = max([v for ln in lines for _, v in ln.points] + [hl.value for hl in hlines] + [1.0])
    ymax = _nice_max(ymax_data * 1.05)

    def x(t: float) -> float:
        return left + (min(max(t, start), end) - start) / span * w

    def y(v: float) -> float:
        return top + h - max(0.0, min(v, ymax)) / ymax * h

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    if title:
        out.append(f'<text class="ctitle" x="{left}" y="14">{escape(title)}</text>')
    for a, b in bands:
        if b <= start or a >= end:
            continue
        out.append(
            f'<rect class="spray" x="{x(a):.1f}" y="{top}" width="{max(1.0, x(b) - x(a)):.1f}" '
            f'height="{h}"><title>spraying</title></rect>'
        )
    for i in range(5):
        v = ymax * i / 4
        out.append(
            f'<line class="grid" x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
            f'<text class="ylab" x="{left - 4}" y="{y(v) + 4:.1f}">{v:g}</text>'
        )
    for t in _time_ticks(start, end):
        out.append(
            f'<text class="xlab" x="{x(t):.1f}" y="{height - 8}">{_fmt_time(t, span)}</text>'
        )
    for hl in hlines:
        out.append(
            f'<line class="thr {escape(hl.css)}" x1="{left}" x2="{left + w}" '
            f'y1="{y(hl.value):.1f}" y2="{y(hl.value):.1f}"/>'
            f'<text class="thrlab {escape(hl.css)}" x="{left + w - 4}" '
            f'y="{y(hl.value) - 3:.1f}">{escape(hl.label)} {hl.value:g}</text>'
        )
    lx = left + 8
    for ln in lines:
        pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in ln.points if start <= t <= end)
        if pts:
            out.append(f'<polyline class="ln {escape(ln.css)}" points="{pts}"/>')
        out.append(
            f'<text class="leg {escape(ln.css)}" x="{lx}" y="{top + 12}">{escape(ln.label)}</text>'
        )
        lx += 12 + 8 * len(ln.label)
    out.append(
        f'<rect class="frame" x="{left}" y="{top}" width="{w}" height="{h}" fill="none"/></svg>'
    )
    return Markup("".join(out))
