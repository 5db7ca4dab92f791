"""PNG plots (matplotlib, Agg), each written atomically to a path the user gives."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.files import atomic_file


def _figure() -> tuple[Any, Any]:
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'rosetta-rnn[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.2), dpi=110)


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """Fail before any work, in one line, when ``--plot PATH`` cannot be written."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"--plot {path}: is a folder; give a file name such as plot.png")
    if not target.parent.is_dir():
        raise UserError(f"--plot {path}: folder {target.parent} does not exist")
    if target.suffix.lower() != ".png":
        raise UserError(f"--plot {path}: plots are PNG files; the name does not end in .png")
    return target


def save(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write the figure as a PNG, atomically."""
    check_plot_path(path)
    fig.tight_layout()
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def perplexity(history: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Perplexity per epoch: training, and held-out when there is one."""
    fig, ax = _figure()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["perplexity"] for h in history], label="train")
    held = [h.get("heldout_perplexity") for h in history]
    if any(v is not None for v in held):
        ax.plot(epochs, held, label="held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    _plain_ticks(ax)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path)


def _plain_ticks(ax: Any) -> None:
    """Log axes labelled 2, 5, 10 rather than 2×10⁰."""
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def grad_norms(runs: Mapping[str, Sequence[float]], theta: float, path: str, title: str) -> None:
    """Gradient norm per step for several runs, with the clipping threshold θ."""
    fig, ax = _figure()
    for label, norms in runs.items():
        ax.plot(range(1, len(norms) + 1), norms, label=label, linewidth=0.8)
    ax.axhline(theta, color="gray", linestyle="--", linewidth=0.8, label=f"θ = {theta:g}")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("global gradient norm ‖g‖ (before clipping)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(fig, path)


def distributions(
    probs: Mapping[float, Any],
    tokens: Sequence[str],
    path: str,
    title: str,
    top: int = 12,
) -> None:
    """The next-token distribution q ∝ P^α for several α: the ``top`` most likely tokens
    (by their largest probability under any α), one bar group per token."""
    import numpy as np

    fig, ax = _figure()
    alphas = list(probs)
    table = np.array([probs[a] for a in alphas])  # (alphas, vocab)
    order = np.argsort(-table.max(axis=0), kind="stable")[:top]
    x = np.arange(len(order))
    width = 0.8 / max(len(alphas), 1)
    for i, alpha in enumerate(alphas):
        ax.bar(x + i * width - 0.4 + width / 2, table[i, order], width, label=f"α = {alpha:g}")
    labels = ["space" if tokens[j] == " " else tokens[j] for j in order]
    ax.set_xticks(x, labels)
    ax.set_xlabel(f"next token (the {len(order)} most likely)")
    ax.set_ylabel("probability q")
    ax.set_title(title)
    ax.legend()
    save(fig, path)
