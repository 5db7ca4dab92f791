"""Summarise cosmic-ray sessions made by docs/mutation/run.sh.

    python docs/mutation/summary.py SESSION.sqlite [...] [--rerun RERUN.json ...]
                                    [--reasons reasons.json] [--survivors FILE.md]

Prints the mutation score of core/ before the reference checks (the fast core unit tests
alone) and after (with tests/test_reference.py and tests/test_trainer.py), per module. With
``--survivors`` it writes every surviving mutant (module, line, operator, diff) with the reason
from ``--reasons`` (keys ``"core/x.py:LINE"`` or ``"core/x.py:LINE OPERATOR"``) why it cannot
change a result, and counts the survivors that have none. ``--rerun`` files hold survivors
run again against tests written after the session (``{"MODULE OPERATOR OCCURRENCE":
{"test_outcome": "killed" | "survived", ...}}``, from ``cosmic-ray mutate-and-test``); the
ones they kill count in a column of their own.
"""

from __future__ import annotations

import argparse
import json
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
                    "key": f"{module} {operator} {occurrence}",
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


def verdict(row: dict, rerun: dict | None = None) -> str:
    """skipped (filtered out), pending, killed-before, killed-reference, killed-later,
    survived, or another worker outcome."""
    if row["worker"] == "SKIPPED":
        return "skipped"
    if row["worker"] is None:
        return "pending"
    if row["test"] == "SURVIVED":
        later = (rerun or {}).get(row["key"], {}).get("test_outcome")
        return "killed-later" if later == "killed" else "survived"
    if row["test"] == "KILLED":
        if "KILLED-BY: reference" in row["output"]:
            return "killed-reference"
        return "killed-before"  # the first suite, a crash on import, or a timeout
    return str(row["worker"]).lower()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sessions", nargs="+")
    p.add_argument("--survivors", metavar="FILE.md")
    p.add_argument("--reasons", metavar="FILE.json")
    p.add_argument("--rerun", nargs="+", default=[], metavar="FILE.json")
    args = p.parse_args()
    rows = _rows(args.sessions)
    rerun: dict = {}
    for path in args.rerun:
        with open(path) as f:
            rerun.update(json.load(f))
    by_module: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        by_module[r["module"]][verdict(r, rerun)] += 1
    total: Counter = Counter()
    print(
        "| module | mutants run | killed by the unit tests | by the reference checks | "
        "by tests added after the run | survived | before | after |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for module in sorted(by_module):
        c = by_module[module]
        total.update(c)
        print(_line(module, c))
    print(_line("**core/**", total))
    if total["pending"]:
        print(f"\n{total['pending']} mutants not run yet")
    if args.survivors:
        reasons = json.load(open(args.reasons)) if args.reasons else {}
        unexplained = 0
        with open(args.survivors, "w") as f:
            f.write("# Surviving mutants of core/, each with why it cannot change a result\n\n")
            for r in rows:
                if verdict(r, rerun) != "survived":
                    continue
                where = f"{r['module']}:{r['line']}"
                reason = reasons.get(f"{where} {r['operator']}") or reasons.get(where)
                if reason and reason.startswith("Killed after the run"):
                    # a claim the re-run did not confirm is no reason
                    reason = f"NOT CONFIRMED (the re-run did not kill it): {reason}"
                unexplained += reason is None or reason.startswith("NOT CONFIRMED")
                f.write(f"## {where} {r['operator']}\n\n")
                f.write("```diff\n" + _changed_lines(r["diff"]) + "\n```\n\n")
                f.write(f"{reason or 'UNEXPLAINED'}\n\n")
        print(f"\n{unexplained} surviving mutants without a reason")


def _changed_lines(diff: str) -> str:
    keep = [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return "\n".join(keep)


def _line(name: str, c: Counter) -> str:
    killed = c["killed-before"] + c["killed-reference"] + c["killed-later"]
    run = killed + c["survived"]
    before = c["killed-before"] / run if run else float("nan")
    after = killed / run if run else float("nan")
    return (
        f"| {name} | {run} | {c['killed-before']} | {c['killed-reference']} | "
        f"{c['killed-later']} | {c['survived']} | {before:.1%} | {after:.1%} |"
    )


if __name__ == "__main__":
    main()
