"""Run d2l 9.1 (GRU) and 9.2 (LSTM) on every backend and write docs/gated.json and
docs/gated-table.md (copied into docs/experiments.md and docs/chapter.md).

    python docs/run_gated.py [--backends numpy torch jax tensorflow] [--corpus FILE]

The chapters' settings: 256 hidden units, lr 1, 500 epochs, batch 32, 35 steps, the first 10000
characters of The Time Machine, float32, seed 0, clipping θ = 1. Results are saved after every
run, so an interrupted sweep keeps what it finished (``--resume`` skips those).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from run_experiments import run

HERE = Path(__file__).resolve().parent
CELLS = {
    "gru": ["--cell", "gru"],
    "gru-reset-after": ["--cell", "gru", "--gru", "reset-after"],
    "lstm": ["--cell", "lstm"],
}
D2L = {
    # What d2l's PyTorch edition printed for its from-scratch runs: the last 0.17.5 build
    # (d2l-ai/d2l-pytorch-colab 32f0fdc, 2022-07-15) and the range over its builds 0.14-0.17.5
    # (its runs are not seeded, so every build printed other figures).
    "gru": "1.1 (builds: 1.0-1.3)",
    "gru-reset-after": "1.1 (concise nn.GRU; builds: 1.0-1.1)",
    "lstm": "1.3 (builds: 1.1-1.4)",
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax", "tensorflow"])
    p.add_argument("--corpus", help="default: the command's own lookup")
    p.add_argument("--out", default=str(HERE / "gated.json"))
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    a = p.parse_args()
    out = Path(a.out)
    results: dict = json.loads(out.read_text()) if a.resume and out.is_file() else {}
    corpus = ["--corpus", a.corpus] if a.corpus else []
    for cell, flags in CELLS.items():
        for backend in a.backends:
            key = f"{cell}/{backend}"
            if key in results:
                continue
            args = ["train", *corpus, *flags, "--num-hiddens", "256", "--backend", backend]
            print(key, file=sys.stderr, flush=True)
            results[key] = {"command": args, **run(args)}
            out.write_text(json.dumps(results, indent=1))
    render(results, a.backends)


def render(results: dict, backends: list[str]) -> None:
    lines = [
        "| cell (500 epochs, 256 hidden) | d2l printed | " + " | ".join(backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    for cell in CELLS:
        row = [f"`{' '.join(CELLS[cell])}`", D2L[cell]]
        for b in backends:
            r = results.get(f"{cell}/{b}")
            row.append(
                f"{r['perplexity']:.3f}, {r['tokens_per_sec'] / 1000:.1f}k tok/s" if r else "—"
            )
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| cell | backend | `time traveller` | `traveller` |", "|---|---|---|---|"]
    for cell in CELLS:
        for b in backends:
            r = results.get(f"{cell}/{b}")
            if r:
                s = r["samples"]
                lines.append(f"| {cell} | {b} | `{s['time traveller']}` | `{s['traveller']}` |")
    (HERE / "gated-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
