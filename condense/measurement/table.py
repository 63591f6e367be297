"""Readable before/after tables of measurements (rich), with ratios against a named baseline."""
from __future__ import annotations

from rich.table import Table

from condense.measurement.api import Measurement


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_ms(s: float | None) -> str:
    return "n/a" if s is None else f"{s * 1e3:.2f} ms"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "n/a"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suf}"
    return str(n)


def _roof(d: dict) -> str:
    """'41% of roof (5.2 MB read per step / 12.3 GB/s)': the share of the memory roof a decode reached, or '-' if unknown."""
    if "roofline" not in d:
        return "n/a"
    cached = " (weights fit in cache)" if d["roofline"] > 1 else ""
    return (f"{d['roofline']:.0%} of roof{cached} ({fmt_bytes(int(d['weight_bytes']))} read per step / "
            f"{d['bandwidth_bps'] / 1e9:.1f} GB/s)")


def comparison_table(rows: list[Measurement], *, baseline: int = 0, title: str | None = None) -> Table:
    """A table with one column per measurement; speedups and size ratios are relative to `rows[baseline]`."""
    base = rows[baseline]
    t = Table(title=title or f"{base.task}: measured on this machine (baseline: {base.label})")
    t.add_column("metric", style="bold")
    for m in rows:
        t.add_column(m.label, justify="right")

    def ratio(b: float | None, x: float | None) -> str:
        return "" if not b or not x else f" ({b / x:.2f}x)"

    t.add_row("parameters", *[f"{fmt_count(m.params_total)} ({m.params_nonzero / max(m.params_total, 1):.0%} nz)"
                              for m in rows])
    t.add_row("size on disk", *[fmt_bytes(m.size_bytes) + ratio(base.size_bytes, m.size_bytes) for m in rows])
    t.add_row("MACs / sample", *[fmt_count(m.macs_per_sample) for m in rows])
    for bs in base.latency:
        t.add_row(f"latency p50 @ batch {bs}", *[fmt_ms(m.p50(int(bs))) + ratio(base.p50(int(bs)), m.p50(int(bs)))
                                                 for m in rows])
        t.add_row(f"latency p95 @ batch {bs}", *[fmt_ms(m.latency.get(bs, {}).get("p95_s")) for m in rows])
        t.add_row(f"throughput @ batch {bs}", *[f"{m.throughput.get(bs, 0):.1f}/s" for m in rows])
        if any(m.memory.get(bs, {}).get("peak_bytes") for m in rows):
            t.add_row(f"peak memory @ batch {bs}", *[fmt_bytes(m.memory.get(bs, {}).get("peak_bytes")) for m in rows])
    for bs in base.tokens_per_s:
        t.add_row(f"decode tokens/s @ batch {bs}", *[f"{m.tokens_per_s.get(bs, 0):.1f}"
                                                     + ratio(m.tokens_per_s.get(bs), base.tokens_per_s.get(bs))
                                                     for m in rows])
    for bs in base.decode:
        t.add_row(f"time to first token @ batch {bs}", *[fmt_ms(m.decode.get(bs, {}).get("ttft_s")) for m in rows])
        t.add_row(f"decode vs memory roof @ batch {bs}", *[_roof(m.decode.get(bs, {})) for m in rows])
    for k in base.quality:
        t.add_row(k + (" *" if k == base.primary_metric else ""), *[f"{m.quality.get(k, float('nan')):.4f}"
                                                                     for m in rows])
    threads = base.machine.get("torch_threads")
    where = f"{base.machine['gpu']} ({base.machine.get('device', 'cuda')})" if base.machine.get("gpu") else \
        f"{threads} torch threads; {base.machine.get('cpu', '')}"
    t.caption = f"medians; {where}; * primary metric"
    return t
