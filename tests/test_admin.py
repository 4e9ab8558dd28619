"""Admin SQL against the server's components, in-process."""

from __future__ import annotations

import types

import pytest
import trio

from rustydb_server import admin
from rustydb_server import datadir as dd
from rustydb_server.admin_parse import parse_admin
from rustydb_server.checkpointer import Checkpointer
from rustydb_server.dispatch import Services
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.roles import BUILTIN, RoleStore
from rustydb_server.settings import Settings


@pytest.fixture
async def conn(tmp_path, nursery):
    """A session dispatcher's view of the server, without a socket."""
    path = str(tmp_path / "data")
    settings = Settings.load(None, path, {"wal_segment_size": 1 << 20})
    engine = Engine.open(dd.DataDir(path), settings)
    lifecycle = Lifecycle()
    checkpointer = Checkpointer(engine, settings, Doorbell())
    await nursery.start(checkpointer.run)
    changes = []
    services = Services(
        engine,
        settings,
        lifecycle,
        checkpointer,
        backups=None,
        settings_changed=lambda: changes.append(True),
        db_limiter=trio.CapacityLimiter(4),
        role_store=RoleStore(path),
    )
    yield types.SimpleNamespace(
        services=services, session_id=1, peer=("127.0.0.1", 1), session=None, role=BUILTIN, changes=changes
    )
    engine.close()


async def execute(conn, sql: str) -> admin.AdminResult:
    return await admin.execute(conn, parse_admin(sql))


async def test_checkpoint_runs_in_the_checkpointer(conn):
    engine = conn.services.engine
    engine.create_restore_point("a")
    before = engine.control.checkpoint_lsn
    assert (await execute(conn, "CHECKPOINT")).status == "CHECKPOINT"
    assert engine.control.checkpoint_lsn > before


async def test_alter_system_tells_the_components(conn):
    result = await execute(conn, "ALTER SYSTEM SET archive_timeout = '2min'")
    assert result.status == "ALTER SYSTEM" and conn.changes == [True]
    assert (await execute(conn, "SHOW archive_timeout")).rows == [["120s"]]
    await execute(conn, "ALTER SYSTEM RESET archive_timeout")
    assert conn.changes == [True, True]


async def test_shutdown_asks_the_lifecycle_once_answered(conn):
    result = await execute(conn, "SHUTDOWN IMMEDIATE")
    lifecycle = conn.services.lifecycle
    assert lifecycle.shutdown_mode == "graceful"  # not before the client has its answer
    result.after()
    assert lifecycle.shutdown_mode == "immediate"
