"""The fault matrix in full: every durable file operation of commit, checkpoint,
WAL switch, archive, backup and restore failed in turn (ENOSPC, EIO, a crash
right after the call); prints what was tried and what went wrong.

    python bench/faults.py [--scenario NAME ...] [--every K] [--verbose]

The same scenarios and checks as tests/test_fault_matrix.py (which runs a
subset of them in CI): tests/support/fault_matrix.py and fault_scenarios.py.
Columns: the durable calls the operation makes, injections run, how each
ended (acknowledged, reported as an error, crashed), and the runs whose checks
failed (data lost or half there, a torn file under its final name, an error
that is not clean, a directory that does not recover). Exit 1 if any failed.
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
    total_runs = total_bad = 0
    print(f"{'scenario':<20} {'calls':>5} {'runs':>5} {'ok':>5} {'error':>5} {'crash':>5} {'failed':>6} {'s':>6}")
    try:
        for scenario in chosen:
            t0 = time.perf_counter()
            t = tally(matrix, scenario, every=args.every)
            ends = {
                end: sum(n for key, n in t.outcomes.items() if key.endswith(":" + end))
                for end in ("ok", "error", "crash")
            }
            print(
                f"{scenario.name:<20} {t.calls:>5} {t.runs:>5} {ends['ok']:>5} {ends['error']:>5} "
                f"{ends['crash']:>5} {len(t.problems):>6} {time.perf_counter() - t0:>6.1f}"
            )
            total_runs += t.runs
            total_bad += len(t.problems)
            if args.verbose:
                for case in t.problems:
                    print(f"    {case.fault} at call {case.at} {case.call}: {case.outcome} {case.message}")
                    for problem in case.problems:
                        print(f"        {problem}")
    finally:
        matrix.close()
    print(f"{total_runs} injections, {total_bad} with a failed check (data lost, torn files, unclean errors)")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
