"""Crafted names in every file a tool reads a name from, through every reader and restore mode.

A name read from a backup (its manifest's and its header's database names,
its entry names), an archived segment, a timeline history file or the
server's backup catalog is checked once, at its parser, by the one function
for that kind of name (datadir.validate_database_name,
container.format.safe_entry_name, wal.segment.parse_segment_name,
wal.timeline.parse_history, backup.catalog's location check), before any path
is built from it. For each crafted name (absolute, ``..``, separators, NUL,
very long, Unicode look-alikes, a trailing newline) the input is built as an
attacker holding the key would (the writer's own checks bypassed), and every
tool that reads it must stop with a one-line error and exit 1, having written
nothing outside its target.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from unittest import mock

import pytest

from rustydb_server.container.file import BackupFile
from rustydb_server.container.reader import BackupReader
from rustydb_server.keys import KeyFileSource, create_key_file
from rustydb_server.tools import backup_main, export_main, restore_main
from tests.support.backups import CUSTOMERS

pytestmark = pytest.mark.usefixtures("no_keys")

VICTIM = "victim"  # the absolute name points into the test's own directory
CRAFTED = {
    "absolute": None,  # filled in with <tmp>/victim
    "dotdot": "../../victim",
    "dotdot_alone": "..",
    "separator": "a/victim",
    "backslash": "a\\victim",
    "nul": "rustydb\x00victim",
    "very_long": "x" * 4097,
    "cyrillic_lookalike": "r\u0443stydb",
    "fullwidth_lookalike": "\uff52\uff55\uff53\uff54\uff59\uff44\uff42",
    "division_slash": "rustydb\u2215victim",
    "trailing_newline": "rustydb\n",
    "empty": "",
}


def crafted(kind: str, root) -> str:
    return str(root / VICTIM) if kind == "absolute" else CRAFTED[kind]


def rewrite(src: str, out: str, *, key=None, manifest_edit=None, extra_edit=None) -> None:
    """``src`` written again with its header edited, as an attacker holding the
    key would: every entry copied, the writer's header checks bypassed."""
    with open(src, "rb") as f:
        reader = BackupReader(f, key=key)
        header = reader.header
        extra = json.loads(json.dumps(header.extra))
        databases = header.databases
        if manifest_edit is not None:
            manifest_edit(extra["manifest"])
            databases = [
                {"name": d["name"], "tables": d["tables"], "size_bytes": d["size_bytes"]}
                for d in extra["manifest"]["databases"]
            ]
        if extra_edit is not None:
            extra_edit(extra)
        new = dataclasses.replace(header, extra=extra, databases=databases, encryption=None)
        with mock.patch("rustydb_server.container.writer.check_header_fields"):
            bf = BackupFile(out, new, key=key, codec="none")
            for entry in reader.entries():
                bf.begin_entry(entry.name)
                for chunk in reader.read_entry(entry.name):
                    bf.write(chunk)
                bf.end_entry()
            bf.commit()


def rename_database(name: str):
    def edit(manifest: dict) -> None:
        db = manifest["databases"][0]
        db["name"] = name
        db["entry"] = db["entry"].rsplit("/", 1)[0] + f"/{name}." + db["entry"].rsplit(".", 1)[1]

    return edit


def files_under(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, _dirs, names in os.walk(root) for n in names}


def run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(result, *expected: str) -> None:
    code, out, err = result
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, never a traceback
    assert any(e in lines[0] for e in expected), lines[0]


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("key") / "backup.key")
    create_key_file(path)
    return path


# ---------------------------------------------------------------- database names in a backup


@pytest.fixture(scope="module", params=["plain", "encrypted"])
def sources(request, chain, archived, key, tmp_path_factory):
    """The real backups to craft from: a full one, an incremental on it, and a
    base with its archive; encrypted with the key file, or not."""
    paths, _ = chain
    base, archive, _ = archived
    if request.param == "plain":
        return {"key": None, "full": paths["full"], "incr": paths["incr1"], "base": base, "archive": archive}
    out = tmp_path_factory.mktemp("encrypted")
    source = KeyFileSource.from_file(key)
    made = {"key": key, "archive": archive}
    for what, src in (("full", paths["full"]), ("incr", paths["incr1"]), ("base", base)):
        made[what] = str(out / f"{what}.backup")
        with mock.patch("rustydb_server.container.writer.check_header_fields"):
            with open(src, "rb") as f:
                reader = BackupReader(f)
                bf = BackupFile(made[what], dataclasses.replace(reader.header), key=source, codec="none")
                for entry in reader.entries():
                    bf.begin_entry(entry.name)
                    for chunk in reader.read_entry(entry.name):
                        bf.write(chunk)
                    bf.end_entry()
                bf.commit()
    return made


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_database_name_is_refused_by_every_tool(kind, sources, tmp_path, capsys):
    name = crafted(kind, tmp_path)
    key = KeyFileSource.from_file(sources["key"]) if sources["key"] else None
    key_args = ["--key-file", sources["key"]] if sources["key"] else []
    backups = tmp_path / "backups"
    backups.mkdir()
    full, incr, base = (str(backups / f"{w}.backup") for w in ("full", "incr", "base"))
    rewrite(sources["full"], full, key=key, manifest_edit=rename_database(name))
    rewrite(sources["incr"], incr, key=key, manifest_edit=rename_database(name))
    rewrite(sources["base"], base, key=key, manifest_edit=rename_database(name))
    # An incremental is applied to a directory its own chain's full backup was restored to.
    chain_dir = str(tmp_path / "chain_restored")
    assert restore_main.main(["--input", sources["full"], "--data-dir", chain_dir, *key_args]) == 0
    capsys.readouterr()
    before = files_under(tmp_path)
    target = str(tmp_path / "target")
    refused = ("not a database name",)
    modes = [
        (restore_main.main, ["--input", full, "--data-dir", target]),
        (restore_main.main, ["--input", full, "--table", "customers", "--data-dir", target]),
        (restore_main.main, ["--input", full, "--chain-dir", str(backups), "--data-dir", target]),
        (restore_main.main, ["--incremental", "--input", incr, "--data-dir", chain_dir]),
        (restore_main.main, ["--input", incr, "--chain-dir", str(backups), "--data-dir", target]),
        (
            restore_main.main,
            [
                "--input",
                base,
                "--archive-dir",
                sources["archive"],
                "--recovery-target",
                "immediate",
                "--data-dir",
                target,
            ],
        ),
        (
            restore_main.main,
            [
                "--input",
                base,
                "--archive-dir",
                sources["archive"],
                "--recovery-target-name",
                "before_purge",
                "--table",
                "notes",
                "--data-dir",
                target,
            ],
        ),
        (backup_main.main, ["--info", full]),
        (backup_main.main, ["--verify", full]),
        (backup_main.main, ["--query", full, "SELECT count(*) FROM customers"]),
    ]
    for main, argv in modes:
        result = run(main, [*argv, *key_args], capsys)
        assert_refused(result, *refused)
        assert files_under(tmp_path) == before, argv  # nothing written, in the target or anywhere else
    assert not os.path.exists(name + ".sqlite") if os.path.isabs(name) else True


def test_the_uncrafted_sources_restore(sources, tmp_path, capsys):
    """The same commands on the backups as written work: the refusals above are the names'."""
    key_args = ["--key-file", sources["key"]] if sources["key"] else []
    target = str(tmp_path / "target")
    assert restore_main.main(["--input", sources["full"], "--table", "customers", "--data-dir", target, *key_args]) == 0
    code, out, _err = run(
        backup_main.main, ["--query", sources["full"], "SELECT count(*) FROM customers", *key_args], capsys
    )
    assert code == 0 and str(CUSTOMERS) in out


# ---------------------------------------------------------------- segment names in an archive


def copy_archive(archive: str, dest) -> str:
    shutil.copytree(archive, dest)
    return str(dest)


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_segment_name_inside_an_archived_file_is_refused(kind, archived, tmp_path, capsys):
    base, archive, _ = archived
    name = crafted(kind, tmp_path)
    archive = copy_archive(archive, tmp_path / "archive")
    first = sorted(os.listdir(archive))[0]
    victim_file = os.path.join(archive, first)
    os.rename(victim_file, victim_file + ".orig")
    rewrite(victim_file + ".orig", victim_file, extra_edit=lambda extra: extra.update(segment=name))
    os.unlink(victim_file + ".orig")
    before = files_under(tmp_path)
    target = str(tmp_path / "target")
    for argv in (
        ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--data-dir", target],
        ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--data-dir", target],
        ["--archive-dir", archive, "--list-wal"],
    ):
        assert_refused(run(restore_main.main, argv, capsys), "holds segment")
        assert files_under(tmp_path) == before, argv


@pytest.mark.parametrize(
    "file_name",
    [
        "000000010000000000000001.walz\n",
        "\uff10" * 24 + ".walz",  # fullwidth digits
        "00000001000000000000000\u0661.walz",  # an Arabic-Indic one
        "..walz",
        "00000002.history\n",
        "0000000\u0662.history",
    ],
)
def test_crafted_file_names_in_an_archive_are_never_read(file_name, archived, tmp_path, capsys):
    """Only names a segment or history file really has are read from an
    archive directory; anything else there is left alone."""
    base, archive, states = archived
    archive = copy_archive(archive, tmp_path / "archive")
    with open(os.path.join(archive, file_name), "wb") as f:
        f.write(b"garbage that would fail any reader\n")
    target = str(tmp_path / "target")
    code, _out, err = run(
        restore_main.main,
        ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--data-dir", target],
        capsys,
    )
    assert code == 0, err
    code, out, err = run(restore_main.main, ["--archive-dir", archive, "--list-wal"], capsys)
    assert code == 0, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- history files


@pytest.mark.parametrize(
    "line",
    [
        b"../victim\t0\tcrafted",
        b"/tmp/victim\t0\tcrafted",
        b"-1\t10\tcrafted",
        b"+1\t10\tcrafted",
        b"1_0\t10\tcrafted",
        "\u0661\t10\tcrafted".encode(),  # an Arabic-Indic 1
        b"4294967296\t10\tcrafted",
        b"0\t10\tcrafted",
        b"1\t1\x000\tcrafted",
        b"1\t10\tcrafted\x00",
        b"1\t10000000000000000\tcrafted",
        b"\xff\xfe1\t10\tcrafted",
    ],
)
def test_a_crafted_history_file_is_refused(line, archived, tmp_path, capsys):
    base, archive, _ = archived
    archive = copy_archive(archive, tmp_path / "archive")
    # A later timeline's history: recovery follows it (the latest timeline is the default target).
    with open(os.path.join(archive, "00000002.history"), "wb") as f:
        f.write(line + b"\n")
    before = files_under(tmp_path)
    target = str(tmp_path / "target")
    for argv in (
        ["--input", base, "--archive-dir", archive, "--recovery-target-name", "before_purge", "--data-dir", target],
        [
            "--input",
            base,
            "--archive-dir",
            archive,
            "--recovery-target-timeline",
            "2",
            "--recovery-target-name",
            "before_purge",
            "--data-dir",
            target,
        ],
        ["--archive-dir", archive, "--list-wal"],
        ["--archive-dir", archive, "--list-wal", "--recovery-target-timeline", "2"],
    ):
        assert_refused(run(restore_main.main, argv, capsys), "00000002.history")
        assert files_under(tmp_path) == before, argv


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_export_refuses_a_crafted_database_and_ignores_crafted_files(kind, chain, tmp_path, capsys):
    """rusty-db-export reads a data directory: a look-alike file in it is never a
    database, and a crafted --database never becomes a path."""
    paths, _ = chain
    data = str(tmp_path / "data")
    assert restore_main.main(["--input", paths["full"], "--data-dir", data]) == 0
    capsys.readouterr()
    name = crafted(kind, tmp_path)
    if name and "/" not in name and "\x00" not in name and len(name) < 200 and name not in (".", ".."):
        with open(os.path.join(data, "databases", name + ".sqlite"), "wb") as f:
            f.write(b"not a database")
    before = files_under(tmp_path)
    out = str(tmp_path / "out.sql")
    assert_refused(
        run(export_main.main, ["--input-dir", data, "--output", out, "--all", "--database", name], capsys),
        "invalid database name",
        "has no database",
    )
    assert files_under(tmp_path) == before
    code, _out, err = run(export_main.main, ["--input-dir", data, "--output", out, "--table", "customers"], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- the backup catalog


def crafted_catalog(root) -> tuple[list[dict], list[str]]:
    """In-progress server backups, each naming a crafted id or location; the
    files the server would remove (<location>.partial) if it trusted them."""
    real_id = "0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f"
    entries, victims = [], []
    for kind in CRAFTED:
        name = crafted(kind, root)
        for backup_id, location in ((name, str(root / f"{name}.backup")), (real_id, name)):
            entries.append({"backup_id": backup_id, "status": "in_progress", "origin": "api", "location": location})
            partial = location + ".partial"
            can_exist = "\x00" not in partial and len(os.path.basename(partial)) < 256
            if can_exist and os.path.isabs(partial) and os.path.dirname(partial) == str(root):
                victims.append(partial)
    return entries, victims


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_a_crafted_catalog_entry_sets_the_catalog_aside(kind, tmp_path):
    from rustydb_server.backup.catalog import CATALOG_FILE, Catalog

    name = crafted(kind, tmp_path)
    real_id = "0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f"
    for backup_id, location in ((name, f"/backups/{name}.backup"), (real_id, name)):
        entry = {"backup_id": backup_id, "status": "in_progress", "origin": "api", "location": location}
        (tmp_path / CATALOG_FILE).write_text(json.dumps({"format": 1, "backups": [entry]}))
        catalog = Catalog(str(tmp_path))
        assert catalog.set_aside and catalog.list() == [] and catalog.mark_interrupted() == []
        os.unlink(catalog.set_aside)


def test_a_server_started_on_a_crafted_catalog_removes_nothing(server_factory, tmp_path):
    """The server removes the partial files of its interrupted backups at start:
    never one a crafted catalog entry points at."""
    srv = server_factory(name="cat")
    srv.start()
    srv.stop()
    outside = tmp_path / "outside"
    outside.mkdir()
    entries, victims = crafted_catalog(outside)
    for victim in victims:
        with open(victim, "wb") as f:
            f.write(b"not the server's to remove")
    (tmp_path / "cat" / "backup_catalog.json").write_text(json.dumps({"format": 1, "backups": entries}))
    srv.start()
    try:
        assert srv.health()["status"] == "healthy"
        assert "backup catalog damaged" in srv.log()
    finally:
        srv.stop()
    assert victims and all(os.path.exists(v) for v in victims)


# ---------------------------------------------------------------- the installed tools


def test_the_installed_tools_refuse_a_backup_naming_a_path_outside_the_target(chain, tmp_path):
    """The attack of issue 14 item 4 through the real console scripts: a backup
    whose manifest names database <tmp>/victim; --table wrote <tmp>/victim.sqlite."""
    from tests.support.servers import run_tool

    paths, _ = chain
    victim = str(tmp_path / VICTIM)
    forged = str(tmp_path / "forged.backup")
    rewrite(paths["full"], forged, manifest_edit=rename_database(victim))
    target = str(tmp_path / "target")
    for name, argv in (
        ("rusty-db-restore", ["--input", forged, "--table", "customers", "--data-dir", target]),
        ("rusty-db-restore", ["--input", forged, "--data-dir", target]),
        ("rusty-db-backup", ["--query", forged, "SELECT 1"]),
        ("rusty-db-backup", ["--info", forged]),
    ):
        proc = run_tool(name, *argv, env={"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""})
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "not a database name" in lines[0], proc.stderr
    assert not os.path.exists(victim + ".sqlite") and not os.path.exists(target)


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_the_writer_refuses_a_crafted_database_name_and_leaves_no_file(kind, tmp_path):
    """The writer applies the same check, and a header it refuses leaves no partial file behind."""
    from rustydb_server.container.format import new_header

    name = crafted(kind, tmp_path)
    header = new_header("full", databases=[{"name": name, "tables": [], "size_bytes": 0}])
    with pytest.raises(ValueError, match="not a database name"):
        BackupFile(str(tmp_path / "out.backup"), header)
    assert os.listdir(tmp_path) == []
