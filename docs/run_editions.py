"""Run the book's current edition (``--recipe d2l-1.0``: d2l 1.0's 9.5 RNN, 10.1 LSTM and 10.2
GRU) on every backend and seed, and the switches between the editions one at a time; write
docs/editions.json and docs/editions-table.md (copied into docs/editions.md).

    python docs/run_editions.py [--backends numpy torch ...] [--seeds 0 1 2] [--resume]

Each run is ``rosetta-rnn train --recipe d2l-1.0`` as a reader types it (float32, the recipe's
100 epochs for the RNN and 50 for the gated cells); the results are saved after every run, so
an interrupted sweep keeps what it finished (``--resume`` skips those). The seed-0 NumPy RNN
also draws docs/img/edition-1.0.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from run_experiments import run

HERE = Path(__file__).resolve().parent
BACKENDS = ["numpy", "torch", "jax", "tensorflow", "array-api"]
CELLS = {"rnn": [], "gru": ["--cell", "gru"], "lstm": ["--cell", "lstm"]}
SWITCHES = {
    "the current edition (d2l-1.0)": [],
    "0.17's reading: line by line, stripped, joined": ["--preprocess", "lines"],
    "0.17's vocabulary: by frequency": ["--vocab-order", "frequency"],
    "0.17's partitioned minibatches (no validation windows)": ["--sampling", "sequential"],
}
"""The RNN of the recipe with one of its differences from 0.17 switched back (NumPy, seed 0)."""
FIGURES = ("perplexity", "book_perplexity", "val_perplexity", "val_book_perplexity")


def _keep(doc: dict) -> dict:
    """What the table and the page need of a run's JSON."""
    kept = {k: doc.get(k) for k in (*FIGURES, "samples", "seconds", "epochs", "command")}
    if "diverged" in doc:
        kept["diverged"] = doc["diverged"]
    return kept


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=BACKENDS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--cells", nargs="+", default=list(CELLS))
    p.add_argument("--switches", action="store_true", help="also the one-switch runs")
    p.add_argument("--corpus", help="default: the command's own lookup")
    p.add_argument("--out", default=str(HERE / "editions.json"))
    p.add_argument("--resume", action="store_true", help="keep the runs already in --out")
    a = p.parse_args()
    out = Path(a.out)
    results: dict = json.loads(out.read_text()) if a.resume and out.is_file() else {}
    corpus = ["--corpus", a.corpus] if a.corpus else []
    todo: list[tuple[str, list[str]]] = []
    for cell in a.cells:
        for backend in a.backends:
            for seed in a.seeds:
                args = ["train", "--recipe", "d2l-1.0", *CELLS[cell], "--backend", backend]
                args += ["--seed", str(seed), *corpus]
                if (cell, backend, seed) == ("rnn", "numpy", 0):
                    args += ["--plot", str(HERE / "img" / "edition-1.0.png")]
                todo.append((f"{cell}/{backend}/seed{seed}", args))
    if a.switches:
        for name, flags in SWITCHES.items():
            todo.append((f"switch/{name}", ["train", "--recipe", "d2l-1.0", *flags, *corpus]))
    for key, args in todo:
        if key in results:
            continue
        print(key, file=sys.stderr, flush=True)
        results[key] = _keep({"command": args, **run(args)})
        out.write_text(json.dumps(results, indent=1))
    render(results)


def _cell(values: list[float], digits: int = 2, spread: bool = True) -> str:
    """A figure over seeds: the mean, and [the range]."""
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1 or not spread:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def render(results: dict) -> None:
    runs = {k: v for k, v in results.items() if not k.startswith("switch/")}
    lines = [
        "| cell | backend | seeds | validation perplexity [range]; the book's plotted mean | "
        "training; the book's | seconds a run [range] |",
        "|---|---|---|---|---|---|",
    ]
    for cell in CELLS:
        for backend in BACKENDS:
            mine = [v for k, v in runs.items() if k.startswith(f"{cell}/{backend}/")]
            if not mine:
                continue
            train, book, val, val_book = (
                _cell([r[f] for r in mine if r.get(f) is not None], spread=f == "val_perplexity")
                for f in FIGURES
            )
            seconds = _cell([r["seconds"] for r in mine], 0)
            row = [cell, backend, str(len(mine)), f"{val}; {val_book}", f"{train}; {book}"]
            lines.append("| " + " | ".join([*row, seconds]) + " |")
    lines += ["", "| cell | backend | seed | `predict('it has', 20)` |", "|---|---|---|---|"]
    for key, r in runs.items():
        cell, backend, seed = key.split("/")
        sample = next(iter((r.get("samples") or {}).values()), "—")
        lines.append(f"| {cell} | {backend} | {seed.removeprefix('seed')} | `{sample}` |")
    switches = {k.removeprefix("switch/"): v for k, v in results.items() if k.startswith("switch/")}
    if switches:
        lines += [
            "",
            "| the RNN of d2l-1.0 (NumPy, seed 0) with | validation | training | `it has` |",
            "|---|---|---|---|",
        ]
        for name, r in switches.items():
            val = f"{r['val_perplexity']:.2f}" if r.get("val_perplexity") else "—"
            sample = next(iter((r.get("samples") or {}).values()), "—")
            lines.append(f"| {name} | {val} | {r['perplexity']:.2f} | `{sample}` |")
    (HERE / "editions-table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
