"""The operations the fault matrix (tests/support/fault_matrix.py) runs, and what
each must guarantee after a fault at any of its file operations."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import threading
import uuid

import trio

from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file as sf
from rustydb_server.archive.archiver import Archiver
from rustydb_server.backup.catalog import Catalog
from rustydb_server.backup.request import BackupRequest
from rustydb_server.backup.service import BackupService
from rustydb_server.container.file import PARTIAL_SUFFIX
from rustydb_server.container.format import BackupType
from rustydb_server.container.reader import BackupReader
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine, FatalWalError
from rustydb_server.engine.session import SqlSession
from rustydb_server.errors import ReportedError
from rustydb_server.fileops import REAL, FileOps
from rustydb_server.restore import pitr
from rustydb_server.restore.chain import restore_chain
from rustydb_server.restore.full import restore_full
from rustydb_server.restore.incremental import apply_incremental
from rustydb_server.settings import Settings
from rustydb_server.wal import archive_status
from rustydb_server.wal import segment as walseg

from .fault_matrix import LOST, Injector, Scenario

SEGMENT = 64 * 1024
ROWS_SQL = "SELECT v, count(*) FROM t GROUP BY v ORDER BY v"


def settings(data: str, **extra) -> Settings:
    return Settings.load(None, data, {"wal_segment_size": SEGMENT, **extra})


def open_engine(data: str, ops: FileOps = REAL, **extra) -> Engine:
    return Engine.open(dd.DataDir(data, ops), settings(data, **extra), ops)


def sql(session: SqlSession, text: str):
    from rustydb_client.sqlsplit import leading_keywords

    _result, rows, _fin = session.run(text, leading_keywords(text, 2), 1_000_000)
    return rows


def insert(session: SqlSession, marker: str, rows: int, pad: int = 20) -> None:
    sql(
        session,
        f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<{rows}) "
        # random text: a bulk insert's rows step is compressed, and spaces
        # would shrink the record that must span segments to almost nothing
        f"INSERT INTO t(v, pad) SELECT '{marker}', substr(hex(randomblob({pad})), 1, {pad}) FROM c",
    )


def counts(data: str, **extra) -> dict[str, int]:
    """{marker: rows} of the data directory, after its recovery (raises if that fails)."""
    engine = open_engine(data, **extra)
    try:
        session = SqlSession(engine, "rustydb", 1)
        try:
            return {v: n for v, n in sql(session, ROWS_SQL)}
        finally:
            session.close()
    finally:
        engine.close()


def recovered_counts(data: str, problems: list[str], **extra) -> dict[str, int] | None:
    try:
        return counts(data, **extra)
    except Exception as e:
        problems.append(f"{LOST}the data directory does not recover: {type(e).__name__}: {e}")
        return None


def new_source(data: str) -> Engine:
    engine = open_engine(data)
    session = SqlSession(engine, "rustydb", 1)
    sql(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad TEXT)")
    insert(session, "base", 10)
    session.close()
    return engine


# ------------------------------------------------------------------- engine


@dataclasses.dataclass
class EngineState:
    root: str
    ops: Injector
    engine: Engine
    session: SqlSession
    acked: dict[str, int]  # marker: rows acknowledged
    maybe: dict[str, int]  # marker: rows of an operation neither acknowledged nor refused cleanly


class EngineScenario(Scenario):
    """An engine operation; afterwards every acknowledged row must be there."""

    #: rows of the operation under test, if it writes any
    act_rows: tuple[str, int, int] | None = None
    #: archive_mode: segments are marked ready (on), or removed by checkpoints (off)
    archive = True

    def build(self, template: str) -> None:
        engine = new_source(os.path.join(template, "data"))
        engine.close()

    def prepare(self, root: str, ops: Injector) -> EngineState:
        data = os.path.join(root, "data")
        engine = open_engine(data, ops, archive_mode=self.archive, archive_dest=os.path.join(root, "archive"))
        state = EngineState(root, ops, engine, SqlSession(engine, "rustydb", 1), {"base": 10}, {})
        self.before(state)
        return state

    def before(self, state: EngineState) -> None:
        pass

    def act(self, state: EngineState) -> None:
        marker, rows, pad = self.act_rows
        state.maybe[marker] = rows
        insert(state.session, marker, rows, pad)
        state.acked[marker] = state.maybe.pop(marker)

    def clean_error(self, fault: str, exc: BaseException) -> list[str]:
        if not isinstance(exc, ReportedError):
            return [f"not an error a client is told of: {type(exc).__name__}: {exc}"]
        if isinstance(exc, FatalWalError):
            return []  # a failed WAL write or fsync stops the server (never retried)
        if fault == "enospc" and exc.code != "disk_full":
            return [f"a full disk reported as {exc.code}, not disk_full: {exc}"]
        return []

    def after_error(self, state: EngineState, fault: str, exc: BaseException) -> list[str]:
        if getattr(exc, "code", None) == "committed_not_applied":  # said to be committed: it must be
            for marker in list(state.maybe):
                state.acked[marker] = state.maybe.pop(marker)
        if state.engine.fatal_error:
            try:
                insert(state.session, "after", 1)
            except ReportedError:
                return []
            return ["a commit was acknowledged after the WAL failed"]
        try:
            insert(state.session, "after", 1)  # space is back: the engine works again by itself
        except Exception as e:
            return [f"the engine does not work again once the disk does: {type(e).__name__}: {e}"]
        state.acked["after"] = 1
        return []

    def close(self, state: EngineState, crashed: bool) -> None:
        state.session.close()
        state.engine.close(clean=not crashed and not state.engine.fatal_error)

    def check(self, root: str, outcome: str, state: EngineState) -> list[str]:
        problems: list[str] = []
        archive = os.path.join(root, "archive")
        got = recovered_counts(os.path.join(root, "data"), problems, archive_mode=self.archive, archive_dest=archive)
        if got is None:
            return problems
        for marker, rows in state.acked.items():
            if got.get(marker, 0) != rows:
                problems.append(f"{LOST}acknowledged {marker!r}: {rows} rows, found {got.get(marker, 0)}")
        for marker, rows in state.maybe.items():
            if got.get(marker, 0) not in (0, rows):
                problems.append(f"{LOST}unacknowledged {marker!r} half there: {got.get(marker, 0)} of {rows} rows")
        unknown = set(got) - set(state.acked) - set(state.maybe)
        if unknown:
            problems.append(f"{LOST}rows nobody wrote: {sorted(unknown)}")
        if self.archive:  # a completed segment never mark-less once the server ran again: archived some day
            data = os.path.join(root, "data")
            segments = walseg.list_segments(os.path.join(data, dd.WAL_DIR))
            status_dir = os.path.join(data, dd.ARCHIVE_STATUS_DIR)
            unmarked = [name for _, _, name in segments[:-1] if not archive_status.is_marked(status_dir, name)]
            if unmarked:
                problems.append(f"{LOST}completed WAL segments never marked for archiving: {unmarked}")
        return problems


class Commit(EngineScenario):
    """A three-row transaction: WAL append, fsync, SQLite's commit."""

    name = "commit"
    act_rows = ("new", 3, 20)


class CommitAcrossSegments(EngineScenario):
    """A transaction whose record fills the segment and needs new ones."""

    name = "commit_segments"
    act_rows = ("big", 300, 400)


class Checkpoint(EngineScenario):
    """A checkpoint after WAL that spans segments: SQLite checkpoint, control
    file, removal of the segments it no longer needs."""

    name = "checkpoint"
    archive = False  # so that it removes the segments before its redo point

    def before(self, state: EngineState) -> None:
        for i in range(3):
            insert(state.session, f"c{i}", 100, 400)
            state.acked[f"c{i}"] = 100

    def act(self, state: EngineState) -> None:
        state.engine.checkpoint()

    def after_error(self, state: EngineState, fault: str, exc: BaseException) -> list[str]:
        problems = super().after_error(state, fault, exc)
        if not state.engine.fatal_error:
            try:
                state.engine.checkpoint()
            except Exception as e:
                problems.append(f"a checkpoint fails again once the disk works: {type(e).__name__}: {e}")
        return problems


class SwitchWal(EngineScenario):
    """SWITCH WAL: a switch record, the next segment created, the old one marked ready."""

    name = "switch_wal"

    def before(self, state: EngineState) -> None:
        insert(state.session, "pre", 5)
        state.acked["pre"] = 5

    def act(self, state: EngineState) -> None:
        state.engine.switch_wal()


# ------------------------------------------------------------------ archive


@dataclasses.dataclass
class ArchiveState:
    root: str
    engine: Engine
    archiver: Archiver


def _archiver(engine: Engine, ops: FileOps) -> Archiver:
    return Archiver(engine, engine.settings, Doorbell(), fileops=ops)


def _archive_all(archiver: Archiver) -> list[str]:
    names = archive_status.waiting(archiver.status_dir)
    for name in names:
        archiver._archive_one(name)
    return names


class Archive(Scenario):
    """The archiver copying the segments marked ready into archive_dest."""

    name = "archive"
    ci_every = 2

    def build(self, template: str) -> None:
        data = os.path.join(template, "data")
        os.mkdir(os.path.join(template, "archive"))
        engine = open_engine(data, archive_mode=True, archive_dest=os.path.join(template, "archive"))
        session = SqlSession(engine, "rustydb", 1)
        sql(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad TEXT)")
        insert(session, "base", 300, 400)  # two segments and some
        engine.switch_wal()
        session.close()
        engine.close(clean=False)

    def prepare(self, root: str, ops: Injector) -> ArchiveState:
        engine = open_engine(os.path.join(root, "data"), archive_mode=True, archive_dest=os.path.join(root, "archive"))
        return ArchiveState(root, engine, _archiver(engine, ops))

    def act(self, state: ArchiveState) -> None:
        _archive_all(state.archiver)

    def after_error(self, state: ArchiveState, fault: str, exc: BaseException) -> list[str]:
        try:
            _archive_all(state.archiver)  # the archiver's retry, the disk working again
        except Exception as e:
            return [f"archiving fails again once the disk works: {type(e).__name__}: {e}"]
        return []

    def close(self, state: ArchiveState, crashed: bool) -> None:
        state.engine.close(clean=False)

    def check(self, root: str, outcome: str, state: ArchiveState) -> list[str]:
        problems: list[str] = []
        data = os.path.join(root, "data")
        archive = os.path.join(root, "archive")
        wal_dir = os.path.join(data, dd.WAL_DIR)
        status_dir = os.path.join(data, dd.ARCHIVE_STATUS_DIR)
        control = dd.DataDir(data).read_control()
        for segments in sf.list_archive(archive).values():
            for path in segments.values():
                problems += _check_archived(path, wal_dir, control.system_id)
        for mark in os.listdir(status_dir):
            if mark.endswith(".done") and not os.path.exists(
                os.path.join(archive, sf.archive_name(mark.removesuffix(".done")))
            ):
                problems.append(f"{LOST}{mark}: marked archived, but the archive does not hold it")
        if outcome == "ok" and archive_status.waiting(status_dir):
            problems.append(f"reported archived, still waiting: {archive_status.waiting(status_dir)}")
        # The server started again archives what is left, whatever the fault left behind.
        try:
            engine = open_engine(data, archive_mode=True, archive_dest=archive)
        except Exception as e:
            return [*problems, f"{LOST}the data directory does not recover: {type(e).__name__}: {e}"]
        try:
            _archive_all(_archiver(engine, REAL))
        except Exception as e:
            problems.append(f"archiving after the fault fails: {type(e).__name__}: {e}")
        finally:
            engine.close(clean=False)
        for segments in sf.list_archive(archive).values():
            for path in segments.values():
                problems += _check_archived(path, wal_dir, control.system_id)
        return problems


def _check_archived(path: str, wal_dir: str, system_id: int) -> list[str]:
    try:
        name, data = sf.unpack_segment(path, system_id=system_id)
    except Exception as e:
        return [f"{LOST}{os.path.basename(path)} under its final name is not a whole segment: {type(e).__name__}: {e}"]
    src = os.path.join(wal_dir, name)
    if os.path.exists(src):
        with open(src, "rb") as f:
            if f.read() != data:
                return [f"{LOST}{os.path.basename(path)} differs from the segment it archives"]
    return []


# ------------------------------------------------------------------ backups


@dataclasses.dataclass
class BackupState:
    root: str
    engine: Engine
    service: BackupService
    backup_id: str
    location: str
    acked: dict[str, int]


class Backup(Scenario):
    """A backup the server writes to backup_dir (the HTTP API's), full or incremental."""

    backup_type = BackupType.FULL
    ci_every = 2

    def __init__(self, backup_type: BackupType = BackupType.FULL):
        self.backup_type = backup_type
        self.name = f"backup_{backup_type.value}"

    def _settings_for(self, root: str) -> dict:
        return {"backup_dir": os.path.join(root, "backups")}

    def build(self, template: str) -> None:
        data = os.path.join(template, "data")
        engine = new_source(data)
        os.mkdir(os.path.join(template, "backups"))
        if self.backup_type is not BackupType.FULL:
            service = BackupService(engine, settings(data, **self._settings_for(template)), Catalog(data), lambda: None)
            _take(service, BackupType.FULL, os.path.join(template, "backups", "parent.backup"))
        session = SqlSession(engine, "rustydb", 1)
        insert(session, "more", 50, 100)
        session.close()
        engine.close()

    def prepare(self, root: str, ops: Injector) -> BackupState:
        data = os.path.join(root, "data")
        engine = Engine.open(dd.DataDir(data, ops), settings(data, **self._settings_for(root)), ops)
        catalog = Catalog(data, ops)
        service = BackupService(engine, engine.settings, catalog, lambda: None)
        backup_id = str(uuid.uuid4())
        location = os.path.join(root, "backups", f"{backup_id}.backup")
        catalog.add(
            backup_id=backup_id, backup_type=self.backup_type, status="in_progress", location=location, origin="api"
        )
        return BackupState(root, engine, service, backup_id, location, {"base": 10, "more": 50})

    def act(self, state: BackupState) -> None:
        _write(state.service, self.backup_type, state.backup_id, state.location)

    def after_error(self, state: BackupState, fault: str, exc: BaseException) -> list[str]:
        problems = []
        if os.path.exists(state.location + PARTIAL_SUFFIX):
            problems.append("a failed backup left its .partial file")
        if state.engine.fatal_error:
            return problems  # the WAL failed (a pitr-base's switch): the server stops, by design
        again = os.path.join(state.root, "backups", "again.backup")
        try:
            _take(state.service, self.backup_type, again)
        except Exception as e:
            problems.append(f"a backup fails again once the disk works: {type(e).__name__}: {e}")
        return problems

    def close(self, state: BackupState, crashed: bool) -> None:
        state.engine.close(clean=not crashed)

    def check(self, root: str, outcome: str, state: BackupState) -> list[str]:
        problems: list[str] = []
        data = os.path.join(root, "data")
        got = recovered_counts(data, problems)
        if got is not None and got != state.acked:
            problems.append(f"{LOST}the data changed: {got}, expected {state.acked}")
        if outcome == "ok" and not os.path.exists(state.location):
            problems.append(f"{LOST}the backup was reported done, but its file is not there")
        for path in glob.glob(os.path.join(root, "backups", "*.backup")):
            problems += self._check_file(root, path, state)
        # What a crash left, the next server start removes.
        engine = open_engine(data, **self._settings_for(root))
        try:
            BackupService(engine, engine.settings, Catalog(data), lambda: None)._tidy_interrupted()
        finally:
            engine.close()
        left = glob.glob(os.path.join(root, "backups", "*" + PARTIAL_SUFFIX))
        if left:
            problems.append(f"partial backup files left after a restart: {left}")
        return problems

    def _check_file(self, root: str, path: str, state: BackupState) -> list[str]:
        try:
            with open(path, "rb") as f:
                reader = BackupReader(f)
                reader.verify()
                backup_type = reader.header.backup_type
        except Exception as e:
            return [f"{LOST}{os.path.basename(path)} under its final name does not verify: {type(e).__name__}: {e}"]
        if os.path.basename(path) == "parent.backup" or backup_type is not self.backup_type:
            return []
        # and it restores to the data it was taken of
        target = os.path.join(root, "check-restore")
        try:
            if self.backup_type is BackupType.FULL:
                restore_full(path, target)
            else:
                restore_chain(path, os.path.join(root, "backups"), target)
            got = counts(target)
        except Exception as e:
            return [f"{LOST}{os.path.basename(path)} does not restore: {type(e).__name__}: {e}"]
        finally:
            shutil.rmtree(target, ignore_errors=True)
        if got != state.acked:
            return [f"{LOST}{os.path.basename(path)} restores {got}, expected {state.acked}"]
        return []


def _write(service: BackupService, backup_type: BackupType, backup_id: str, location: str) -> dict:
    req = BackupRequest(backup_type=backup_type, threads=1)

    async def main():
        return await trio.to_thread.run_sync(service._write_file, req, backup_id, location, None, threading.Event())

    return trio.run(main)


def _take(service: BackupService, backup_type: BackupType, location: str) -> None:
    catalog = service.catalog
    backup_id = str(uuid.uuid4())
    catalog.add(backup_id=backup_id, backup_type=backup_type, status="in_progress", location=location)
    catalog.complete(backup_id, **_write(service, backup_type, backup_id, location))


# ----------------------------------------------------------------- restores


@dataclasses.dataclass
class RestoreState:
    root: str
    ops: Injector
    target: str


class Restore(Scenario):
    """A restore with --force over a data directory holding other ("old") data.

    ``mode``: "full" (restore_full), "chain" (a full and an incremental through
    the staging directory), "pitr" (a base and archived WAL to a restore point),
    "incremental" (an incremental applied in place onto a restored full).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.name = f"restore_{mode}"
        self.ci_every = 3 if mode == "pitr" else 2

    def build(self, template: str) -> None:
        src = os.path.join(template, "src")
        backups = os.path.join(template, "backups")
        archive = os.path.join(template, "archive")
        os.mkdir(backups)
        os.mkdir(archive)
        engine = open_engine(src, archive_mode=True, archive_dest=archive)
        session = SqlSession(engine, "rustydb", 1)
        sql(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad TEXT)")
        insert(session, "full", 40, 100)
        service = BackupService(engine, settings(src, backup_dir=backups), Catalog(src), lambda: None)
        _take(service, BackupType.PITR_BASE, os.path.join(backups, "full.backup"))
        insert(session, "incr", 30, 100)
        engine.create_restore_point("target")
        insert(session, "later", 5)
        _take(service, BackupType.INCREMENTAL, os.path.join(backups, "incr.backup"))
        session.close()
        engine.switch_wal()
        _archive_all(_archiver(engine, REAL))
        engine.close()
        shutil.rmtree(src)
        # the data directory a --force restore replaces
        old = open_engine(os.path.join(template, "target"))
        session = SqlSession(old, "rustydb", 1)
        sql(session, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, pad TEXT)")
        insert(session, "old", 7)
        session.close()
        old.close()
        if self.mode == "incremental":  # an incremental applies onto its full, restored
            shutil.rmtree(os.path.join(template, "target"))
            restore_full(os.path.join(backups, "full.backup"), os.path.join(template, "target"))

    @property
    def old(self) -> dict[str, int] | None:
        return {"full": 40} if self.mode == "incremental" else {"old": 7}

    @property
    def new(self) -> dict[str, int]:
        if self.mode == "full":
            return {"full": 40}
        return {"full": 40, "incr": 30} if self.mode == "pitr" else {"full": 40, "incr": 30, "later": 5}

    def prepare(self, root: str, ops: Injector) -> RestoreState:
        return RestoreState(root, ops, os.path.join(root, "target"))

    def act(self, state: RestoreState) -> None:
        self._restore(state.root, state.ops)

    def _restore(self, root: str, ops: FileOps) -> None:
        backups = os.path.join(root, "backups")
        target = os.path.join(root, "target")
        if self.mode == "full":
            restore_full(os.path.join(backups, "full.backup"), target, force=True, fileops=ops)
        elif self.mode == "chain":
            restore_chain(os.path.join(backups, "incr.backup"), backups, target, force=True, fileops=ops)
        elif self.mode == "pitr":
            pitr.restore_to_target(
                os.path.join(backups, "full.backup"),
                target,
                os.path.join(root, "archive"),
                pitr.Target("name", "target"),
                force=True,
                fileops=ops,
            )
        else:
            with open(os.path.join(backups, "incr.backup"), "rb") as f:
                apply_incremental(BackupReader(f), target, fileops=ops)

    def clean_error(self, fault: str, exc: BaseException) -> list[str]:
        from rustydb_server.tools.restore import failure

        handled = (OSError, failure.RestoreError, failure.DataDirError, failure.PitrError)
        handled += (failure.IncrementalRestoreError, failure.ArchiveError, failure.HistoryError)
        if not isinstance(exc, handled):
            return [f"not an error the tool reports: {type(exc).__name__}: {exc}"]
        return []

    def after_error(self, state: RestoreState, fault: str, exc: BaseException) -> list[str]:
        left = [p for p in glob.glob(state.target + ".*") if dd.RESTORE_STAGING_MARK in p]
        if left and self.mode != "incremental":
            return [f"a failed restore left its staging directory: {left}"]
        return []

    def check(self, root: str, outcome: str, state: RestoreState) -> list[str]:
        problems: list[str] = []
        target = os.path.join(root, "target")
        new = self.new
        got = self._state(target)
        if outcome == "ok" and got != new:
            problems.append(f"{LOST}the restore reported success, the target holds {got}")
        elif got not in (new, self.old):
            # An incremental applied in place that stopped half way is refused
            # until restored again (its control file says so), never served.
            if not (self.mode == "incremental" and isinstance(got, str) and "restore into it did not finish" in got):
                problems.append(f"{LOST}the target holds neither the old data nor the new: {got}")
        if outcome != "ok":
            # The same restore run again (the disk working) finishes the job.
            if self.mode == "incremental":  # onto the full again (opening it above moved it on)
                shutil.rmtree(target)
                restore_full(os.path.join(root, "backups", "full.backup"), target)
            try:
                self._restore(root, REAL)
            except Exception as e:
                return [*problems, f"the restore run again fails: {type(e).__name__}: {e}"]
            got = self._state(target)
            if got != new:
                problems.append(f"the restore run again leaves {got}")
        return problems

    def _state(self, target: str) -> dict[str, int] | str:
        try:
            return counts(target)
        except Exception as e:
            return f"{type(e).__name__}: {e}"


def scenarios() -> list[Scenario]:
    return [
        Commit(),
        CommitAcrossSegments(),
        Checkpoint(),
        SwitchWal(),
        Archive(),
        Backup(BackupType.FULL),
        Backup(BackupType.INCREMENTAL),
        Backup(BackupType.PITR_BASE),
        Restore("full"),
        Restore("chain"),
        Restore("pitr"),
        Restore("incremental"),
    ]
