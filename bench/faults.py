"""The fault matrix in full: every durable file operation of commit, checkpoint,
WAL switch, archive, backup and restore failed in turn (ENOSPC, EIO, a crash
right after the call); prints what was tried and what went wrong.

    python bench/faults.py [--scenario NAME ...] [--every K] [--verbose]

The same scenarios and checks as tests/test_fault_matrix.py (which runs a
subset of them in CI): tests/support/fault_matrix.py and fault_scenarios.py.
Columns: the durable calls the operation makes; injections run; how each
ended: ok (the fault did not stop it: acknowledged), error (refused), clean
(refused with an error that passed every check), crash; lost (runs after
which acknowledged data was missing, unacknowledged data half there, a torn
archive or backup file under its final name, a restore target holding
neither the old data nor the new, or a directory that did not recover);
failed (runs with any failed check, lost or not). Exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package
from tests.support.fault_matrix import Matrix, tally  # noqa: E402
from tests.support.fault_scenarios import scenarios  # noqa: E402


def main(argv=None) -> int:
    all_scenarios = scenarios()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", choices=[s.name for s in all_scenarios], help="only these")
    p.add_argument("--every", type=int, default=1, help="fail every K-th call only (default: every call)")
    p.add_argument("--verbose", action="store_true", help="print every failed check")
    args = p.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the server's own log lines for each of the runs
    chosen = [s for s in all_scenarios if not args.scenario or s.name in args.scenario]
    matrix = Matrix()
    totals = {"runs": 0, "ok": 0, "error": 0, "clean": 0, "crash": 0, "lost": 0, "failed": 0}
    header = ("calls", "runs", "ok", "error", "clean", "crash", "lost", "failed", "s")
    print(f"{'scenario':<20}" + "".join(f"{h:>7}" for h in header))
    try:
        for scenario in chosen:
            t0 = time.perf_counter()
            t = tally(matrix, scenario, every=args.every)
            row = {
                "runs": t.runs,
                "ok": t.count("ok"),
                "error": t.count("error"),
                "clean": t.reported_cleanly,
                "crash": t.count("crash"),
                "lost": t.lost,
                "failed": len(t.problems),
            }
            for key, value in row.items():
                totals[key] += value
            cells = [t.calls, *row.values()]
            print(f"{scenario.name:<20}" + "".join(f"{c:>7}" for c in cells) + f"{time.perf_counter() - t0:>7.1f}")
            if args.verbose:
                for case in t.problems:
                    print(f"    {case.fault} at call {case.at} {case.call}: {case.outcome} {case.message}")
                    for problem in case.problems:
                        print(f"        {problem}")
    finally:
        matrix.close()
    print(
        f"{totals['runs']} injections: {totals['ok']} still acknowledged, {totals['error']} refused "
        f"({totals['clean']} reported cleanly), {totals['crash']} crashes recovered from; "
        f"data lost: {totals['lost']}; failed checks: {totals['failed']}"
    )
    total_bad = totals["failed"]
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
