"""The whole server in-process: run() starts every component, serves, and stops cleanly."""

from __future__ import annotations

import os
import signal
import socket

import pytest
import trio

from rustydb_client import client as rc
from rustydb_server import datadir as dd
from rustydb_server import run
from rustydb_server.lifecycle import StartupError
from rustydb_server.settings import Settings


class Notifier:
    """What systemd would hear, and a way to wait for READY."""

    def __init__(self):
        self.is_ready = trio.Event()
        self.states: list[str] = []

    def ready(self, status=None):
        self.states.append("ready")
        self.is_ready.set()

    def status(self, text):
        pass

    def stopping(self, status=None):
        self.states.append("stopping")

    def reloading(self):
        self.states.append("reloading")

    def reloaded(self):  # READY=1 again, as systemd expects after RELOADING=1
        self.states.append("reloaded")

    def watchdog_interval(self):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


def settings_for(data_dir: str, port: int) -> Settings:
    return Settings.load(None, data_dir, {"port": port, "http_port": 0, "wal_segment_size": 1 << 20})


def query_then_shutdown(port: int) -> list:
    conn = rc.connect(port=port)
    try:
        rows = conn.execute("SELECT 40 + 2").rows
        conn.execute("SHUTDOWN")
        return rows
    finally:
        conn.close()


async def test_serves_until_shutdown_then_closes_cleanly(data_dir):
    port = free_port()
    notifier = Notifier()
    async with trio.open_nursery() as nursery:
        exit_code = []

        async def serve():
            exit_code.append(await run.run(settings_for(data_dir, port), notifier))

        nursery.start_soon(serve)
        with trio.fail_after(30):
            await notifier.is_ready.wait()
        assert await trio.to_thread.run_sync(query_then_shutdown, port) == [[42]]
    assert exit_code == [0]
    assert notifier.states == ["ready", "stopping"]
    assert dd.DataDir(data_dir).read_control().state == "shutdown"


async def test_sighup_reloads_and_sigterm_stops(data_dir):
    port = free_port()
    notifier = Notifier()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.run, settings_for(data_dir, port), notifier)
        with trio.fail_after(30):
            await notifier.is_ready.wait()
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(30):
            while "reloading" not in notifier.states:
                await trio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)
    assert notifier.states == ["ready", "reloading", "reloaded", "stopping"]


async def test_a_port_in_use_is_a_startup_error(data_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.RaisesGroup(pytest.RaisesExc(StartupError, match="port"), flatten_subgroups=True):
            await run.run(settings_for(data_dir, port), Notifier())
    # The engine was opened and closed again, and the data directory is free.
    dd.DataDir(data_dir).lock("test")
