"""rusty-db-restore --chain-dir ... --dry-run: the chain the restore would apply, in order,
each file verified; the real restore then applies exactly that chain."""

from __future__ import annotations

import json
import os
import shutil

from tests.support.backups import flip_byte_in_chunk
from tests.support.servers import run_tool


def _restore(*args: str):
    return run_tool("rusty-db-restore", *args, "--json", timeout=120)


def test_dry_run_of_a_chain_plans_the_chain_the_restore_applies(chain, tmp_path):
    paths, _states = chain
    backups = os.path.dirname(paths["full"])
    args = ("--input", paths["incr2"], "--chain-dir", backups, "--data-dir", str(tmp_path / "d"))
    dry = _restore(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["ok"] and all(b["verified"] for b in plan["backups"])
    assert [b["type"] for b in plan["backups"]] == ["full", "incremental", "incremental"]
    assert not os.path.exists(tmp_path / "d")
    real = _restore(*args)
    assert real.returncode == 0, real.stderr
    assert [b["path"] for b in plan["backups"]] == json.loads(real.stdout)["chain"]


def test_dry_run_of_a_chain_names_a_damaged_or_missing_link(chain, tmp_path):
    paths, _states = chain
    copy = tmp_path / "backups"
    shutil.copytree(os.path.dirname(paths["full"]), copy)
    flip_byte_in_chunk(str(copy / "incr1.backup"))
    args = ("--input", str(copy / "incr2.backup"), "--chain-dir", str(copy), "--data-dir", str(tmp_path / "d"))
    proc = _restore(*args, "--dry-run")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and str(copy / "incr1.backup") in doc["error"] and "does not verify" in doc["error"]
    assert [b["verified"] for b in doc["backups"]] == [True, False, True]
    os.remove(copy / "incr1.backup")
    proc = run_tool("rusty-db-restore", *args, "--dry-run")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs backup" in proc.stderr  # the missing parent, by id


def test_dry_run_of_one_full_backup(chain, tmp_path):
    paths, _states = chain
    proc = run_tool("rusty-db-restore", "--input", paths["full"], "--data-dir", str(tmp_path / "d"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "1. " + paths["full"] in proc.stdout and "the restore would succeed" in proc.stdout
    assert "Archived WAL" not in proc.stdout and not os.path.exists(tmp_path / "d")
