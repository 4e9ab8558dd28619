"""Every tool runs as ``python -m rustydb_server.tools.<tool>_main`` as it does
under its console script name, with the same help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.servers import run_tool

TOOLS = {
    "rusty-db-server": "server_main",
    "rusty-db-backup": "backup_main",
    "rusty-db-restore": "restore_main",
    "rusty-db-export": "export_main",
    "rusty-db-waldump": "waldump_main",
}


@pytest.mark.parametrize("name", TOOLS)
def test_the_module_form_is_the_tool(name):
    env = {"COLUMNS": "100"}
    script = run_tool(name, "--help", env=env, check=True)
    module = subprocess.run(
        [sys.executable, "-m", f"rustydb_server.tools.{TOOLS[name]}", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout == script.stdout
    assert module.stdout.startswith(f"usage: {name} ")
