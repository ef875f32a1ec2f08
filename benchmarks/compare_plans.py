"""Are two runs' plans the same? Compares the `--plans-out` JSON files of bench_budget.py or
bench_fidelity_budget.py row by row (model, threads/method, budget -> the chosen plan).

How a refactor is checked to leave the planner's choices unchanged: run the bench once on the old
code with a kept latency DB, copy the DB, run it on the new code against the copy (the stored
segment latencies, importances and end-to-end measurements make both plan from the same numbers),
then compare:

    python benchmarks/bench_budget.py --models mobilenetv2_1.0 resnet18 ffn_stack --threads 1 --no-speed \\
        --no-write --latency-db-dir DBDIR --plans-out before.json          # old code
    cp -r DBDIR DBDIR2; ... --latency-db-dir DBDIR2 --plans-out after.json   # new code
    python benchmarks/compare_plans.py before.json after.json --section plan_check_budget --title "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_section  # noqa: E402

KEYS = ("model", "threads", "method", "budget")


def _key(row: dict) -> tuple:
    return tuple(row.get(k) for k in KEYS)


def compare(a: list[dict], b: list[dict]) -> tuple[int, list[tuple[tuple, object, object]]]:
    """(rows compared, [(key, plan in a, plan in b)] where they differ or a row is missing)."""
    ia, ib = {_key(r): r for r in a}, {_key(r): r for r in b}
    diffs = [(k, ia.get(k, {}).get("plan"), ib.get(k, {}).get("plan"))
             for k in sorted(set(ia) | set(ib), key=repr) if ia.get(k) != ib.get(k)]
    return len(set(ia) | set(ib)), diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--section", help="write the result into this RESULTS.md section")
    ap.add_argument("--title", default="Same plans on the same latency DB")
    ap.add_argument("--command", default="", help="the bench commands that produced the two files (for the section)")
    args = ap.parse_args(argv)
    n, diffs = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    lines = [f"{n - len(diffs)} of {n} plans identical."]
    if diffs:
        lines += ["", "| row | before | after |", "|---|---|---|"]
        lines += [f"| {' '.join(str(x) for x in k if x is not None)} | {pa} | {pb} |" for k, pa, pb in diffs]
    body = "\n".join(lines)
    print(body)
    if args.section:
        write_section(args.section, args.title,
                      args.command or f"python benchmarks/compare_plans.py {args.before} {args.after}", body)
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
