"""Tiny SVG bar charts so report.html is self-contained: no scripts, no CDN, no images (scatter plots:
`report.pareto.pareto_svg`)."""
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
