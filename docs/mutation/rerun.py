"""Run a session's survivors again against today's tests, one ``cosmic-ray mutate-and-test`` each.

    python docs/mutation/rerun.py SESSION.sqlite TREE OUT.json [--module core/training.py]

TREE is a copy of the repository laid out as run.sh lays it out (cosmic-ray mutates in place
and restores the file afterwards); the test command is test-command.sh with the venv run.sh
made beside the session. OUT.json maps ``"MODULE OPERATOR OCCURRENCE"`` to
``{"line": ..., "test_outcome": "killed" | "survived"}``, the form summary.py's ``--rerun`` reads.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sqlite3
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("session")
    p.add_argument("tree")
    p.add_argument("out")
    p.add_argument("--module", action="append", default=[], help="only these modules")
    p.add_argument("--python", default=sys.executable, help="the python the tests run under")
    p.add_argument("--corpus", help="a timemachine.txt (default: the command's own lookup)")
    args = p.parse_args()
    if args.corpus is None:
        from rosetta_rnn.core import data

        args.corpus = str(data.locate_time_machine())
    db = sqlite3.connect(args.session)
    rows = db.execute(
        """SELECT s.module_path, s.operator_name, s.occurrence, s.start_pos_row
           FROM mutation_specs s JOIN work_results r ON s.job_id = r.job_id
           WHERE r.test_outcome = 'SURVIVED' ORDER BY s.module_path, s.start_pos_row"""
    ).fetchall()
    command = f"bash {HERE / 'test-command.sh'} {args.python} {args.corpus}"
    out: dict[str, dict] = {}
    for module, operator, occurrence, line in rows:
        if args.module and module not in args.module:
            continue
        done = subprocess.run(
            ["cosmic-ray", "mutate-and-test", module, operator, str(occurrence), command],
            cwd=args.tree,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        outcome = str(result.get("test_outcome", "")).lower()
        key = f"{module} {operator} {occurrence}"
        out[key] = {"line": line, "test_outcome": outcome}
        print(f"{key} (line {line}): {outcome}", flush=True)
    pathlib.Path(args.out).write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
