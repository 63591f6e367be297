"""Tiny SVG charts (grouped bars, scatter) so report.html is self-contained: no scripts, no CDN, no images."""
from __future__ import annotations

from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")


def bar_chart(title: str, groups: list[str], series: dict[str, list[float | None]], *, unit: str = "",
              width: int = 640, height: int = 300) -> str:
    """Grouped bars: one group per entry of `groups`, one bar per series (label -> values per group)."""
    pad_l, pad_r, pad_t, pad_b = 60, 20, 40, 60
    vals = [v for vs in series.values() for v in vs if v is not None]
    vmax = max(vals) if vals else 1.0
    vmax = vmax * 1.15 or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    n_series = max(len(series), 1)
    gw = plot_w / max(len(groups), 1)
    bw = gw * 0.8 / n_series
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#333"/>']
    for k in range(5):
        v = vmax * k / 4
        y = pad_t + plot_h - plot_h * k / 4
        parts.append(f'<text x="{pad_l - 6}" y="{y + 4}" text-anchor="end" font-size="11">{v:.3g}</text>'
                     f'<line x1="{pad_l}" y1="{y}" x2="{pad_l + plot_w}" y2="{y}" stroke="#ddd"/>')
    for gi, g in enumerate(groups):
        gx = pad_l + gi * gw + gw * 0.1
        parts.append(f'<text x="{pad_l + gi * gw + gw / 2}" y="{pad_t + plot_h + 18}" text-anchor="middle" '
                     f'font-size="12">{escape(g)}</text>')
        for si, (label, vs) in enumerate(series.items()):
            v = vs[gi]
            if v is None:
                continue
            h = plot_h * v / vmax
            x = gx + si * bw
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bw * 0.95:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(label)}: '
                         f'{v:.4g}{escape(unit)}</title></rect>'
                         f'<text x="{x + bw / 2:.1f}" y="{pad_t + plot_h - h - 4:.1f}" text-anchor="middle" '
                         f'font-size="10">{v:.3g}</text>')
    for si, label in enumerate(series):
        lx = pad_l + si * 150
        parts.append(f'<rect x="{lx}" y="{height - 22}" width="12" height="12" fill="{PALETTE[si % len(PALETTE)]}"/>'
                     f'<text x="{lx + 16}" y="{height - 12}" font-size="12">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_chart(title: str, points: list[dict], *, x_label: str, y_label: str, width: int = 640,
                  height: int = 360) -> str:
    """Points {"x", "y", "label", "size" (optional, 0..1)}; a Pareto plot when x is latency and y is quality."""
    pad_l, pad_r, pad_t, pad_b = 70, 20, 40, 50
    xs = [p["x"] for p in points] or [0.0, 1.0]
    ys = [p["y"] for p in points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 1, x1 + 1) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 1, y1 + 1) if y0 == y1 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + pw * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return pad_t + ph - ph * (y - y0) / (y1 - y0)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
             f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>',
             f'<text x="{pad_l + pw / 2}" y="{height - 10}" text-anchor="middle" font-size="12">{escape(x_label)}</text>',
             f'<text x="16" y="{pad_t + ph / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 16 {pad_t + ph / 2})">{escape(y_label)}</text>']
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        yv = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{sx(xv)}" y="{pad_t + ph + 16}" text-anchor="middle" font-size="10">{xv:.3g}</text>'
                     f'<text x="{pad_l - 6}" y="{sy(yv) + 4}" text-anchor="end" font-size="10">{yv:.4g}</text>')
    for i, p in enumerate(points):
        r = 4 + 8 * float(p.get("size", 0.5))
        cx, cy = sx(p["x"]), sy(p["y"])
        right_half = cx > pad_l + pw * 0.6  # label on the inner side so it is never clipped by the edge
        tx, anchor = (cx - r - 2, "end") if right_half else (cx + r + 2, "start")
        parts.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" '
                     f'fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.8"><title>{escape(str(p.get("label", "")))}'
                     f'</title></circle><text x="{tx:.1f}" y="{cy + 4:.1f}" text-anchor="{anchor}" '
                     f'font-size="11">{escape(str(p.get("label", "")))}</text>')
    parts.append("</svg>")
    return "".join(parts)
