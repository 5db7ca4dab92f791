"""Summarise cosmic-ray sessions made by docs/mutation/run.sh.

    python docs/mutation/summary.py SESSION.sqlite [...] [--survivors FILE.md]

Prints the mutation score of core/ before the reference checks (the old fast core suite alone)
and after (with tests/test_reference.py), per module, and optionally writes every surviving
mutant (module, line, operator, diff) to a markdown file for triage.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections import Counter, defaultdict


def _rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        db = sqlite3.connect(path)
        query = """
            SELECT s.module_path, s.operator_name, s.occurrence, s.start_pos_row,
                   r.worker_outcome, r.test_outcome, r.output, r.diff
            FROM mutation_specs s LEFT JOIN work_results r ON s.job_id = r.job_id
        """
        for module, operator, occurrence, line, worker, test, output, diff in db.execute(query):
            rows.append(
                {
                    "module": module,
                    "operator": operator.split("/")[-1],
                    "occurrence": occurrence,
                    "line": line,
                    "worker": worker,
                    "test": test,
                    "output": output or "",
                    "diff": diff or "",
                }
            )
    return rows


def verdict(row: dict) -> str:
    """skipped (filtered out), pending, killed-before, killed-reference, survived, or other."""
    if row["worker"] == "SKIPPED":
        return "skipped"
    if row["worker"] is None:
        return "pending"
    if row["test"] == "SURVIVED":
        return "survived"
    if row["test"] == "KILLED":
        if "KILLED-BY: reference" in row["output"]:
            return "killed-reference"
        return "killed-before"  # the first suite, a crash on import, or a timeout
    return str(row["worker"]).lower()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sessions", nargs="+")
    p.add_argument("--survivors", metavar="FILE.md")
    args = p.parse_args()
    rows = _rows(args.sessions)
    by_module: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_module[r["module"]][verdict(r)] += 1
    total: Counter = Counter()
    print(
        "| module | mutants run | killed before | killed by reference | survived | before | after |"
    )
    print("|---|---|---|---|---|---|---|")
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        print(_line(module, c))
    print(_line("**core/**", total))
    if total["pending"]:
        print(f"\n{total['pending']} mutants not run yet")
    if args.survivors:
        with open(args.survivors, "w") as f:
            f.write("# Surviving mutants\n\n")
            for r in rows:
                if verdict(r) == "survived":
                    f.write(f"## {r['module']}:{r['line']} {r['operator']}\n\n")
                    f.write("```diff\n" + r["diff"].strip() + "\n```\n\n")


def _line(name: str, c: Counter) -> str:
    run = c["killed-before"] + c["killed-reference"] + c["survived"]
    before = c["killed-before"] / run if run else float("nan")
    after = (c["killed-before"] + c["killed-reference"]) / run if run else float("nan")
    return (
        f"| {name} | {run} | {c['killed-before']} | {c['killed-reference']} | "
        f"{c['survived']} | {before:.1%} | {after:.1%} |"
    )


if __name__ == "__main__":
    main()
