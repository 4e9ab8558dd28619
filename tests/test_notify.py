"""sd_notify messages arrive on a real AF_UNIX datagram socket, as systemd receives them."""

from __future__ import annotations

import os
import socket

import pytest

from rustydb_server.notify import Notifier, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)  # only guards against a hang if a message is lost
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


def receive(sock) -> str:
    return sock.recv(4096).decode()


def test_lifecycle_messages_arrive(notify_socket):
    n = Notifier()
    assert n.enabled
    n.status("recovering: replaying WAL")
    n.ready("serving on 127.0.0.1:5432")
    n.watchdog()
    n.extend_timeout(90)
    n.reloading()
    n.reloaded()
    n.stopping("shutting down")
    assert receive(notify_socket) == "STATUS=recovering: replaying WAL"
    assert receive(notify_socket) == "READY=1\nSTATUS=serving on 127.0.0.1:5432"
    assert receive(notify_socket) == "WATCHDOG=1"
    assert receive(notify_socket) == "EXTEND_TIMEOUT_USEC=90000000"
    reloading = receive(notify_socket).split("\n")
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert receive(notify_socket) == "READY=1"
    assert receive(notify_socket) == "STOPPING=1\nSTATUS=shutting down"


def test_status_cannot_inject_another_assignment(notify_socket):
    Notifier().status("line one\nREADY=1")
    assert receive(notify_socket) == "STATUS=line one READY=1"


def test_abstract_socket(monkeypatch):
    name = f"rustydb-test-{os.getpid()}-{id(monkeypatch)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().ready()
        assert receive(sock) == "READY=1"
    finally:
        sock.close()


def test_no_socket_means_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready()
    n.status("x")
    n.stopping()


def test_vanished_socket_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    Notifier().ready()


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


def test_notifier_reads_the_watchdog_from_the_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier().watchdog_interval() == 1.0
