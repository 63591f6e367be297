"""Shared by benchmarks: machine header and replacing one named section of BENCHMARKS.md atomically."""
from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# CONDENSE_BENCHMARKS=/tmp/smoke.md: a smoke run writes its tables there instead of into BENCHMARKS.md
BENCHMARKS = Path(os.environ.get("CONDENSE_BENCHMARKS") or ROOT / "BENCHMARKS.md")
# the README's measured tables (bench_models.py); a smoke run (CONDENSE_BENCHMARKS set) writes beside its file
README = Path(os.environ.get("CONDENSE_README") or (BENCHMARKS.with_name(BENCHMARKS.stem + "-README.md")
                                                     if os.environ.get("CONDENSE_BENCHMARKS") else ROOT / "README.md"))
sys.path.insert(0, str(ROOT))

from condense.core.atomic import atomic_write_text  # noqa: E402
from condense.measurement.machine import machine_info  # noqa: E402


def header(command: str, threads: int, notes: str = "") -> str:
    m = machine_info("cpu")
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    date = _dt.date.today().isoformat()
    return (f"Command: `{command}`  \nRun: {date}; {m['cpu']} ({m['cpu_count']} vCPUs), {threads} torch threads; "
            f"{versions}.  \n{notes}")


def write_section(name: str, body: str, path: Path | None = None) -> None:
    """Replace the `<!-- bench:NAME -->` ... `<!-- /bench:NAME -->` section of `path` (default BENCHMARKS.md;
    appended if absent)."""
    path = BENCHMARKS if path is None else path
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery table below was written by " \
        "the command above it, measuring side by side in one process. Medians; ratios against the named baseline.\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)


def interleaved_p50(fns: dict, *, rounds: int = 15, warmup: int = 2) -> dict:
    """Median seconds per call of each fn, one call per round-robin round (A B C A B C ...) after `warmup`
    untimed calls each, so that background load drifting during the run lands on every variant alike.
    (`condense.measurement.timing.interleaved_p50` with one timed call per round.)"""
    from condense.measurement.timing import interleaved_p50 as rounds_p50

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    return rounds_p50(fns, rounds=rounds, warmup=0, repeats=1)


def interleaved_rounds_p50(fns: dict, *, rounds: int, **time_call_kw) -> dict:
    """`condense.measurement.timing.interleaved_p50` under inference_mode."""
    import torch

    from condense.measurement.timing import interleaved_p50

    with torch.inference_mode():
        return interleaved_p50(fns, rounds=rounds, **time_call_kw)


def add_decode_args(ap, *, rounds: int) -> None:
    """The decode-timing flags the tinygpt benches share (and --no-write)."""
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per timed generation")
    ap.add_argument("--repeats", type=int, default=5, help="timed generations per variant per round")
    ap.add_argument("--rounds", type=int, default=rounds, help="round-robin timing rounds over all variants")
    ap.add_argument("--no-write", action="store_true")


def decode_tokens_per_s(task, models: list, args, *, min_time_s: float) -> list[float]:
    """Decode tokens/s at batch 1 of each model (args from `add_decode_args`), timed in interleaved rounds."""
    p50 = interleaved_rounds_p50({i: (lambda m=m: task.generate(m, 1, args.tokens)) for i, m in enumerate(models)},
                                 rounds=args.rounds, warmup=1, repeats=args.repeats, min_time_s=min_time_s)
    return [args.tokens / p50[i] for i in range(len(models))]


def minilm_speed_table(ms: dict, p50: dict, baseline: str, *, cosine: bool = False) -> list[str]:
    """Markdown rows: each variant's p50 at batch 32 and 1, speedups vs `baseline`, MRR@10 (and vs baseline) on the
    docstring pairs and, where measured, on the second source (manual pages, never trained on), mean cosine to fp32
    if `cosine`, size on disk. `ms`: name -> Measurement; `p50`: name -> {batch size: seconds}."""
    base = ms[baseline].quality
    off = "mrr@10_offsource" if "mrr@10_offsource" in base else None
    lines = ["| variant | p50 @ batch 32 | p50 @ batch 1 | speedup @ 32 | speedup @ 1 | MRR@10 | MRR vs fp32 | "
             + ("MRR@10 man pages (second source) | vs fp32 | " if off else "")
             + ("mean cosine to fp32 | " if cosine else "") + "size on disk |",
             "|---|---|---|---|---|---|---|" + ("---|---|" if off else "") + ("---|" if cosine else "") + "---|"]
    for name, m in ms.items():
        lines.append(f"| {name} | {p50[name][32] * 1e3:.1f} ms | {p50[name][1] * 1e3:.2f} ms | "
                     f"{p50[baseline][32] / p50[name][32]:.2f}x | {p50[baseline][1] / p50[name][1]:.2f}x | "
                     f"{m.quality['mrr@10']:.4f} | {m.quality['mrr@10'] / base['mrr@10']:.1%} | "
                     + (f"{m.quality[off]:.4f} | {m.quality[off] / base[off]:.1%} | " if off else "")
                     + (f"{m.quality['cosine_to_fp32']:.4f} | " if cosine else "")
                     + f"{m.size_bytes / 2**20:.1f} MB |")
    return lines


def load_average() -> str:
    import os

    return "load average %.2f / %.2f / %.2f" % os.getloadavg()


def tinygpt_decode_models(preset: str) -> tuple:
    """(the tinygpt task at `preset`, {fp32, RTN 4-bit group 32, RTN 8-bit per channel}): what the decode benches
    compare, every quantized model on kernel "auto"."""
    import copy

    import condense
    from condense.quantize.weight_only import WeightOnlyConfig

    task = condense.get_task("tinygpt", preset=preset)
    fp32 = task.build_model().eval()
    q = lambda cfg: condense.quantize_(copy.deepcopy(fp32), cfg)  # noqa: E731
    return task, {"fp32": fp32, "4-bit (group 32)": q(WeightOnlyConfig(bits=4)),
                  "8-bit (per channel)": q(WeightOnlyConfig(bits=8, group_size=-1))}


def publish(section: str, title: str, script: str, argv: list[str] | None, threads: int, notes: str,
            lines: list[str], *, write: bool = True) -> str:
    """Print a bench's section (title, command line with `argv` or sys.argv, machine header, `lines`) and, if
    `write`, replace `section` in BENCHMARKS.md with it; returns the body."""
    cmd = f"python bench/{script}" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    body = "\n".join([f"## {title}", "", header(cmd, threads, notes), "", *lines])
    print(body)
    if write:
        write_section(section, body)
    return body
