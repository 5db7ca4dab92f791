"""mypy over the package as it is imported: ``rosetta_rnn.core`` is ``core/`` and so on.

    python .ci/typecheck.py [PACKAGE ...]     (default: every one: core backends conformance
                                              benchmarks rosetta_rnn)

mypy cannot follow setuptools' editable-install import hook, so this lays the package out in a
temporary folder (links to the real folders, the installed layout of pyproject.toml's
package-dir) and checks it there with the project's mypy settings. Exit status: mypy's.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPACKAGES = ("core", "backends", "conformance", "benchmarks")
DEFAULT = ("core", "backends", "conformance", "benchmarks", "rosetta_rnn")


def main(argv: list[str]) -> int:
    targets = argv or list(DEFAULT)
    with tempfile.TemporaryDirectory(prefix="rosetta-rnn-mypy-") as tmp:
        package = pathlib.Path(tmp) / "rosetta_rnn"
        package.mkdir()
        for item in (ROOT / "rosetta_rnn").iterdir():
            if item.suffix == ".py":
                (package / item.name).symlink_to(item)
        for sub in SUBPACKAGES:
            (package / sub).symlink_to(ROOT / sub, target_is_directory=True)
        modules = []
        for target in targets:
            if target in SUBPACKAGES:
                modules += ["-p", f"rosetta_rnn.{target}"]
            else:  # the CLI package's own modules
                for item in sorted((ROOT / "rosetta_rnn").glob("*.py")):
                    modules += ["-m", f"rosetta_rnn.{item.stem}".removesuffix(".__init__")]
        command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
        command += ["--cache-dir", str(ROOT / ".mypy_cache"), *modules]
        return subprocess.run(command, cwd=tmp).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
