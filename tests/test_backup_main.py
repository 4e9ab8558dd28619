"""rusty-db-backup's flags (tools/backup_main.py): usage errors exit 2 before any verb runs."""

from __future__ import annotations

import pytest
from helpers import run_tool
from sample_backups import assert_clean_error


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--info", "a", "--verify", "b"],
        ["--type", "full"],
        ["--rotate-key", "a", "b"],
        ["--type", "full", "--output", "x", "--info", "y"],
        ["--info", "a", "--compress"],
        ["--type", "full", "--output", "x", "--threads", "0"],
        ["--type", "full", "--output", "x", "--threads", "65"],  # the API's limit too
        ["--type", "full", "--output", "x", "--compress", "gzip"],
        ["--type", "full", "--output", "x", "--nice", "20"],
        ["--info", "a", "--nice", "5"],
    ],
)
def test_usage_errors_exit_2(args):
    proc = run_tool("rusty-db-backup", *args)
    assert_clean_error(proc, 2)
