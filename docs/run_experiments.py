"""Run the chapter's experiments on every installed backend and write docs/experiments.md.

    python docs/run_experiments.py [--epochs 50] [--backends numpy torch jax tensorflow]
                                   [--corpus FILE]

Every number in docs/experiments.md comes from this script; each row shows the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXE = [sys.executable, "-m", "rosetta_rnn"]


def run(args: list[str]) -> dict:
    start = time.perf_counter()
    r = subprocess.run([*EXE, *args, "--json"], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if r.returncode not in (0, 3):
        raise SystemExit(f"failed: rosetta-rnn {' '.join(args)}\n{r.stderr[-2000:]}")
    if r.returncode == 3:  # diverged: the message is the result
        return {"diverged": r.stderr.strip().splitlines()[-1], "seconds": seconds}
    doc = json.loads(r.stdout)
    history = doc.pop("history", None)
    if history:
        doc["perplexity_per_epoch"] = [h["perplexity"] for h in history]
    doc["seconds"] = seconds
    return doc


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--backends", nargs="+", default=["numpy", "torch", "jax", "tensorflow"])
    p.add_argument(
        "--corpus",
        help="default: the command's own lookup ($ROSETTA_RNN_DATA, the cache, a download)",
    )
    p.add_argument("--out", default=str(HERE / "experiments.json"))
    a = p.parse_args()
    corpus = ["--corpus", a.corpus] if a.corpus else []
    base = [*corpus, "--epochs", str(a.epochs)]
    experiments = {
        "sequential": ["train", *base],
        "random": ["train", *base, "--sampling", "random"],
        "no-detach": ["train", *base, "--no-detach"],
        "no-clip": ["train", *base, "--no-clip"],
        "relu": ["train", *base, "--activation", "relu"],
        "relu-no-clip": ["train", *base, "--activation", "relu", "--no-clip"],
        "relu-no-clip-lr10": ["train", *base, "--activation", "relu", "--no-clip", "--lr", "10"],
        "learned-embedding": ["train", *base, "--embedding", "learned", "--embed-dim", "32"],
        "last-step": ["train", *base, "--loss", "last-step"],
        "held-out": ["train", *base, "--train-fraction", "0.9"],
        "word": [
            "train",
            *corpus,
            "--epochs",
            str(max(a.epochs // 5, 2)),
            "--token",
            "word",
        ],
    }
    results: dict = {}
    for backend in a.backends:
        for name, args in experiments.items():
            cmd = [*args, "--backend", backend]
            if name == "sequential":
                cmd += ["--checkpoint", str(Path("/tmp") / f"exp-{backend}.safetensors")]
            print(f"{backend:10s} {name}", file=sys.stderr, flush=True)
            results[f"{backend}/{name}"] = {"command": args, **run(cmd)}
        ckpt = str(Path("/tmp") / f"exp-{backend}.safetensors")
        results[f"{backend}/eval"] = {
            "command": ["eval", "--checkpoint", "CKPT", *corpus],
            **run(["eval", "--checkpoint", ckpt, *corpus, "--backend", backend]),
        }
        for alpha in ("0.5", "1", "2"):
            results[f"{backend}/alpha{alpha}"] = {
                "command": ["generate", "--checkpoint", "CKPT", "--alpha", alpha, "--seed", "0"],
                **run(
                    [
                        "generate",
                        "--checkpoint",
                        ckpt,
                        "--alpha",
                        alpha,
                        "--seed",
                        "0",
                        "--backend",
                        backend,
                    ]
                ),
            }
        results[f"{backend}/greedy"] = {
            "command": ["generate", "--checkpoint", "CKPT", "--greedy"],
            **run(["generate", "--checkpoint", ckpt, "--greedy", "--backend", backend]),
        }
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {a.out}", file=sys.stderr)
    render(results, a.backends, a.epochs)


ROWS = {
    "sequential": "sequential partitioning (the chapter)",
    "random": "`--sampling random`",
    "no-detach": "`--no-detach` (gradients through the whole epoch)",
    "no-clip": "`--no-clip`",
    "relu": "`--activation relu`",
    "relu-no-clip": "`--activation relu --no-clip`",
    "relu-no-clip-lr10": "`--activation relu --no-clip --lr 10`",
    "learned-embedding": "`--embedding learned --embed-dim 32`",
    "last-step": "`--loss last-step`",
    "held-out": "`--train-fraction 0.9`",
    "word": "`--token word`",
}


def _cell(r: dict) -> str:
    if "diverged" in r:
        return "diverged: " + r["diverged"].split("error: ", 1)[-1].split(";")[0]
    out = f"{r['perplexity']:.3f}"
    if r.get("heldout_perplexity") is not None:
        out += f" (held-out {r['heldout_perplexity']:.2f})"
    if r.get("max_grad_norm") is not None and r["config"].get("clip") is None:
        out += f", max ‖g‖ {r['max_grad_norm']:.3g}"
    return out + f", {r['tokens_per_sec'] / 1000:.1f}k tok/s"


def render(results: dict, backends: list[str], epochs: int) -> None:
    """The tables of docs/experiments.md from the results."""
    lines = [
        f"| experiment ({epochs} epochs unless noted) | " + " | ".join(backends) + " |",
        "|---" * (len(backends) + 1) + "|",
    ]
    for key, label in ROWS.items():
        cells = [_cell(results[f"{b}/{key}"]) for b in backends if f"{b}/{key}" in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| `eval` on the whole book | "
        + " | ".join(
            f"{results[f'{b}/eval']['perplexity']:.2f} ({results[f'{b}/eval']['tokens']} tokens)"
            for b in backends
        )
        + " |"
    )
    texts = ["", "| sampling | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    for key, label in (
        ("greedy", "`--greedy`"),
        ("alpha0.5", "`--alpha 0.5`"),
        ("alpha1", "`--alpha 1`"),
        ("alpha2", "`--alpha 2`"),
    ):
        texts.append(
            f"| {label} | "
            + " | ".join(f"`{results[f'{b}/{key}']['text']}`" for b in backends)
            + " |"
        )
    (HERE / "experiments-table.md").write_text("\n".join(lines + texts) + "\n")


if __name__ == "__main__":
    main()
