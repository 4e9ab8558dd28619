"""Shipped service files: the unit passes systemd's own checks; the config documents all."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rustydb_server import settings as st
from rustydb_server.settings import REGISTRY, Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "rustydb.service"
CONFIG = ROOT / "etc" / "rustydb" / "rustydb.toml"


def unit_directives() -> dict[str, list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return {key: [value] for key, value in parser["Service"].items()}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify refuses an ExecStart binary that does not exist, and
    # /usr/bin/rusty-db-server exists only on an installed system. Every other
    # line is checked as shipped: the copy differs only in the binary's path.
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=/usr/bin/rusty-db-server --config /etc/rustydb/rustydb.toml$", text, re.M)
    copy = tmp_path / "rustydb.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/rusty-db-server", "ExecStart=/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # Unknown or misspelled keys are only warnings (exit 0), so the output counts too.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "rustydb" in line]
    assert result.returncode == 0 and complaints == [], result.stderr


def test_unit_has_the_service_contract():
    d = {k: v[0] for k, v in unit_directives().items()}
    assert d["Type"] == "notify"
    assert d["NotifyAccess"] == "main"
    assert d["User"] == d["Group"] == "rustydb"
    assert d["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert d["KillSignal"] == "SIGTERM"
    assert d["Restart"] == "on-failure"
    assert d["StateDirectory"] == "rusty-db" and d["StateDirectoryMode"] == "0700"
    assert d["NoNewPrivileges"] == "yes" and d["ProtectSystem"] == "strict"
    assert "/var/lib/rusty-db" in d["ReadWritePaths"].split()


def test_stop_timeout_outlasts_graceful_shutdown():
    d = {k: v[0] for k, v in unit_directives().items()}
    stop = int(d["TimeoutStopSec"])
    assert stop > st.to_seconds("shutdown_timeout", REGISTRY["shutdown_timeout"].default)
    assert int(d["WatchdogSec"]) >= 2  # the server pings every WatchdogSec/2


def test_sysusers_creates_the_unit_user():
    entries = [
        line.split()
        for line in (ROOT / "systemd" / "rustydb.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["u", "rustydb"] in [e[:2] for e in entries]


def test_config_file_loads_and_points_at_the_state_directory(tmp_path):
    s = Settings.load(str(CONFIG), str(tmp_path), {})
    assert st.read_config_file(str(CONFIG))["data_dir"] == "/var/lib/rusty-db"
    assert s.source("data_dir") == st.SOURCE_CLI  # --data-dir still wins over the file


def test_config_file_documents_every_setting_with_a_valid_default(tmp_path):
    text = CONFIG.read_text()
    # Each setting appears as a key line, commented out when it shows the default.
    lines = dict(re.findall(r"^#?(\w+) = (.*)$", text, re.M))
    assert sorted(lines) == sorted(REGISTRY)
    # Uncommenting everything must give a file the server accepts, with the
    # registry's defaults (data_dir aside): the comments cannot drift.
    uncommented = tmp_path / "all.toml"
    uncommented.write_text(re.sub(r"^#(\w+ = )", r"\1", text, flags=re.M))
    values = st.read_config_file(str(uncommented))
    for name, setting in REGISTRY.items():
        if name != "data_dir":
            assert values[name] == setting.default, name
    for name, setting in REGISTRY.items():
        # The comment paragraph right above the key line states live or restart.
        key_line = re.search(rf"^#?{name} = ", text, re.M)
        paragraph = text[: key_line.start()].rsplit("\n\n", 1)[-1]
        assert re.search(rf"\({setting.context}[;)]", paragraph), f"{name}: context not documented"
