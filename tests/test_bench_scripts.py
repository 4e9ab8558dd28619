"""The benchmark scripts still start: each parses its arguments against today's code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "script", [*sorted(p.name for p in BENCH.glob("bench_*.py")), "faults.py", "fuzz.py", "soak.py"]
)
def test_bench_script_shows_its_help(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
