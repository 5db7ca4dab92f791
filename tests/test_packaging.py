"""The README's test command is what CI runs; the layout is the fixed one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\n```sh\n(.+?)\n```", text, re.S)
    assert match, "README lacks the marked test command"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_test_command() in [line.strip() for line in ci]


def test_top_level_layout() -> None:
    for name in ("backends", "core", "conformance", "benchmarks", "pyproject.toml", "README.md"):
        assert (REPO / name).exists(), name


def test_the_time_machine_is_not_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout  # outside a git checkout this fails rather than passing on an empty list
    assert "core/model.py" in tracked.splitlines()
    assert not re.search(r"time_?machine[^/]*\.txt", tracked, re.I)


def test_the_cli_reference_names_every_flag() -> None:
    """Each subcommand's every option appears on its usage lines of the CLI reference page."""
    import argparse

    from rosetta_rnn.cli import build_parser

    text = (REPO / "docs" / "cli.md").read_text()
    reference = text.split("<!-- cli-reference:start -->", 1)[1].split("```")[1]
    blocks: dict[str, str] = {}
    command = ""
    for line in reference.splitlines():
        if line.startswith("rosetta-rnn "):
            command = line.split()[1]
        blocks[command] = blocks.get(command, "") + line + "\n"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for command, sub in subparsers.choices.items():
        for action in sub._actions:
            for flag in action.option_strings:
                if (
                    flag.startswith("--")
                    and flag != "--help"
                    and flag not in blocks.get(command, "")
                ):
                    missing.append(f"{command} {flag}")
    assert not missing, missing


PACKAGE_DIRS = {
    "rosetta_rnn": "rosetta_rnn",
    "rosetta_rnn.core": "core",
    "rosetta_rnn.backends": "backends",
    "rosetta_rnn.conformance": "conformance",
    "rosetta_rnn.benchmarks": "benchmarks",
}


def _import_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports, lazily inside functions included
    (``if TYPE_CHECKING:`` blocks left out: they never run)."""
    import ast

    files = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in (REPO / folder).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            files[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                # from PACKAGE import submodule imports the submodule (the package itself is
                # its parent, not an edge); from MODULE import name imports MODULE
                subs = {f"{base}.{a.name}" for a in node.names} & set(files)
                targets |= subs or {base}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _import_graph()
    assert {"rosetta_rnn.cli", "rosetta_rnn.core.model", "rosetta_rnn.backends.numpy"} <= set(graph)
    assert "rosetta_rnn.helpers" in graph["rosetta_rnn.corpus_stats"]  # the graph sees imports
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, cycles[:3]


def test_every_command_module_registers_the_same_way() -> None:
    import inspect

    from rosetta_rnn import cli

    for module in cli.COMMANDS:
        signature = inspect.signature(module.register)
        assert list(signature.parameters) == ["sub"], module.__name__
    helpers = _import_graph()["rosetta_rnn.helpers"]
    assert not {m.__name__ for m in cli.COMMANDS} & helpers  # the shared helpers import no command


# Each folder may import the ones listed (besides itself); nothing below the CLI package imports
# it, so the CLI can import any of them without a cycle.
LAYERS = {
    "core": set(),
    "backends": {"core"},
    "conformance": {"core", "backends"},
    "benchmarks": {"core", "backends", "conformance"},
}


def _imported(path: Path) -> set[str]:
    """The ``rosetta_rnn`` parts a file imports: ``core`` for ``rosetta_rnn.core.model``, and
    the CLI package's own modules by their names (``helpers``, ``cli``)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("rosetta_rnn.")}
    return found - {"__version__"}  # the package's own version, which imports nothing


def test_no_folder_imports_the_cli_package_or_a_folder_above_it() -> None:
    wrong = {
        f"{path.relative_to(REPO)} imports rosetta_rnn.{name}"
        for folder, allowed in LAYERS.items()
        for path in sorted((REPO / folder).rglob("*.py"))
        for name in _imported(path) - allowed - {folder}
    }
    assert not wrong, sorted(wrong)


def test_the_version_is_written_once() -> None:
    """pyproject.toml reads the version from ``rosetta_rnn.__version__`` (no second copy), the
    installed metadata says the same, and CHANGELOG.md has its section."""
    import importlib.metadata

    import rosetta_rnn

    project = (REPO / "pyproject.toml").read_text().split("\n[", 2)[1]  # the [project] table
    assert project.startswith("project]")
    assert not re.search(r"^version\s*=", project, re.M)
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    assert importlib.metadata.version("rosetta-rnn") == rosetta_rnn.__version__
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"\n## {rosetta_rnn.__version__} " in changelog


def test_contributing_names_files_that_exist() -> None:
    """Every file CONTRIBUTING.md names (``backends/<name>.py`` stands for a new one) is there,
    and its list of what a new backend touches names the registry, the rules and pyproject."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    named = set(re.findall(r"`((?:[\w.-]+/)+[\w.<>-]+\.(?:py|toml|md|txt|yml|yaml))`", text))
    assert len(named) >= 15
    missing = [p for p in named if "<name>" not in p and not (REPO / p).exists()]
    assert not missing, missing
    touched = text.split("## Adding a backend: the files it touches", 1)[1]
    for path in ("backends/__init__.py", "backends/rules.py", "pyproject.toml"):
        assert f"`{path}`" in touched, path


def test_trains_help_names_the_backends_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend added to the registry appears in the help of --grad, --compile and --replicas
    with nothing else changed (CONTRIBUTING's list of files counts on it)."""
    from rosetta_rnn import backends
    from rosetta_rnn.cli import build_parser

    extra = backends.Entry("Fake", "fake", ("fake",), ("bptt",), ("eager",), "fake collectives")
    monkeypatch.setitem(backends.REGISTRY, "fakeback", extra)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = " ".join(train.format_help().split()).replace("- ", "-")  # argparse wraps at -
    assert "numpy, array-api and fakeback have bptt only" in help_text
    assert "array-api and fakeback have nothing to compile" in help_text
    assert "fakeback: fake collectives" in help_text
