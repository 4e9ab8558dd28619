"""The admin HTTP API in-process (httpx against the ASGI app): while starting, and running."""

from __future__ import annotations

import httpx
import pytest
import trio

from rustydb_server import __version__
from rustydb_server import datadir as dd
from rustydb_server.archive.archiver import Archiver
from rustydb_server.backup import api as backup_api
from rustydb_server.backup.catalog import Catalog
from rustydb_server.backup.service import BackupService
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.http_api import HttpApi
from rustydb_server.lifecycle import RUNNING, Lifecycle
from rustydb_server.settings import Settings

BASE = "http://localhost/api/v1/admin"


JSON = {"Content-Type": "application/json"}


def client(app, host="127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(host, 40000)), base_url=BASE)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


@pytest.fixture
def settings(data_dir):
    return Settings.load(None, data_dir, {"wal_segment_size": 1 << 20})


async def test_while_starting_only_health_answers(settings):
    api = HttpApi(settings, Lifecycle())
    async with client(api) as http:
        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "starting"
        assert health.json()["data_directory"]["state"] == "recovering"
        assert (await http.get("/archive")).json()["error"] == "starting"
        assert (await http.post("/backup", json={})).status_code == 503
        assert (await http.post("/backup", content=b"{", headers=JSON)).json()["error"] == "bad_json"
        assert (await http.get("/backups")).status_code == 503
        assert (await http.get("/nothing")).status_code == 404


async def test_clients_off_loopback_need_a_token_but_for_a_bare_health(settings):
    async with client(HttpApi(settings, Lifecycle()), host="192.0.2.7") as http:
        health = await http.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "starting", "version": __version__}
        assert (await http.get("/archive")).status_code == 401
        assert (await http.post("/backup", json={})).status_code == 401


async def test_running_server_reports_and_takes_backups(settings, data_dir, nursery):
    engine = Engine.open(dd.DataDir(data_dir), settings)
    try:
        lifecycle = Lifecycle()
        archiver = Archiver(engine, settings, Doorbell())
        backups = BackupService(engine, settings, Catalog(data_dir), wal_switched=archiver.retry_now)
        await nursery.start(backups.run)
        api = HttpApi(settings, lifecycle)
        api.serve_running(engine, archiver, backups, sessions={1: object()})
        lifecycle.phase = RUNNING
        async with client(api) as http:
            health = (await http.get("/health")).json()
            assert health["status"] == "healthy" and health["connections"] == 1
            assert health["databases"] == ["rustydb"] and health["archive"]["archive_mode"] == "off"
            assert (await http.get("/archive")).json()["archive_mode"] == "off"
            started = await http.post("/backup", json={"backup_type": "full"})
            assert started.status_code == 202
            backup_id = started.json()["backup_id"]
            with trio.fail_after(30):
                while (await http.get(f"/backup/{backup_id}")).json()["status"] == "in_progress":
                    await trio.sleep(0.01)
            listing = (await http.get("/backups")).json()["backups"]
            assert [(b["backup_id"], b["status"]) for b in listing] == [(backup_id, "completed")]
            bad = await http.post("/backup", json={"backup_type": "weekly"})
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_backup_request"
        nursery.cancel_scope.cancel()
    finally:
        engine.close()


def test_a_backup_is_described_with_the_guides_fields_first():
    entry = {"backup_type": "full", "status": "completed", "backup_id": "b1", "size_bytes": 10}
    described = backup_api.describe(entry)
    assert list(described)[:6] == list(backup_api.PUBLIC_FIELDS)
    assert described["backup_type"] == "full" and described["completed_at"] is None
