"""Pareto frontiers and their plot, shared by run reports and the search.

A point is a mapping of objective name -> value (plus anything else: a label, a size). `pareto_front` keeps the
points no other point beats on every objective; `pareto_svg` draws quality against latency with marker size
standing for size on disk and the frontier highlighted (larger outline, joined by a line).
"""
from __future__ import annotations

import math
from html import escape
from typing import Any, Mapping, Sequence

from condense.report.svg import PALETTE

_DIRECTIONS = ("min", "max")


def _check_objectives(objectives: Mapping[str, str]) -> dict[str, str]:
    if not objectives:
        raise ValueError("objectives must name at least one key, e.g. {'latency_ms': 'min', 'mrr': 'max'}")
    out = {}
    for k, d in dict(objectives).items():
        d = str(d).lower()
        if d not in _DIRECTIONS:
            raise ValueError(f"objective {k!r} direction must be 'min' or 'max', got {d!r}")
        out[k] = d
    return out


def _usable(p: Mapping[str, Any], keys: Sequence[str]) -> bool:
    return all(isinstance(p.get(k), (int, float)) and not math.isnan(float(p[k])) for k in keys)


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objectives: Mapping[str, str]) -> bool:
    """True when `a` is at least as good as `b` on every objective and strictly better on one."""
    better = False
    for k, d in objectives.items():
        x, y = (float(a[k]), float(b[k])) if d == "max" else (-float(a[k]), -float(b[k]))
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Args:
        points: mappings holding a number for every objective key (points missing one, or NaN, are skipped).
        objectives: key -> "min" or "max", e.g. {"latency_ms": "min", "size_mb": "min", "mrr": "max"}.

    Exact duplicates are all kept (neither dominates the other).

    Example:
        >>> pts = [{"ms": 10, "acc": 0.9}, {"ms": 5, "acc": 0.8}, {"ms": 12, "acc": 0.85}]
        >>> pareto_front(pts, {"ms": "min", "acc": "max"})
        [0, 1]
    """
    obj = _check_objectives(objectives)
    keys = list(obj)
    idx = [i for i, p in enumerate(points) if _usable(p, keys)]
    return [i for i in idx if not any(dominates(points[j], points[i], obj) for j in idx if j != i)]


def _ticks(lo: float, hi: float) -> tuple[float, float]:
    if lo == hi:
        return lo - 1, hi + 1
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def pareto_svg(points: Sequence[Mapping[str, Any]], *, x: str, y: str, size: str | None = None,
               label: str = "label", x_dir: str = "min", y_dir: str = "max", title: str = "",
               x_label: str | None = None, y_label: str | None = None, front: Sequence[int] | None = None,
               width: int = 640, height: int = 380) -> str:
    """An inline SVG scatter of `points` (y against x) with the 2-D Pareto frontier highlighted.

    Args:
        x, y: keys of the plotted numbers (e.g. "latency_ms", "mrr"); `x_dir`/`y_dir` say which way is better.
        size: key of a number scaled to the marker radius (e.g. "size_bytes"); None draws equal markers.
        front: indices to highlight; default: `pareto_front(points, {x: x_dir, y: y_dir})`.

    Points are `<circle class="point">`; frontier points also carry class "front", and the frontier line is a
    `<polyline class="frontier">`, so a test or a browser can find them.

    Example:
        >>> svg = pareto_svg([{"ms": 10, "acc": 0.9, "label": "fp32"}, {"ms": 4, "acc": 0.88, "label": "int8"}],
        ...                  x="ms", y="acc", title="accuracy vs latency")
        >>> svg.count('class="point front"')
        2
    """
    keep = [i for i, p in enumerate(points) if _usable(p, [x, y])]
    if front is None:
        front = pareto_front(points, {x: x_dir, y: y_dir})
    front_set = set(front)
    pad_l, pad_r, pad_t, pad_b = 70, 20, 40, 66
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    xs = [float(points[i][x]) for i in keep] or [0.0, 1.0]
    ys = [float(points[i][y]) for i in keep] or [0.0, 1.0]
    x0, x1 = _ticks(min(xs), max(xs))
    y0, y1 = _ticks(min(ys), max(ys))
    svals = [float(points[i][size]) for i in keep if size and _usable(points[i], [size])]
    smax = max(svals) if svals and max(svals) > 0 else 1.0

    def sx(v: float) -> float:
        return pad_l + pw * (v - x0) / (x1 - x0)

    def sy(v: float) -> float:
        return pad_t + ph - ph * (v - y0) / (y1 - y0)

    xl, yl = x_label or x, y_label or y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart pareto" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title or yl + " vs " + xl)}">',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-weight="bold" font-size="14">{escape(title)}'
             '</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>',
             f'<text x="{pad_l + pw / 2}" y="{pad_t + ph + 34}" text-anchor="middle" font-size="12">'
             f'{escape(xl)} ({"lower" if x_dir == "min" else "higher"} is better)</text>',
             f'<text x="16" y="{pad_t + ph / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 16 {pad_t + ph / 2})">{escape(yl)} '
             f'({"lower" if y_dir == "min" else "higher"} is better)</text>']
    for k in range(5):
        xv, yv = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{pad_t + ph + 16}" text-anchor="middle" font-size="10">{xv:.3g}'
                     f'</text><text x="{pad_l - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="10">{yv:.4g}'
                     f'</text><line x1="{pad_l}" y1="{sy(yv):.1f}" x2="{pad_l + pw}" y2="{sy(yv):.1f}" '
                     f'stroke="#eee"/>')
    line = sorted((float(points[i][x]), float(points[i][y])) for i in front if i in keep)
    if len(line) > 1:
        coords = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in line)
        parts.append(f'<polyline class="frontier" points="{coords}" fill="none" stroke="#e15759" '
                     f'stroke-width="2" stroke-dasharray="5,3"/>')
    for n, i in enumerate(keep):
        p = points[i]
        r = 4 + 10 * (float(p[size]) / smax if size and _usable(p, [size]) else 0.4)
        cx, cy = sx(float(p[x])), sy(float(p[y]))
        on = i in front_set
        text = escape(str(p.get(label, i)))
        tip = f"{text}: {escape(xl)}={float(p[x]):.4g}, {escape(yl)}={float(p[y]):.4g}"
        if size and _usable(p, [size]):
            tip += f", {escape(size)}={float(p[size]):.4g}"
        stroke = ' stroke="#e15759" stroke-width="3"' if on else ' stroke="#fff" stroke-width="1"'
        tx, anchor = (cx - r - 3, "end") if cx > pad_l + pw * 0.6 else (cx + r + 3, "start")
        parts.append(f'<circle class="point{" front" if on else ""}" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
                     f'fill="{PALETTE[n % len(PALETTE)]}" fill-opacity="0.75"{stroke}><title>{tip}</title></circle>'
                     f'<text x="{tx:.1f}" y="{cy + 4:.1f}" text-anchor="{anchor}" font-size="11">{text}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="11" fill="#555">red outline and dashed line: '
                 f'Pareto frontier{"; marker area grows with " + escape(size) if size else ""}</text></svg>')
    return "".join(parts)
