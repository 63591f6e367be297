"""Compatibility matrix: models condense did not write (condense.testing.zoo) x every technique and export.

Usage: .venv/bin/python bench/bench_models.py [--rows llama,gpt2] [--cols dynamic-int8,onnx] [--quick]
       [--threads 2] [--batch 8] [--rounds 7] [--cell-timeout 300] [--decode-tokens 8] [--no-write]
Writes the `models` section of BENCHMARKS.md and of README.md (between `<!-- bench:models -->` markers).

Each cell runs in isolation on a fresh copy of the fp32 model (a failure is recorded, the run goes on), under a
time limit, and reports: speed ratio of `task.run_batch` at --batch vs fp32 (median of interleaved rounds), the
change of the task's primary metric, and the outputs against fp32's (max abs difference / cosine). A cell that is
not measured says why (the exception's first line). Causal LM rows also time decoding through the model's own
`generate` with its KV cache (batch 1, --decode-tokens new tokens): tokens/s of fp32 in its metric column, and of
every cell whose result is still a torch module that generates (not ONNX Runtime / LiteRT), with the ratio to fp32.
"""
from __future__ import annotations

import argparse
import sys
import time

import _common  # noqa: F401  (sets sys.path)
import torch

from condense.testing import matrix
from condense.testing.zoo import ROWS, zoo_task

EVAL = {"eval_windows": 16, "eval_texts": 32}  # hf task options: enough held-out text, minutes not hours


def _csv(value: str, valid: list[str] | tuple[str, ...], what: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()] if value else list(valid)
    bad = [n for n in names if n not in valid]
    if bad:
        raise SystemExit(f"bench_models: unknown {what} {', '.join(bad)}; choose from: {', '.join(valid)}")
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="", help=f"comma separated, from {','.join(ROWS)} (default: all)")
    ap.add_argument("--cols", default="", help=f"comma separated, from {','.join(matrix.COLUMNS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="train the zoo models 80 steps instead of a few hundred")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cell-timeout", type=float, default=300.0, help="seconds per cell")
    ap.add_argument("--decode-tokens", type=int, default=8,
                    help="new tokens per timed generate() of causal LM rows (0: no decode figures)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    rows, cols = _csv(args.rows, ROWS, "rows"), _csv(args.cols, list(matrix.COLUMNS), "columns")
    torch.set_num_threads(args.threads)
    load0 = _common.load_average()
    t_start = time.perf_counter()
    results: dict[str, tuple[matrix.Baseline | None, list[matrix.Cell], str]] = {}
    for row in rows:
        t0 = time.perf_counter()
        try:
            task = zoo_task(row, quick=args.quick, **({} if row == "resnet" else EVAL))
            base = matrix.baseline(task, args.batch, decode_tokens=args.decode_tokens, rounds=args.rounds)
        except Exception as e:  # noqa: BLE001  (a row that cannot be built is reported, the others still run)
            print(f"[{row}] could not be built: {matrix.first_line(e)}", file=sys.stderr, flush=True)
            results[row] = (None, [matrix.Cell(row, c, "failed", "model: " + matrix.first_line(e)) for c in cols], "")
            continue
        print(f"[{row}] fp32 {task.primary_metric} {base.quality:.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
        cells = []
        for col in cols:
            cell = matrix.run_cell(task, base, row, col, rounds=args.rounds, time_limit_s=args.cell_timeout)
            cells.append(cell)
            print(f"[{row}] {col}: {cell.text()} ({cell.seconds:.0f} s)", file=sys.stderr, flush=True)
        results[row] = (base, cells, task.primary_metric)
    elapsed = time.perf_counter() - t_start

    lines = ["| model | fp32 metric | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for row, (base, cells, metric) in results.items():
        fp32 = f"{metric} {base.quality:.4f}" if base else "not built"
        if base is not None and base.decode is not None:
            fp32 += f", decode {base.decode:.0f} tok/s"
        lines.append(f"| {row} | {fp32} | " + " | ".join(c.text() for c in cells) + " |")
    ok = sum(c.status == "ok" for _, cells, _ in results.values() for c in cells)
    total = sum(len(cells) for _, cells, _ in results.values())
    cmd = "python bench/bench_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    notes = (f"Each cell: speed of `task.run_batch` at batch {args.batch} vs fp32 (median of {args.rounds} "
             f"interleaved rounds, > 1 is faster), change of the row's primary metric vs fp32 (bits_per_byte: lower "
             f"is better; embedding_cosine, accuracy: higher is better), outputs vs fp32 (max abs difference / "
             f"cosine); causal LMs: decode tokens/s through `generate` (KV cache, batch 1, {args.decode_tokens} new "
             f"tokens; fp32: median of {args.rounds} rounds, cells: of {max(1, args.rounds // 2)} rounds "
             f"interleaved with fp32) and the ratio to fp32, where the result still generates as a torch module. "
             f"Not measured: `failed`/`timeout`/`skipped` and why (first line of the error). Zoo models "
             f"trained {'80 steps (--quick)' if args.quick else 'a few hundred steps'} on stdlib bytes "
             f"(condense/testing/zoo.py); distillation and early exit train {matrix.SHORT} steps. Measured: {ok} of "
             f"{total} cells. Run time {elapsed / 60:.1f} min; {load0} at start, {_common.load_average()} at the "
             f"end (a shared machine: speed ratios are noisy when the load exceeds the threads).")
    body = ("## Compatibility matrix: models condense did not write\n\n"
            + _common.header(cmd.strip(), args.threads, notes) + "\n\n" + "\n".join(lines) + "\n")
    if not args.no_write:
        _common.write_section("models", body)
        _write_readme(cmd.strip(), args, ok, total, lines)
    print(body)


def _write_readme(cmd: str, args: argparse.Namespace, ok: int, total: int, lines: list[str]) -> None:
    """The same table into README.md's `models` section (only where the README has its markers)."""
    readme = _common.README
    if not readme.is_file() or "<!-- bench:models -->" not in readme.read_text():
        print(f"bench_models: {readme} has no <!-- bench:models --> markers; README not written", file=sys.stderr)
        return
    body = (f"Measured by `{cmd}` ({time.strftime('%Y-%m-%d')}, {args.threads} torch thread(s), batch {args.batch}; "
            f"{ok} of {total} cells measured). Each cell: speed ratio vs fp32, change of the primary metric, outputs' "
            f"max abs difference / cosine vs fp32 (details in [BENCHMARKS.md](BENCHMARKS.md)).\n\n" + "\n".join(lines))
    _common.write_section("models", body, path=readme)


if __name__ == "__main__":
    main()
