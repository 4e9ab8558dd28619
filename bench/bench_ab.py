"""Before/after figures of bench_core.py in one run, interleaved (bench only).

    python bench/bench_ab.py --rounds 5 --only select,insert \\
        --a 'budget 0=python:--inline-budget 0' --a 'budget 1ms=python:--inline-budget 1ms'

Each ``--a 'NAME=PYTHON:ARGS'`` is one side: the interpreter (a venv's
python, so a venv bound to another checkout runs that checkout's server) and
bench_core.py's extra arguments. Sides take turns, round after round, so
a machine shared with other work loads them alike; the medians of each figure
and their ratio to the first side are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _side(text: str) -> tuple[str, str, list[str]]:
    name, _, rest = text.partition("=")
    python, _, args = rest.partition(":")
    return name, (python if python and python != "python" else sys.executable), shlex.split(args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", action="append", required=True, help="NAME=PYTHON:ARGS, one per side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="select,insert")
    ap.add_argument("--seconds", choices=("quick", "full"), default="quick")
    args = ap.parse_args()
    sides = [_side(s) for s in args.a]
    results: dict[str, dict[str, list[float]]] = {name: {} for name, _, _ in sides}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for name, python, extra in order:
            cmd = [python, os.path.join(HERE, "bench_core.py"), "--only", args.only, "--json", *extra]
            if args.seconds == "quick":
                cmd.append("--quick")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            for k, v in figures.items():
                results[name].setdefault(k, []).append(v)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    base = sides[0][0]
    print(f"\nmedians of {args.rounds} interleaved rounds (ratio to {base}):")
    for k in results[base]:
        line = f"  {k:16s}"
        for name, _, _ in sides:
            med = statistics.median(results[name].get(k, [float("nan")]))
            ratio = med / statistics.median(results[base][k]) if statistics.median(results[base][k]) else float("nan")
            line += f"  {name}: {med:9.1f} ({ratio:.2f}x)"
        print(line)


if __name__ == "__main__":
    main()
