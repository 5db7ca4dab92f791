"""``rosetta-rnn corpus-stats``: n-gram counts on a hand-made corpus and on The Time Machine
(d2l's figures), the Zipf plot, and one-line errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from rosetta_rnn import corpus_stats
from rosetta_rnn.core.errors import DataError, UserError
from rosetta_rnn.helpers import PROG, Parser

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _parser() -> argparse.ArgumentParser:
    """A parser like the main CLI's, with only this subcommand."""
    parser = Parser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    corpus_stats.register(sub)
    return parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    args = _parser().parse_args(["corpus-stats", *argv])
    assert args.func is corpus_stats.cmd_corpus_stats
    assert args.func(args) == 0
    return capsys.readouterr().out


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    return json.loads(_run(capsys, *argv, "--json"))


@pytest.fixture
def cats(tmp_path: Path) -> Path:
    # d2l's preprocessing: letters only, lower case -> "the cat sat the cat ran" / "a cat sat"
    path = tmp_path / "cats.txt"
    path.write_text("The cat sat. the cat ran!\nA cat, sat\n")
    return path


def test_word_counts_on_a_hand_made_corpus(cats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, "--corpus", str(cats), "--top", "100")
    assert doc["token"] == "word"
    assert doc["num_tokens"] == 9
    assert doc["vocab_size"] == 6  # five words and <unk>
    # ties keep first-seen order; n-grams run across the line end ("ran a")
    assert doc["unigrams"] == [["cat", 3], ["the", 2], ["sat", 2], ["ran", 1], ["a", 1]]
    assert doc["bigrams"] == [
        [["the", "cat"], 2],
        [["cat", "sat"], 2],
        [["sat", "the"], 1],
        [["cat", "ran"], 1],
        [["ran", "a"], 1],
        [["a", "cat"], 1],
    ]
    assert [g for g, _ in doc["trigrams"]] == [
        ["the", "cat", "sat"],
        ["cat", "sat", "the"],
        ["sat", "the", "cat"],
        ["the", "cat", "ran"],
        ["cat", "ran", "a"],
        ["ran", "a", "cat"],
        ["a", "cat", "sat"],
    ]
    assert {c for _, c in doc["trigrams"]} == {1}


def test_top_cuts_every_list(cats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, "--corpus", str(cats), "--top", "2")
    assert doc["unigrams"] == [["cat", 3], ["the", 2]]
    assert len(doc["bigrams"]) == len(doc["trigrams"]) == 2
    assert doc["num_tokens"] == 9  # the totals are of the whole corpus


def test_char_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ab.txt"
    path.write_text("ab ab\n")
    doc = _json(capsys, "--corpus", str(path), "--token", "char")
    assert (doc["token"], doc["num_tokens"], doc["vocab_size"]) == ("char", 5, 4)
    assert doc["unigrams"] == [["a", 2], ["b", 2], [" ", 1]]
    assert doc["bigrams"] == [[["a", "b"], 2], [["b", " "], 1], [[" ", "a"], 1]]
    assert doc["trigrams"] == [[["a", "b", " "], 1], [["b", " ", "a"], 1], [[" ", "a", "b"], 1]]
    out = _run(capsys, "--corpus", str(path), "--token", "char")
    assert "'b '" in out and "' ab'" in out  # characters are quoted so spaces show


def test_ngram_counts_shorter_than_n() -> None:
    assert corpus_stats.ngram_counts(["a", "b"], 3) == []
    assert corpus_stats.ngram_counts(["a", "b"], 2) == [(("a", "b"), 1)]


def test_the_time_machine_words_match_d2l(
    timemachine: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _json(capsys, "--corpus", str(timemachine), "--top", "5")
    assert doc["num_tokens"] == 32775 and doc["vocab_size"] == 4580
    assert doc["unigrams"] == [["the", 2261], ["i", 1267], ["and", 1245], ["of", 1155], ["a", 816]]
    assert doc["bigrams"][:3] == [[["of", "the"], 309], [["in", "the"], 169], [["i", "had"], 130]]
    assert doc["trigrams"][:3] == [
        [["the", "time", "traveller"], 59],
        [["the", "time", "machine"], 30],
        [["the", "medical", "man"], 24],
    ]


def test_the_time_machine_chars(timemachine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, "--corpus", str(timemachine), "--token", "char", "--top", "2")
    assert doc["num_tokens"] == 170580 and doc["vocab_size"] == 28  # d2l's 26 letters, ' ', <unk>
    assert doc["unigrams"] == [[" ", 29927], ["e", 17838]]
    assert doc["trigrams"][0] == [[" ", "t", "h"], 3629]


def test_human_output_is_three_tables(cats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "--corpus", str(cats), "--top", "3")
    assert "9 word tokens, vocabulary of 6" in out
    blocks = out.strip().split("\n\n")
    assert [b.split()[0] for b in blocks[1:]] == ["unigram", "bigram", "trigram"]
    assert blocks[1].splitlines() == ["unigram  count", "cat      3", "the      2", "sat      2"]
    assert blocks[2].splitlines()[1] == "the cat  2"


def test_zipf_plot_is_a_png(
    timemachine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "zipf.png"
    out = _run(capsys, "--corpus", str(timemachine), "--plot", str(png))
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 10_000
    assert f"wrote the Zipf plot to {png}" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zipf.png"]  # no temp file left


def test_zipf_plot_replaces_an_old_file(cats: Path, tmp_path: Path) -> None:
    png = tmp_path / "zipf.png"
    png.write_text("old")
    args = _parser().parse_args(
        ["corpus-stats", "--corpus", str(cats), "--plot", str(png), "--json"]
    )
    assert corpus_stats.cmd_corpus_stats(args) == 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_zipf_plot_draws_three_labelled_log_log_lines(timemachine: Path) -> None:
    stats = corpus_stats.corpus_stats(timemachine, "word")
    (ax,) = corpus_stats.zipf_figure(stats, "Zipf").axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_title() == "Zipf" and ax.get_xlabel() and ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [label.split()[0] for label in labels] == ["unigrams", "bigrams", "trigrams"]
    first = [line.get_ydata()[0] for line in ax.get_lines()]
    assert first == [2261, 309, 59]  # each line starts at its most frequent n-gram
    assert len(ax.get_lines()[0].get_xdata()) == stats.vocab_size - 1  # every word, not the top


def _one_line(e: pytest.ExceptionInfo[UserError]) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_plot_into_a_missing_folder_is_one_line(cats: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "zipf.png"
    args = _parser().parse_args(["corpus-stats", "--corpus", str(cats), "--plot", str(missing)])
    with pytest.raises(UserError) as e:
        corpus_stats.cmd_corpus_stats(args)
    assert "does not exist" in _one_line(e)
    assert not missing.parent.exists()


def test_plot_onto_a_folder_is_one_line(cats: Path, tmp_path: Path) -> None:
    args = _parser().parse_args(["corpus-stats", "--corpus", str(cats), "--plot", str(tmp_path)])
    with pytest.raises(UserError) as e:
        corpus_stats.cmd_corpus_stats(args)
    assert "is a folder" in _one_line(e)


def test_missing_corpus_is_one_line(tmp_path: Path) -> None:
    args = _parser().parse_args(["corpus-stats", "--corpus", str(tmp_path / "nope.txt")])
    with pytest.raises(DataError) as e:
        corpus_stats.cmd_corpus_stats(args)
    assert "corpus file not found" in _one_line(e)


def test_corpus_without_letters_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "digits.txt"
    path.write_text("1234 5678\n")
    args = _parser().parse_args(["corpus-stats", "--corpus", str(path)])
    with pytest.raises(UserError) as e:
        corpus_stats.cmd_corpus_stats(args)
    assert "no word tokens" in _one_line(e)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--top", "0"], "expected a positive integer, got '0'"),
        (["--top", "many"], "expected a positive integer, got 'many'"),
        (["--token", "byte"], "invalid choice: 'byte'"),
    ],
)
def test_bad_flags_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["corpus-stats", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: ") and words in err


def test_wired_into_the_main_cli(cats: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rosetta_rnn import cli

    cli.build_parser().parse_args(["corpus-stats", "--corpus", str(cats)])  # registered
    capsys.readouterr()
    assert cli.main(["corpus-stats", "--corpus", str(cats), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unigrams"][0] == ["cat", 3]
    assert cli.main(["corpus-stats", "--corpus", str(cats), "--plot", "/no/such/dir/z.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: --plot")
