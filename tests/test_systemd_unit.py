"""Shipped service files: the unit passes systemd's own checks; the config documents all."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rustydb_server import settings as st
from rustydb_server.settings import REGISTRY, Settings
from rustydb_server.tools import systemd_unit
from tests.support.servers import run_tool, tool

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "rustydb.service"
CONFIG = ROOT / "etc" / "rustydb" / "rustydb.toml"


def unit_directives(text: str | None = None) -> dict[str, list[str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text() if text is None else text)
    return {key: [value] for key, value in parser["Service"].items()}


def verify(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Unknown or misspelled keys are only warnings (exit 0), so the output counts too.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "rustydb" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@needs_systemd_analyze
def test_unit_printed_by_the_installed_server_passes_systemd_analyze_verify(tmp_path):
    # The README's install path: the installed server prints its own unit,
    # which is installed as it is; verify also checks that ExecStart exists.
    server = tool("rusty-db-server")
    printed = run_tool("rusty-db-server", "--print-systemd-unit", check=True).stdout
    installed = tmp_path / "etc" / "systemd" / "system" / "rustydb.service"
    installed.parent.mkdir(parents=True)
    installed.write_text(printed)
    verify(installed)
    d = {k: v[0] for k, v in unit_directives(printed).items()}
    assert d["ExecStart"] == f"{server} --config /etc/rustydb/rustydb.toml"
    # Every other line is the shipped unit's.
    assert printed.replace(server, "/usr/bin/rusty-db-server") == UNIT.read_text()


@needs_systemd_analyze
def test_unit_names_the_config_file_given(tmp_path):
    config = tmp_path / "rustydb.toml"
    printed = run_tool("rusty-db-server", "--print-systemd-unit", "--config", str(config), check=True).stdout
    d = {k: v[0] for k, v in unit_directives(printed).items()}
    assert d["ExecStart"] == f"{tool('rusty-db-server')} --config {config}"
    unit = tmp_path / "rustydb.service"
    unit.write_text(printed)
    verify(unit)


def test_shipped_unit_is_the_one_the_server_prints_for_usr_bin():
    assert UNIT.read_text() == systemd_unit.unit_text("/usr/bin/rusty-db-server")


def test_a_server_under_a_home_directory_gets_a_unit_that_can_read_it():
    # ProtectHome=yes would hide /home from the service, and ExecStart with it.
    d = {
        k: v[0]
        for k, v in unit_directives(systemd_unit.unit_text("/home/ada/rustydb/.venv/bin/rusty-db-server")).items()
    }
    assert d["ProtectHome"] == "read-only"
    assert d["ExecStart"] == "/home/ada/rustydb/.venv/bin/rusty-db-server --config /etc/rustydb/rustydb.toml"
    assert unit_directives(UNIT.read_text())["ProtectHome"] == ["yes"]


def test_print_systemd_unit_refuses_what_belongs_in_the_config_file():
    proc = run_tool("rusty-db-server", "--print-systemd-unit", "--port", "5433")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "--print-systemd-unit takes only --config" in proc.stderr
    with pytest.raises(systemd_unit.UnitError, match="absolute path"):
        systemd_unit.unit_text("rusty-db-server")
    with pytest.raises(systemd_unit.UnitError, match="plain path"):
        systemd_unit.unit_text("/opt/rusty db/bin/rusty-db-server")


def test_unit_has_the_service_contract():
    d = {k: v[0] for k, v in unit_directives().items()}
    assert d["Type"] == "notify"
    assert d["NotifyAccess"] == "main"
    assert d["User"] == d["Group"] == "rustydb"
    assert d["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert d["KillSignal"] == "SIGTERM"
    assert d["Restart"] == "on-failure"
    assert d["StateDirectory"] == "rusty-db" and d["StateDirectoryMode"] == "0700"
    # the Unix socket's directory, the default unix_socket_directory
    assert d["RuntimeDirectory"] == "rustydb" and d["RuntimeDirectoryMode"] == "0755"
    assert REGISTRY["unix_socket_directory"].default == "/run/rustydb"
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


@pytest.mark.skipif(
    os.geteuid() != 0 or not (shutil.which("systemd-sysusers") and shutil.which("systemd-tmpfiles")),
    reason="needs root and systemd-sysusers/systemd-tmpfiles",
)
def test_readme_install_of_sysusers_and_tmpfiles_into_a_scratch_root(tmp_path):
    # The README's install steps, with --root: the account exists and the
    # guide's archive directory is created private to it.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name, kind in (("rustydb.sysusers", "sysusers.d"), ("rustydb.tmpfiles", "tmpfiles.d")):
        target = root / "usr" / "lib" / kind / "rustydb.conf"
        target.parent.mkdir(parents=True)
        shutil.copy(ROOT / "systemd" / name, target)
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True, timeout=60)
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line.split(":") for line in passwd.splitlines() if line.startswith("rustydb:"))
    assert entry[5] == "/var/lib/rusty-db"
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], check=True, capture_output=True, timeout=60)
    archive = (root / "var" / "lib" / "rusty-db" / "archive").stat()
    assert (archive.st_uid, archive.st_mode & 0o777) == (int(entry[2]), 0o700)
