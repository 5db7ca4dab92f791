"""``rosetta-rnn corpus-stats``: d2l's "Language Models" section on a corpus.

The most frequent unigrams, bigrams and trigrams with their counts, and the Zipf plot: the
frequency of each n-gram against its rank, on log-log axes. Tokens come from core's d2l
pipeline (``read_lines`` and ``tokenize``); n-grams run over the whole token stream, across
line ends, as d2l's ``zip(corpus[:-1], corpus[1:])`` does.

Wired into the main CLI by ``register(subparsers)``; ``cmd_corpus_stats(args)`` runs it.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosetta_rnn import argtypes, plots
from rosetta_rnn.core import data
from rosetta_rnn.core.display import format_table
from rosetta_rnn.core.errors import UserError
from rosetta_rnn.core.files import atomic_write_bytes
from rosetta_rnn.helpers import CORPUS_HELP

HELP = "top unigrams, bigrams and trigrams of a corpus and its Zipf plot (d2l's language models)"
ORDERS: tuple[tuple[int, str], ...] = ((1, "unigram"), (2, "bigram"), (3, "trigram"))
DEFAULT_TOP = 10

Gram = tuple[str, ...]


def register(sub: Any) -> None:
    """Add the ``corpus-stats`` subcommand to ``sub`` (an ``argparse._SubParsersAction``)."""
    p = sub.add_parser(
        "corpus-stats",
        help=HELP,
        description=HELP + ": the most frequent n-grams with their counts, after d2l's "
        "preprocessing (letters only, lower case), and the log-log plot of frequency against "
        "rank whose straight lines are Zipf's law. Takes about a second.",
    )
    p.add_argument("--corpus", metavar="FILE", help=CORPUS_HELP)
    p.add_argument(
        "--token", choices=data.TOKEN_KINDS, default="word", help="word (default, as d2l) or char"
    )
    p.add_argument(
        "--top",
        type=argtypes.positive_int,
        default=DEFAULT_TOP,
        metavar="N",
        help=f"how many of each to list (default {DEFAULT_TOP})",
    )
    p.add_argument(
        "--plot", metavar="PNG", help="write the Zipf log-log plot here (default: no plot)"
    )
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_corpus_stats)


# --- counting --------------------------------------------------------------------------------


def ngram_counts(tokens: Sequence[str], n: int) -> list[tuple[Gram, int]]:
    """Every run of ``n`` consecutive tokens with its count, most frequent first (ties keep
    first-seen order, like d2l's ``Vocab``)."""
    if len(tokens) < n:
        return []
    grams = zip(*(tokens[i : len(tokens) - n + 1 + i] for i in range(n)), strict=True)
    return collections.Counter(grams).most_common()


@dataclass
class CorpusStats:
    """The counts of one corpus: every n-gram for n = 1, 2, 3, most frequent first."""

    token: str
    num_tokens: int
    vocab_size: int
    """Distinct tokens plus ``<unk>``: ``len(Vocab(tokens))`` as d2l and ``train`` report it."""
    ngrams: dict[int, list[tuple[Gram, int]]]

    def to_json(self, top: int) -> dict[str, Any]:
        """The document ``--json`` prints: the ``top`` of each order, counts included."""
        doc: dict[str, Any] = {
            "token": self.token,
            "num_tokens": self.num_tokens,
            "vocab_size": self.vocab_size,
        }
        for n, name in ORDERS:
            rows = self.ngrams[n][:top]
            doc[f"{name}s"] = [[g[0] if n == 1 else list(g), c] for g, c in rows]
        return doc


def corpus_stats(path: str | os.PathLike[str], token: str = "word") -> CorpusStats:
    """Read, tokenize (d2l's preprocessing) and count unigrams, bigrams and trigrams."""
    lines = data.tokenize(data.read_lines(path), token)
    tokens = [t for line in lines for t in line]
    if not tokens:
        raise UserError(f"{path} has no {token} tokens (only letters are kept, as in d2l)")
    return CorpusStats(
        token=token,
        num_tokens=len(tokens),
        vocab_size=len(data.Vocab(lines)),
        ngrams={n: ngram_counts(tokens, n) for n, _ in ORDERS},
    )


# --- output ----------------------------------------------------------------------------------


def show(gram: Gram, token: str) -> str:
    """An n-gram as text: words joined by spaces; characters quoted, so spaces show."""
    return " ".join(gram) if token == "word" else repr("".join(gram))


def tables(stats: CorpusStats, top: int) -> str:
    """The three tables of the human output, one after the other."""

    blocks = []
    for n, name in ORDERS:
        rows = [[show(g, stats.token), c] for g, c in stats.ngrams[n][:top]]
        blocks.append(format_table([name, "count"], rows))
    return "\n\n".join(blocks)


def _write_atomic(path: Path, payload: bytes) -> None:
    """``path`` is either the old file or the whole new one (temp file, fsync, rename)."""
    try:
        atomic_write_bytes(path, payload)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def zipf_figure(stats: CorpusStats, title: str) -> Any:
    """The frequency n(x) of each n-gram x against its rank x, one line per order, log-log:
    a matplotlib ``Figure`` on the Agg canvas (no pyplot, no backend switch, no display)."""
    plots.require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for n, name in ORDERS:
        freqs = [c for _, c in stats.ngrams[n]]
        if freqs:
            ax.plot(range(1, len(freqs) + 1), freqs, label=f"{name}s ({len(freqs)} distinct)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"rank x of the {stats.token} n-gram (1 = most frequent)")
    ax.set_ylabel("frequency n(x)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="major")
    ax.legend()
    return fig


def zipf_png(stats: CorpusStats, title: str) -> bytes:
    """``zipf_figure`` rendered as PNG bytes."""
    buf = io.BytesIO()
    zipf_figure(stats, title).savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def cmd_corpus_stats(args: argparse.Namespace) -> int:
    """Count, print the tables (or the JSON document), write the Zipf plot. Returns 0."""
    plot = plots.check_plot_path(args.plot) if args.plot else None
    path = data.locate_time_machine(args.corpus)
    stats = corpus_stats(path, args.token)
    if plot is not None:
        name = "The Time Machine" if args.corpus is None else Path(args.corpus).name
        title = f"Zipf's law: {stats.token} n-grams of {name}"
        _write_atomic(plot, zipf_png(stats, title))
    if args.json:
        print(json.dumps(stats.to_json(args.top)))
        return 0
    print(
        f"{path}: {stats.num_tokens} {stats.token} tokens, "
        f"vocabulary of {stats.vocab_size} (with <unk>)\n"
    )
    print(tables(stats, args.top))
    if plot is not None:
        print(f"\nwrote the Zipf plot to {plot}")
    return 0
