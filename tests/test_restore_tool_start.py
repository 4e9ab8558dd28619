"""rusty-db-restore's start: each verb imports its own module only.

Every point-in-time restore pays the tool's start before anything is restored
(issue 16's fixed cost of PITR): a PITR must not import the drill (and the
server client it starts), the other verbs, or the scheduler's cron parser.
A fresh interpreter runs the real ``main`` on a PITR command line and a drill
command line, each failing at once on a missing backup, and reports which
modules were loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from rustydb_server.tools import restore_main
code = restore_main.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

OTHER_VERBS = [f"rustydb_server.tools.restore.{name}" for name in ("chain", "dry_run", "list_wal", "repo", "table")]


def probe(*argv: str) -> tuple[int, set[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=False)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["code"], set(out["modules"]), proc.stderr


def test_a_pitr_imports_the_pitr_verb_alone(tmp_path):
    code, modules, err = probe(
        "--input",
        str(tmp_path / "missing.backup"),
        "--archive-dir",
        str(tmp_path),
        "--data-dir",
        str(tmp_path / "out"),
        "--recovery-target",
        "immediate",
    )
    assert code == 1 and "missing.backup" in err  # it ran the PITR, which found no backup
    assert "rustydb_server.tools.restore.pitr" in modules
    for name in [*OTHER_VERBS, "rustydb_server.tools.restore.drill", "rustydb_client.client", "croniter"]:
        assert name not in modules, f"a PITR imported {name}"
    assert not (tmp_path / "out").exists()


def test_the_drill_still_finds_its_verb(tmp_path):
    code, modules, err = probe("--drill", "--input", str(tmp_path / "missing.backup"))
    assert code == 1 and "missing.backup" in err
    assert "rustydb_server.tools.restore.drill" in modules
    assert "rustydb_server.tools.restore.pitr" not in modules
