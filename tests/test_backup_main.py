"""rusty-db-backup's flags (tools/backup_main.py): usage errors exit 2 before any verb runs,
and each form the guide uses reaches its verb."""

from __future__ import annotations

import pytest

from rustydb_server.tools import backup_main
from rustydb_server.tools.backup import create_key, info, query, rotate_key, take, verify
from tests.support.backups import assert_clean_error
from tests.support.servers import run_tool


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
        ["--query", "f", "SELECT 1", "--archive-dir", "a"],  # no target
        ["--query", "f", "SELECT 1", "--recovery-target-txid", "3"],  # no archive
        [
            "--query",
            "f",
            "SELECT 1",
            "--archive-dir",
            "a",
            "--recovery-target-txid",
            "3",
            "--recovery-target-time",
            "t",
        ],
        ["--info", "f", "--recovery-target-txid", "3"],
    ],
)
def test_usage_errors_exit_2(args):
    proc = run_tool("rusty-db-backup", *args)
    assert_clean_error(proc, 2)


@pytest.mark.parametrize(
    "args,verb",
    [
        (["--type", "full", "--output", "/b/f.backup", "--compress", "--encrypt", "--verify", "--threads", "4"], take),
        (["--type", "incremental", "--base-backup", "/b/f.backup", "--output", "/b/i.backup"], take),
        (["--verify", "/b/f.backup", "--key-file", "/k"], verify),
        (["--info", "/b/f.backup", "--json"], info),
        (["--query", "/b/f.backup", "SELECT 1", "--database", "sales"], query),
        (["--query", "/b/f.backup", "SELECT 1", "--archive-dir", "/a", "--recovery-target-txid", "7"], query),
        (["--rotate-key", "/old.key", "/new.key", "/b/1.backup", "/b/2.backup"], rotate_key),
        (["--create-key-file", "/etc/rustydb/backup.key"], create_key),
    ],
)
def test_each_of_the_guides_forms_reaches_its_verb(args, verb):
    parser = backup_main.build_parser()
    parsed = parser.parse_args(args)
    backup_main.check_usage(parser, parsed)
    assert backup_main.chosen_verb(parsed) is verb.run


def test_help_keeps_every_flag_of_the_guide():
    text = run_tool("rusty-db-backup", "--help", check=True).stdout
    for flag in (
        "--type",
        "--verify",
        "--info",
        "--rotate-key",
        "--query",
        "--create-key-file",
        "--output",
        "--compress",
        "--encrypt",
        "--key-file",
        "--threads",
        "--nice",
        "--database",
        "--base-backup",
        "--host",
        "--port",
        "--user",
        "--json",
    ):
        assert flag in text
