"""A kill -9 soak of a real server: prints what was acknowledged and what was lost; never run as a test.

    python bench/soak.py [--cycles 100] [--clients 4] [--databases 2] [--seed 1] [--json]

Clients write multi-row transactions to several databases while backups
(full and incremental, encrypted, by rusty-db-backup) and WAL archiving run;
each cycle the server is killed with SIGKILL at a random moment and
restarted, then every acknowledged commit must be present and no
unacknowledged transaction half-present. At the end every backup is verified
(rusty-db-backup --verify), the last one restored with its chain, and a PITR
restore replays the whole archive on the first full backup; both are checked
the same way. The code is tests/support/soak.py, which tests/test_soak_e2e.py
runs with a few cycles. Exits 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # the tests' support package

from tests.support.soak import SoakConfig, run_soak  # noqa: E402


def main(argv=None) -> int:
    defaults = SoakConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=defaults.cycles, help="kill -9 cycles (default 100)")
    ap.add_argument("--clients", type=int, default=defaults.clients, help="concurrent writers (default 4)")
    ap.add_argument("--databases", type=int, default=defaults.databases, help="databases written (default 2)")
    ap.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random kills and rows (default 1)")
    ap.add_argument(
        "--min-run", type=float, default=defaults.min_run, help="least seconds of load before a kill (default 0.5)"
    )
    ap.add_argument(
        "--max-run", type=float, default=defaults.max_run, help="most seconds of load before a kill (default 2)"
    )
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (new or empty) and keep it, instead of a temporary one")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line at the end")
    args = ap.parse_args(argv)
    if args.cycles < 1 or args.clients < 1 or args.databases < 1 or not 0 < args.min_run <= args.max_run:
        ap.error("--cycles, --clients and --databases must be at least 1, and 0 < --min-run <= --max-run")
    config = SoakConfig(
        cycles=args.cycles,
        clients=args.clients,
        databases=args.databases,
        seed=args.seed,
        min_run=args.min_run,
        max_run=args.max_run,
    )
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        if os.listdir(args.keep):
            ap.error(f"--keep {args.keep}: the directory is not empty")
        result = run_soak(config, args.keep, say)
    else:
        with tempfile.TemporaryDirectory(prefix="rustydb-soak-") as tmp:
            result = run_soak(config, tmp, say)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        for line in result.lines():
            print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
