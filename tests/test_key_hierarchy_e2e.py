"""The key hierarchy end to end: a real server archiving with a passphrase, the
real tools restoring from it.

- A PITR over many archived segments runs the KDF once per salt: once for the
  server's archive (every segment it wrote shares its KEK) and once for the
  base backup, which the backup tool encrypted in a process of its own;
  ``--list-wal`` over the same archive runs it once. The restore runs through
  the tool's main() in this process so the runs can be counted; its two runs
  go side by side (the archive's KEK is derived while the base restores).
- An archive written before format 3 (tests/data/format2-archive: a salt and a
  scrypt run per segment) restores, and keeps restoring once a server of today
  has archived format 3 segments beside it on a new timeline.
- A wrong passphrase is refused with a clear error, not taken for damage.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import threading

import pytest

from rustydb_client import client as rc
from rustydb_server import crypto, keys
from rustydb_server.container import format as F
from rustydb_server.container.reader import BackupReader
from rustydb_server.tools import restore_main
from tests.support.servers import restore_to_target, run_tool
from tests.test_pitr_e2e import live_digest, restored_digest, run_workload

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "format2-archive")


@pytest.fixture
def passphrase_env(monkeypatch, tmp_path) -> dict:
    """A passphrase of this test's own (the process caches derived keys), no key file."""
    env = {
        keys.ENV_PASSPHRASE: "e2e passphrase " + os.urandom(8).hex(),
        keys.ENV_KEY_FILE: "",
        keys.ENV_CONFIG: str(tmp_path / "no-such-config.toml"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def kdf_runs(monkeypatch) -> list[dict]:
    runs: list[dict] = []
    real = crypto.derive_kek

    def counting(passphrase, params):
        runs.append(params)
        return real(passphrase, params)

    monkeypatch.setattr(crypto, "derive_kek", counting)
    return runs


def start_archiving(srv, archive) -> None:
    for stmt in (
        "ALTER SYSTEM SET archive_mode = on;",
        f"ALTER SYSTEM SET archive_dest = '{archive}';",
        "ALTER SYSTEM SET archive_encryption = on;",
    ):
        proc = srv.sql(stmt)
        assert proc.returncode == 0, proc.stderr


def key_params(path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        r = BackupReader(f)
        kw = F.unpack_msgpack(r.layout.keywrap_bytes)
        return r.layout.version, F.unpack_msgpack(kw["params"])


def test_pitr_over_many_segments_runs_the_kdf_once_per_salt(
    server_factory, tmp_path, passphrase_env, kdf_runs, capsys, monkeypatch
):
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="primary", extra_args=["--config", str(conf)], env=passphrase_env).start()
    start_archiving(srv, archive)
    srv.sql("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER, note TEXT);")
    srv.sql("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB);")
    srv.sql("CREATE TABLE filler(id INTEGER PRIMARY KEY, body BLOB);")
    base = tmp_path / "base.backup"
    proc = run_tool(
        "rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--encrypt", "--port", str(srv.port)
    )
    assert proc.returncode == 0, proc.stderr
    conn = rc.connect(port=srv.port)
    history: list[dict] = []
    rnd = random.Random(11)
    for _ in range(5):  # the workload, with filler between so the WAL before the target spans many segments
        run_workload(conn, rnd, 20, history, [])
        conn.execute(f"INSERT INTO filler(body) VALUES {', '.join(['(randomblob(20000))'] * 5)}")
    run_workload(conn, rnd, 5, history, [])
    srv.wait_archived()
    conn.close()
    srv.stop()
    segments = sorted(archive.glob("*.walz"))
    assert len(segments) >= 8
    found = [key_params(p) for p in segments]
    assert {v for v, _ in found} == {3}
    assert len({p["salt"] for _, p in found}) == 1  # the server wrote every segment under one KEK
    base_salt = key_params(base)[1]["salt"]
    assert base_salt != found[0][1]["salt"]  # the backup tool's process chose its own
    assert kdf_runs == []

    target = history[-2]
    out = str(tmp_path / "restored")
    argv = ["--input", str(base), "--archive-dir", str(archive), "--data-dir", out]
    # The two runs go side by side: the archive's KEK is derived while the base's is
    # (a run waiting for the other would break the barrier, and the restore with it).
    counting, meet = crypto.derive_kek, threading.Barrier(2, timeout=10)

    def side_by_side(passphrase, params):
        meet.wait()
        return counting(passphrase, params)

    monkeypatch.setattr(crypto, "derive_kek", side_by_side)
    assert restore_main.main([*argv, "--recovery-target-txid", str(target["txid"]), "--json"]) == 0
    monkeypatch.setattr(crypto, "derive_kek", counting)
    capsys.readouterr()
    assert restored_digest(out) == target["digest"]
    assert sorted(p["salt"] for p in kdf_runs) == sorted([base_salt, found[0][1]["salt"]])

    kdf_runs.clear()
    keys._PASSPHRASE_KEKS.__init__()  # as in a new process
    assert restore_main.main(["--list-wal", "--archive-dir", str(archive), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing  # the transactions were listed from every segment
    assert [p["salt"] for p in kdf_runs] == [found[0][1]["salt"]]


def test_an_archive_from_before_format_3_restores_and_mixes_with_new_segments(
    server_factory, tmp_path, passphrase_env, monkeypatch
):
    meta = json.loads(open(os.path.join(FIXTURE, "history.json")).read())
    history = meta["history"]
    monkeypatch.setenv(keys.ENV_PASSPHRASE, meta["passphrase"])
    env = {**passphrase_env, keys.ENV_PASSPHRASE: meta["passphrase"]}
    archive = tmp_path / "archive"
    shutil.copytree(os.path.join(FIXTURE, "archive"), archive)
    base = tmp_path / "base.backup"
    shutil.copy(os.path.join(FIXTURE, "base.backup"), base)
    old_names = sorted(os.listdir(archive))
    assert {key_params(archive / n)[0] for n in old_names} == {2} and key_params(base)[0] == 2

    # the old archive alone: to a point in the middle, and to its end
    middle = history[len(history) // 2]
    out = tmp_path / "middle"
    proc = restore_to_target(base, archive, out, "--recovery-target-txid", str(middle["txid"]))
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out)) == middle["digest"]
    out = tmp_path / "end"
    proc = restore_to_target(base, archive, out, "--recovery-target-txid", str(history[-1]["txid"]))
    assert proc.returncode == 0, proc.stderr

    # today's server continues from there on timeline 2, archiving format 3 beside format 2
    conf = tmp_path / "c.toml"
    conf.write_text("wal_segment_size = '64kB'\n")
    srv = server_factory(name="upgraded", extra_args=["--config", str(conf)], env=env)
    srv.data_dir = str(out)
    srv.start()
    start_archiving(srv, archive)
    conn = rc.connect(port=srv.port)
    assert live_digest(conn) == history[-1]["digest"]
    history2 = list(history)
    run_workload(conn, random.Random(3), 130, history2, [], prefix="new-")
    srv.wait_archived()
    conn.close()
    srv.stop()
    new_names = sorted(set(os.listdir(archive)) - set(old_names))
    new_segments = [n for n in new_names if n.endswith(".walz")]
    assert len(new_segments) >= 2 and all(n.startswith("00000002") for n in new_segments)
    assert {key_params(archive / n)[0] for n in new_segments} == {3}
    for n in old_names:  # the old segments are left as they were
        assert (archive / n).read_bytes() == open(os.path.join(FIXTURE, "archive", n), "rb").read()

    # a PITR from the old base through old and new segments
    target = history2[-3]
    out = tmp_path / "mixed"
    proc = restore_to_target(
        base, archive, out, "--recovery-target-txid", str(target["txid"]), "--recovery-target-timeline", "latest"
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out)) == target["digest"]

    # a wrong passphrase is named as such
    proc = run_tool(
        "rusty-db-restore",
        *("--input", str(base), "--archive-dir", str(archive), "--data-dir", str(tmp_path / "wrong")),
        *("--recovery-target-txid", str(target["txid"]), "--recovery-target-timeline", "latest"),
        env={keys.ENV_PASSPHRASE: "not the passphrase"},
    )
    assert proc.returncode == 1
    assert "does not match" in proc.stderr and "damaged" not in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "wrong") or not os.listdir(tmp_path / "wrong")

    # --rotate-key re-wraps every file, old layout and new, from the passphrase to a key file
    new_key = tmp_path / "new.key"
    keys.create_key_file(str(new_key))
    files = [str(base), *(str(archive / n) for n in sorted(os.listdir(archive)) if n.endswith(".walz"))]
    before = {f: key_params(f)[0] for f in files}
    proc = run_tool("rusty-db-backup", "--rotate-key", "-", str(new_key), *files, env=env)
    assert proc.returncode == 0, proc.stderr
    assert {f: key_params(f)[0] for f in files} == before  # each file keeps its format
    assert {key_params(f)[1]["kdf"] for f in files} == {"keyfile"}
    out = tmp_path / "rotated"
    proc = run_tool(
        "rusty-db-restore",
        *("--input", str(base), "--archive-dir", str(archive), "--data-dir", str(out), "--key-file", str(new_key)),
        *("--recovery-target-txid", str(target["txid"]), "--recovery-target-timeline", "latest"),
        env={keys.ENV_PASSPHRASE: ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_digest(str(out)) == target["digest"]


def test_a_wrong_passphrase_for_a_format_3_archive_is_refused_clearly(tmp_path, passphrase_env):
    """--list-wal over segments of today's format with another passphrase."""
    from rustydb_server.archive import segment_file

    archive = tmp_path / "archive"
    archive.mkdir()
    seg = tmp_path / "000000010000000000000003"
    seg.write_bytes(bytes(65536))
    segment_file.pack_segment(
        str(seg),
        str(archive / segment_file.archive_name(seg.name)),
        system_id=7,
        segment_size=65536,
        codec="zstd",
        key=keys.PassphraseSource(passphrase_env[keys.ENV_PASSPHRASE]),
    )
    with open(archive / segment_file.archive_name(seg.name), "rb") as f:
        assert BackupReader(io.BytesIO(f.read())).layout.version == 3
    proc = run_tool("rusty-db-restore", "--list-wal", "--archive-dir", str(archive), env={keys.ENV_PASSPHRASE: "nope"})
    assert proc.returncode == 1, proc.stdout
    assert "does not match" in proc.stderr and "Traceback" not in proc.stderr
