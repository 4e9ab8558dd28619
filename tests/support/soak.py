"""A kill -9 soak against a real server: the code bench/soak.py and tests/test_soak_e2e.py share.

Several clients write multi-row transactions to several databases while
backups (full and incremental, by rusty-db-backup) and WAL archiving run;
each cycle the server is killed with SIGKILL at a random moment and
restarted, and every transaction the server acknowledged must be there, whole,
and none it did not acknowledge may be there in part. Every row of a
transaction carries its marker (writer, n) and the transaction's row count
(parts), so a half-present one is a group whose count is not its parts.

At the end every backup taken is checked with ``rusty-db-backup --verify``,
the last one is restored (with its chain) and a PITR restore replays the
whole archive on the first full backup; both must hold what was acknowledged
(before the backup started, for the backup; everything, for the PITR).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable

from rustydb_client import client as rc
from tests.support.servers import ServerProcess, run_tool

#: The rows of every transaction, grouped: one row per (writer, n).
GROUPS_SQL = "SELECT writer, n, count(*), min(parts), max(parts) FROM log GROUP BY writer, n"
KEY_FILE = "backup.key"


@dataclasses.dataclass
class SoakConfig:
    cycles: int = 100
    clients: int = 4
    databases: int = 2
    seed: int = 1
    #: Seconds of load before the kill: drawn from [min_run, max_run] each cycle.
    min_run: float = 0.5
    max_run: float = 2.0
    #: Start a backup in a cycle with this probability, at a random moment before the kill.
    backup_chance: float = 0.5
    #: Every how many backups taken the next one is full (the others incremental).
    full_every: int = 4
    #: Of the backups started during the cycles, this share are full backups the
    #: server writes itself (POST /api/v1/admin/backup) instead of rusty-db-backup's.
    api_share: float = 0.3


@dataclasses.dataclass
class Check:
    """What one look at a data directory found against what was acknowledged."""

    where: str
    expected: int = 0  # acknowledged commits that had to be there
    lost: int = 0  # of those, not there
    half_present: int = 0  # transactions with some of their rows only
    unacknowledged_present: int = 0  # in flight at the kill, committed whole (allowed)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.half_present == 0


@dataclasses.dataclass
class SoakResult:
    cycles: int = 0
    commits_acknowledged: int = 0
    lost: int = 0
    half_present: int = 0
    unacknowledged_present: int = 0
    backups_taken: int = 0
    backups_interrupted: int = 0
    backups_verified: int = 0
    backups_bad: int = 0  # a failed backup that left its file, or a file that does not verify
    api_backups_taken: int = 0  # of backups_taken, written by the server (HTTP API)
    segments_archived: int = 0
    restore: Check | None = None
    pitr: Check | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.lost == 0
            and self.half_present == 0
            and self.backups_bad == 0
            and self.backups_verified == self.backups_taken
            and self.restore is not None
            and self.restore.ok
            and self.pitr is not None
            and self.pitr.ok
        )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["ok"] = self.ok
        return out

    def lines(self) -> list[str]:
        lines = [
            f"cycles (kill -9 and restart): {self.cycles}",
            f"commits acknowledged: {self.commits_acknowledged}",
            f"acknowledged commits lost: {self.lost}",
            f"transactions half-present: {self.half_present}",
            f"in flight at a kill and found committed whole: {self.unacknowledged_present}",
            f"backups taken: {self.backups_taken}, {self.api_backups_taken} of them through the HTTP API "
            f"(interrupted by a kill: {self.backups_interrupted})",
            f"backups verified: {self.backups_verified}; bad: {self.backups_bad}",
            f"WAL segments archived: {self.segments_archived}",
        ]
        for check in (self.restore, self.pitr):
            if check is not None:
                lines.append(
                    f"{check.where}: {check.expected} acknowledged commits expected, "
                    f"{check.lost} lost, {check.half_present} half-present"
                )
        lines.extend(f"PROBLEM: {p}" for p in self.problems)
        lines.append(f"wall time: {self.wall_seconds:.1f} s")
        lines.append("result: " + ("nothing lost" if self.ok else "FAILED"))
        return lines


class Ledger:
    """The transactions acknowledged, in order: (database, writer, n, parts)."""

    def __init__(self):
        self.acked: list[tuple[str, int, int, int]] = []  # list.append is atomic

    def mark(self) -> int:
        return len(self.acked)

    def since_start(self, upto: int | None = None) -> list[tuple[str, int, int, int]]:
        return self.acked[:upto] if upto is not None else list(self.acked)


def _writer(port: int, database: str, writer: int, seed: int, ledger: Ledger, stop: threading.Event) -> None:
    """Commit transactions of 2-4 rows until stopped or the server is gone."""
    rnd = random.Random(seed)
    try:
        conn = rc.connect("127.0.0.1", port, database=database, timeout=10)
    except (rc.ClientError, OSError):
        return
    n = 0
    try:
        while not stop.is_set():
            n += 1
            parts = rnd.randint(2, 4)
            try:
                conn.execute("BEGIN")
                for part in range(1, parts + 1):
                    conn.execute(
                        f"INSERT INTO log(writer, n, part, parts, pad) VALUES ({writer}, {n}, {part}, {parts}, "
                        "randomblob(200))"
                    )
                conn.execute("COMMIT")
            except (rc.ClientError, OSError):
                return
            ledger.acked.append((database, writer, n, parts))
    finally:
        try:
            conn.close()
        except (rc.ClientError, OSError):
            pass


def check_groups(where: str, groups: dict[str, list], expected: list[tuple[str, int, int, int]]) -> Check:
    """Compare the (writer, n, count, min parts, max parts) rows of each database with what was acknowledged."""
    check = Check(where, expected=len(expected))
    present: dict[tuple[str, int, int], int] = {}
    for database, rows in groups.items():
        for writer, n, count, low, high in rows:
            if not (count == low == high):
                check.half_present += 1
            present[(database, writer, n)] = count
    wanted = set()
    for database, writer, n, _parts in expected:
        wanted.add((database, writer, n))
        if (database, writer, n) not in present:
            check.lost += 1
    check.unacknowledged_present = sum(1 for key in present if key not in wanted)
    return check


class Soak:
    def __init__(self, config: SoakConfig, workdir: str, say: Callable[[str], None] = lambda line: None):
        self.config = config
        self.workdir = workdir
        self.say = say
        self.rnd = random.Random(config.seed)
        self.ledger = Ledger()
        self.result = SoakResult()
        self.databases = [f"soak{i}" for i in range(config.databases)]
        self.archive = os.path.join(workdir, "archive")
        self.backups = os.path.join(workdir, "backups")
        self.key_file = os.path.join(workdir, KEY_FILE)
        self.api_backups = os.path.join(workdir, "api-backups")
        self.api_started = 0
        #: Backups taken: (path, type, ledger mark when it was started).
        self.taken: list[tuple[str, str, int]] = []
        self.server: ServerProcess | None = None

    # ------------------------------------------------------------ the run

    def run(self) -> SoakResult:
        started = time.monotonic()
        try:
            self._setup()
            self._backup(wait=True, kind="full")  # the first full backup: the chain's root and the PITR base
            for cycle in range(self.config.cycles):
                self._cycle(cycle)
                self.result.cycles += 1
            self._backup(wait=True, kind="incremental")  # the last, so its restore is a chain's
            self._finish()
        except (AssertionError, rc.ClientError, OSError, subprocess.SubprocessError) as exc:
            # a server that did not start or answer, a tool that failed or hung
            self.result.problems.append(f"the soak stopped: {str(exc).splitlines()[0] if str(exc) else repr(exc)}")
        finally:
            if self.server is not None and self.server.proc.poll() is None:
                try:
                    self.server.stop()
                except subprocess.TimeoutExpired:
                    self.result.problems.append("the server did not stop on SIGTERM within 30 s")
                    self.server.kill()
            self.result.commits_acknowledged = len(self.ledger.acked)
            self.result.wall_seconds = time.monotonic() - started
        return self.result

    def _setup(self) -> None:
        os.makedirs(self.archive)
        os.makedirs(self.backups)
        os.makedirs(self.api_backups)
        run_tool("rusty-db-backup", "--create-key-file", self.key_file, check=True)
        conf = os.path.join(self.workdir, "rustydb.toml")
        with open(conf, "w") as f:
            f.write("wal_segment_size = 65536\n")  # small segments: several complete and archive each cycle
            f.write("archive_mode = true\n")
            f.write(f"archive_dest = '{self.archive}'\n")
            f.write("archive_timeout = 1\n")
            f.write("checkpoint_wal_size = 1048576\n")  # checkpoints (and WAL removal) during the cycles
            f.write(f"backup_dir = '{self.api_backups}'\n")
            f.write(f"backup_key_file = '{self.key_file}'\n")
        self.server = ServerProcess(os.path.join(self.workdir, "data"), extra_args=["--config", conf]).start()
        for database in self.databases:
            self.server.sql(f"CREATE DATABASE {database}")
            self.server.sql(
                "CREATE TABLE log(writer INTEGER, n INTEGER, part INTEGER, parts INTEGER, pad BLOB, "
                "PRIMARY KEY(writer, n, part))",
                "--database",
                database,
            )

    def _cycle(self, cycle: int) -> None:
        cfg = self.config
        stop = threading.Event()
        writers = [
            threading.Thread(
                target=_writer,
                args=(
                    self.server.port,
                    self.databases[w % len(self.databases)],
                    cycle * 1000 + w,  # each cycle's writers have numbers of their own
                    self.rnd.getrandbits(32),
                    self.ledger,
                    stop,
                ),
                daemon=True,
            )
            for w in range(cfg.clients)
        ]
        for t in writers:
            t.start()
        run_for = self.rnd.uniform(cfg.min_run, cfg.max_run)
        deadline = time.monotonic() + run_for
        backup = None
        if self.rnd.random() < cfg.backup_chance:
            time.sleep(self.rnd.uniform(0, run_for))
            take = self._api_backup if self.rnd.random() < cfg.api_share else self._backup
            backup = threading.Thread(target=take, daemon=True)
            backup.start()
            if self.rnd.random() < 0.5:  # aim the kill at the backup, while it runs
                deadline = time.monotonic() + self.rnd.uniform(0.05, 0.4)
        time.sleep(max(0.0, deadline - time.monotonic()))
        self.server.kill()  # SIGKILL at a random moment: commits, checkpoints, archiving, a backup in flight
        stop.set()
        for t in writers:
            t.join(30)
        if backup is not None:
            backup.join(120)
        self.server.start()
        check = self.check_server(f"after kill {cycle + 1}", self.ledger.since_start())
        self.result.lost = max(self.result.lost, check.lost)
        self.result.half_present = max(self.result.half_present, check.half_present)
        self.result.unacknowledged_present = check.unacknowledged_present
        if not check.ok:
            self.result.problems.append(
                f"after kill {cycle + 1}: {check.lost} acknowledged commits lost, "
                f"{check.half_present} transactions half-present"
            )
        self.say(
            f"cycle {cycle + 1}/{cfg.cycles}: {len(self.ledger.acked)} commits acknowledged, "
            f"{check.lost} lost, {check.half_present} half-present, {len(self.taken)} backups"
        )

    # ------------------------------------------------------------ backups

    def _backup(self, wait: bool = False, kind: str | None = None) -> None:
        """Take the next backup; a kill may interrupt it (then its file must not exist)."""
        number = len(self.taken) + self.result.backups_interrupted + 1
        if kind is None:
            kind = "full" if not self.taken or len(self.taken) % self.config.full_every == 0 else "incremental"
        full = kind == "full"
        out = os.path.join(self.backups, f"{number:04d}-{kind}.backup")
        args = ["--type", kind, "--output", out, "--compress", "--encrypt", "--key-file", self.key_file]
        args += ["--port", str(self.server.port), "--nice", "0"]
        if not full:
            args += ["--base-backup", self.taken[-1][0]]
        mark = self.ledger.mark()
        proc = run_tool("rusty-db-backup", *args, timeout=120)
        if proc.returncode == 0:
            self.taken.append((out, kind, mark))
            self.result.backups_taken += 1
        elif wait:
            raise AssertionError(f"backup {out} failed with the server up: {proc.stderr.strip()}")
        else:
            self.result.backups_interrupted += 1
            if os.path.exists(out):
                self.result.backups_bad += 1
                self.result.problems.append(f"backup {out} failed ({proc.stderr.strip()}) but left its file")

    def _api_backup(self) -> None:
        """A full backup the server writes into backup_dir; a kill may interrupt it."""
        self.api_started += 1
        body = {"backup_type": "full", "compression": True, "encryption": True}
        try:
            entry = self._api("POST", "/api/v1/admin/backup", body)
            while entry["status"] == "in_progress":
                time.sleep(0.05)
                entry = self._api("GET", f"/api/v1/admin/backup/{entry['backup_id']}")
        except (OSError, ValueError):
            pass  # the server was killed under it: its catalog says what became of the backup

    def _api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.http_port}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        for path, _kind, _mark in self.taken:
            proc = run_tool("rusty-db-backup", "--verify", path, "--key-file", self.key_file, timeout=120)
            if proc.returncode == 0:
                self.result.backups_verified += 1
            else:
                self.result.backups_bad += 1
                self.result.problems.append(f"backup {path} does not verify: {proc.stderr.strip()}")
        final = self.ledger.since_start()
        self._check_api_backups()
        self.server.sql("CREATE RESTORE POINT 'soak_end'")
        self.server.wait_archived()
        self.server.stop()
        self.result.segments_archived = len([n for n in os.listdir(self.archive) if not n.startswith(".")])
        # The last backup, with its chain: what was acknowledged before it started.
        last, kind, mark = self.taken[-1]
        target = os.path.join(self.workdir, "restored")
        restore = ["--input", last, "--data-dir", target, "--key-file", self.key_file]
        if kind != "full":
            restore += ["--chain-dir", self.backups]
        proc = run_tool("rusty-db-restore", *restore, timeout=300)
        if proc.returncode != 0:
            self.result.problems.append(f"restore of {last} failed: {proc.stderr.strip()}")
        else:
            self.result.restore = self.check_directory(f"restore of {os.path.basename(last)}", target, final[:mark])
        # The first full backup and the whole archive: everything acknowledged.
        base = self.taken[0][0]
        target = os.path.join(self.workdir, "pitr")
        proc = run_tool(
            "rusty-db-restore",
            *("--input", base, "--archive-dir", self.archive, "--recovery-target-name", "soak_end"),
            *("--data-dir", target, "--key-file", self.key_file),
            timeout=600,
        )
        if proc.returncode != 0:
            self.result.problems.append(f"PITR from {base} failed: {proc.stderr.strip()}")
        else:
            self.result.pitr = self.check_directory("PITR to the end of the archive", target, final)
        for check in (self.result.restore, self.result.pitr):
            if check is not None and not check.ok:
                self.result.problems.append(
                    f"{check.where}: {check.lost} acknowledged commits lost, {check.half_present} half-present"
                )

    def _check_api_backups(self) -> None:
        """Every backup the server's catalog lists as completed verifies; those a kill
        interrupted are marked failed as interrupted (none left in_progress, none failed
        for another reason) and no partial file is left on disk."""
        completed = 0
        for entry in self._api("GET", "/api/v1/admin/backups")["backups"]:
            if entry.get("origin") != "api":
                continue
            if entry["status"] == "failed" and str(entry.get("error")).startswith("interrupted"):
                continue
            if entry["status"] != "completed":
                self.result.backups_bad += 1
                self.result.problems.append(
                    f"backup {entry['backup_id']} through the API: {entry['status']} ({entry.get('error')})"
                )
            else:
                completed += 1
                self.result.backups_taken += 1
                self.result.api_backups_taken += 1
                proc = run_tool("rusty-db-backup", "--verify", entry["location"], "--key-file", self.key_file)
                if proc.returncode == 0:
                    self.result.backups_verified += 1
                else:
                    self.result.backups_bad += 1
                    self.result.problems.append(f"backup {entry['location']} does not verify: {proc.stderr.strip()}")
        # Interrupted: failed as interrupted, or killed before the server had its request.
        self.result.backups_interrupted += self.api_started - completed
        partial = [n for n in os.listdir(self.api_backups) if n.endswith(".partial")]
        if partial:
            self.result.problems.append(f"partial backup files left in {self.api_backups}: {partial}")

    # ------------------------------------------------------------ checks

    def check_server(self, where: str, expected) -> Check:
        groups = {}
        for database in self.databases:
            with rc.connect("127.0.0.1", self.server.port, database=database) as c:
                groups[database] = c.execute(GROUPS_SQL).rows
        return check_groups(where, groups, expected)

    def check_directory(self, where: str, data_dir: str, expected) -> Check:
        """Start a server on a restored directory and check it as the live one."""
        live, self.server = self.server, ServerProcess(data_dir).start()
        try:
            return self.check_server(where, expected)
        finally:
            self.server.stop()
            self.server = live


def run_soak(config: SoakConfig, workdir: str, say: Callable[[str], None] = lambda line: None) -> SoakResult:
    """Run the soak in ``workdir`` (which must exist and be empty) and return its figures."""
    return Soak(config, workdir, say).run()
