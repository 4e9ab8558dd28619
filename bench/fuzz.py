"""Fuzz the parsers that read bytes from outside, time-boxed: prints executions and crashes per target.

    python bench/fuzz.py --seconds 60 [--target wal] [--artifacts DIR]

Runs each harness of ``fuzz/`` (frames, connection, wal, backup, sqlsplit)
under atheris in a subprocess for ``--seconds`` seconds, starting from seed
inputs made by the real code (a real frame, real segments, a real small
backup). A crash (an exception outside the parser's documented errors, a
broken round trip, an input running longer than ``--input-timeout``) is
recorded with its input in ``--artifacts`` and the harness restarted for
the rest of its time, so one run can find several; crashes that fail the
same way at the same place count once. Exits 1 if any target crashed, 2 if
atheris is not installed (``pip install -e '.[fuzz]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from fuzz import TARGETS  # noqa: E402
from fuzz.harness import STATS_ENV  # noqa: E402

# The largest input the fuzzer makes, per target: a little over its largest seed.
MAX_LEN = {"frames": 4096, "connection": 4096, "wal": 12288, "backup": 8192, "sqlsplit": 4096}


@dataclass
class Result:
    target: str
    executions: int = 0
    runs: int = 0
    crashes: dict[str, str] = field(default_factory=dict)  # signature -> the input's file


def _libfuzzer_failure(stderr: str) -> str:
    """What libFuzzer said went wrong when the harness could not (a timeout, memory)."""
    for kind in ("timeout", "out-of-memory", "deadly signal", "fuzz target exited"):
        if f"libFuzzer: {kind}" in stderr:
            return kind
    return "exit without a report"


def _executions(stderr: str) -> int:
    m = re.search(r"stat::number_of_executed_units: (\d+)", stderr)
    if m:
        return int(m.group(1))
    counts = re.findall(r"^#(\d+)\s", stderr, re.MULTILINE)
    return int(counts[-1]) if counts else 0


def fuzz_target(target: str, seconds: float, artifacts: str, input_timeout: int, *, module: str = "") -> Result:
    """Fuzz one target (the harness module ``fuzz.<target>`` unless ``module`` names another)."""
    result = Result(target)
    work = tempfile.mkdtemp(prefix=f"rustydb-fuzz-{target}-")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    module = [sys.executable, "-m", module or f"fuzz.{target}"]
    try:
        corpus = os.path.join(work, "corpus")
        subprocess.run([*module, "--seeds", corpus], cwd=ROOT, env=env, check=True)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) >= 1:
            stats = os.path.join(work, "stats.json")
            if os.path.exists(stats):
                os.unlink(stats)
            proc = subprocess.run(
                [
                    *module,
                    f"-max_total_time={int(left)}",
                    f"-timeout={input_timeout}",
                    f"-max_len={MAX_LEN.get(target, 4096)}",
                    "-rss_limit_mb=2048",
                    "-print_final_stats=1",
                    f"-artifact_prefix={os.path.join(work, '')}",
                    corpus,
                ],
                cwd=ROOT,
                env={**env, STATS_ENV: stats},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            result.runs += 1
            if proc.returncode == 0:
                result.executions += _executions(proc.stderr)
                break
            report = None
            if os.path.exists(stats):
                with open(stats) as f:
                    report = json.load(f)
            if report is not None:
                result.executions += report["runs"]
                signature, data, detail = report["crash"], bytes.fromhex(report["input"]), report["traceback"]
            else:
                result.executions += _executions(proc.stderr)
                signature, detail = _libfuzzer_failure(proc.stderr), proc.stderr[-4000:]
                found = [n for n in os.listdir(work) if re.match(r"(crash|timeout|oom|leak)-", n)]
                data = b""
                if found:
                    with open(os.path.join(work, found[0]), "rb") as f:
                        data = f.read()
                    for name in found:
                        os.unlink(os.path.join(work, name))
            if signature not in result.crashes:
                os.makedirs(artifacts, exist_ok=True)
                path = os.path.join(artifacts, f"{target}-crash-{len(result.crashes) + 1}")
                with open(path, "wb") as f:
                    f.write(data)
                with open(path + ".txt", "w") as f:
                    f.write(f"{signature}\n\n{detail}")
                result.crashes[signature] = path
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="time per target (default 60)")
    parser.add_argument(
        "--target", action="append", choices=TARGETS, help="fuzz only this target (repeatable; default all)"
    )
    parser.add_argument("--artifacts", help="where crashes go (default: a new directory under the temp dir)")
    parser.add_argument("--input-timeout", type=int, default=10, help="seconds one input may take (default 10)")
    args = parser.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("error: atheris is not installed; install it with: pip install -e '.[fuzz]'", file=sys.stderr)
        return 2
    artifacts = args.artifacts or tempfile.mkdtemp(prefix="rustydb-fuzz-crashes-")
    results = []
    print(f"{'target':<12} {'executions':>12} {'crashes':>8}")
    for target in args.target or TARGETS:
        result = fuzz_target(target, args.seconds, artifacts, args.input_timeout)
        results.append(result)
        print(f"{target:<12} {result.executions:>12} {len(result.crashes):>8}", flush=True)
        for signature, path in result.crashes.items():
            print(f"  {signature}: input in {path}", flush=True)
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
