"""Each atheris harness runs under bench/fuzz.py for a few seconds and finds nothing.

Skipped where atheris is not installed (``pip install -e '.[fuzz]'``); the
same checks run under hypothesis in tests/test_property_*.py either way.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import TARGETS

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("atheris", reason="atheris is not installed: pip install -e '.[fuzz]'")


@pytest.mark.parametrize("target", TARGETS)
def test_the_harness_runs_and_finds_nothing(target, tmp_path):
    proc = subprocess.run(
        # A generous per-input limit: on a loaded machine a slow input is not a finding here.
        [
            sys.executable,
            str(ROOT / "bench" / "fuzz.py"),
            "--seconds",
            "3",
            "--target",
            target,
            "--input-timeout",
            "60",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = re.search(rf"^{target}\s+(\d+)\s+(\d+)$", proc.stdout, re.MULTILINE)
    assert row, proc.stdout
    executions, crashes = int(row.group(1)), int(row.group(2))
    assert executions > 0 and crashes == 0, proc.stdout


CRASHY = """
from fuzz.harness import main


def check(data):
    if data[:1] == b"\\x07":
        raise ValueError("the seventh byte")


main(check, lambda: [b"\\x00\\x00"])
"""


def test_a_crash_is_counted_once_and_its_input_kept(tmp_path, monkeypatch):
    """The runner's own contract, on a harness that fails: the crash is
    reported with the input that caused it, the harness is restarted for the
    rest of its time, and the same failure again counts once."""
    (tmp_path / "crashy_harness.py").write_text(CRASHY)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "bench" / "fuzz.py")
    bench_fuzz = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_fuzz", bench_fuzz)
    spec.loader.exec_module(bench_fuzz)
    result = bench_fuzz.fuzz_target("crashy", 6, str(tmp_path / "crashes"), 10, module="crashy_harness")
    assert result.executions > 0
    ((signature, path),) = result.crashes.items()
    assert signature.startswith("ValueError at crashy_harness.py:")
    assert Path(path).read_bytes()[:1] == b"\x07"
    assert "the seventh byte" in Path(path + ".txt").read_text()
