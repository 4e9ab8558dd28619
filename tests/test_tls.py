"""TLS negotiation in the sans-IO protocol core, and the TLS settings' checks.

The end-to-end cases (real servers, the real cli) are in test_tls_e2e.py.
"""

from __future__ import annotations

import os
import ssl

import pytest

from rustydb_client import tls as client_tls
from rustydb_client.protocol import events as ev
from rustydb_client.protocol.connection import ClientSide, ServerSide, State
from rustydb_client.protocol.errors import LocalProtocolError, RemoteProtocolError
from rustydb_client.protocol.messages import message_of
from rustydb_server import tls as server_tls
from tests.support.tls_certs import write_certs


def _deliver(sender, receiver, event):
    receiver.receive_data(sender.send(event))
    return receiver.next_event()


def test_tls_is_asked_in_a_hello_that_names_no_user_then_the_real_hello_follows():
    client, server = ClientSide(), ServerSide(None, tls_required="TLS only")
    probe = ev.Hello("", None, "c", tls=True)
    assert message_of(probe)["tls"] is True and message_of(probe)["user"] == ""
    assert isinstance(_deliver(client, server, probe), ev.TlsRequested)
    assert server.state is State.TLS and client.state is State.TLS
    answer = _deliver(server, client, ev.TlsAnswer(True))
    assert answer == ev.TlsAnswer(True)
    server.start_tls()
    client.start_tls()
    # the real hello, as under TLS: now the server opens the session
    requested = _deliver(client, server, ev.Hello("alice", "main", "c"))
    assert isinstance(requested, ev.SessionRequested) and requested.user == "alice"
    server.send(ev.Ready("1", "main", 1))


def test_a_server_that_requires_tls_refuses_a_plaintext_hello():
    server = ServerSide(None, tls_required="this server accepts TCP clients only over TLS")
    server.receive_data(ClientSide().send(ev.Hello("alice", None, "c")))
    with pytest.raises(RemoteProtocolError) as e:
        server.next_event()
    assert e.value.code == "tls_required" and "only over TLS" in e.value.message


def test_a_refused_tls_request_goes_on_in_plaintext_when_tls_is_not_required():
    client, server = ClientSide(), ServerSide(None)
    assert isinstance(_deliver(client, server, ev.Hello("", None, "c", tls=True)), ev.TlsRequested)
    assert _deliver(server, client, ev.TlsAnswer(False, "no TLS here")).reason == "no TLS here"
    assert isinstance(_deliver(client, server, ev.Hello("alice", None, "c")), ev.SessionRequested)


def test_plaintext_bytes_sent_before_the_handshake_are_not_taken_as_sent_under_tls():
    # The STARTTLS injection: a request queued behind the TLS request would be
    # read as if it had come through TLS.
    client, server = ClientSide(), ServerSide(None)
    injected = ClientSide().send(ev.Hello("mallory", None, "c"))
    server.receive_data(client.send(ev.Hello("", None, "c", tls=True)) + injected)
    assert isinstance(server.next_event(), ev.TlsRequested)
    server.send(ev.TlsAnswer(True))
    with pytest.raises(RemoteProtocolError, match="before the TLS handshake"):
        server.start_tls()


def test_tls_may_be_asked_once_and_only_in_the_first_hello():
    client, server = ClientSide(), ServerSide(None)
    _deliver(client, server, ev.Hello("", None, "c", tls=True))
    with pytest.raises(LocalProtocolError):  # the answer is owed first
        server.send(ev.Ready("1", "main", 1))
    _deliver(server, client, ev.TlsAnswer(False))
    with pytest.raises(LocalProtocolError):
        client.send(ev.Hello("", None, "c", tls=True))
    server.receive_data(ClientSide().send(ev.Hello("", None, "c", tls=True)))
    with pytest.raises(RemoteProtocolError, match="asked for TLS twice"):
        server.next_event()


def test_a_server_that_answers_the_tls_request_otherwise_is_a_protocol_error_the_client_explains():
    older = ServerSide(None)  # as a server that reads the request as an ordinary hello
    older.receive_data(ClientSide().send(ev.Hello("", None, "c")))
    older.next_event()
    client = ClientSide()
    client.send(ev.Hello("", None, "c", tls=True))
    client.receive_data(older.send(ev.Ready("1", "main", 1)))
    with pytest.raises(RemoteProtocolError, match="--tls disable"):
        client.next_event()


def test_a_hello_without_tls_is_the_frame_of_before():
    assert "tls" not in message_of(ev.Hello("a", None, "c"))


# ---------------------------------------------------------------- settings


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return write_certs(str(tmp_path_factory.mktemp("certs")))


def _settings(**kw):
    base = {"tls_mode": "allow", "tls_cert_file": "", "tls_key_file": "", "tls_ca_file": ""}
    base.update(kw)
    return base


def test_policy_follows_tls_mode_and_the_files(certs):
    pair = {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    assert not server_tls.policy(_settings()).enabled  # the default: allow, no certificate
    assert not server_tls.policy(_settings(tls_mode="off", **pair)).enabled
    allow = server_tls.policy(_settings(**pair))
    assert allow.enabled and allow.plaintext_refusal is None
    assert allow.context.verify_mode == ssl.CERT_NONE
    require = server_tls.policy(_settings(tls_mode="require", **pair))
    assert "tls_mode = require" in require.plaintext_refusal
    client_certs = server_tls.policy(_settings(tls_ca_file=certs.ca, **pair))
    assert client_certs.context.verify_mode == ssl.CERT_REQUIRED
    assert "client certificate" in client_certs.plaintext_refusal


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"tls_mode": "require", "tls_cert_file": "", "tls_key_file": ""}, "no certificate is set"),
        ({"tls_key_file": ""}, "tls_key_file is not set"),
        ({"tls_ca_file": "/nonexistent/ca.pem"}, "cannot read /nonexistent/ca.pem (tls_ca_file)"),
        ({"tls_cert_file": "/nonexistent/server.pem"}, "cannot read /nonexistent/server.pem (tls_cert_file)"),
        ({"tls_cert_file": "", "tls_key_file": "", "tls_ca_file": "CA"}, "tls_ca_file is set but TLS is not"),
    ],
)
def test_policy_refuses_settings_that_cannot_work(certs, change, expected):
    settings = _settings(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key)
    settings.update({k: certs.ca if v == "CA" else v for k, v in change.items()})
    with pytest.raises(server_tls.TlsConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        server_tls.policy(settings)


def test_a_key_readable_by_the_group_is_refused_and_a_certificate_is_not_a_key(certs, tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(open(certs.server_key, "rb").read())
    os.chmod(key, 0o640)
    with pytest.raises(server_tls.TlsConfigError, match="chmod 600"):
        server_tls.server_context(certs.server_cert, str(key))
    os.chmod(key, 0o600)
    server_tls.server_context(certs.server_cert, str(key))
    not_a_key = tmp_path / "c.pem"
    not_a_key.write_bytes(open(certs.ca, "rb").read())
    os.chmod(not_a_key, 0o600)
    with pytest.raises(server_tls.TlsConfigError, match="cannot load"):
        server_tls.server_context(certs.server_cert, str(not_a_key))


def test_client_modes_and_options(certs, monkeypatch):
    monkeypatch.delenv("RUSTYDB_TLS", raising=False)
    assert client_tls.resolve_mode(None) == "prefer"
    monkeypatch.setenv("RUSTYDB_TLS", "verify-full")
    assert client_tls.resolve_mode(None) == "verify-full"
    assert client_tls.resolve_mode("disable") == "disable"
    monkeypatch.setenv("RUSTYDB_TLS", "always")
    with pytest.raises(client_tls.TlsOptionError, match="not one of disable, prefer, require, verify-full"):
        client_tls.resolve_mode(None)
    full = client_tls.client_context("verify-full", certs.ca)
    assert full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    require = client_tls.client_context("require")
    assert not require.check_hostname and require.verify_mode == ssl.CERT_NONE
    with pytest.raises(client_tls.TlsOptionError, match="--tls-ca-file"):
        client_tls.client_context("verify-full", "/nonexistent/ca.pem")
    with pytest.raises(client_tls.TlsOptionError, match="--tls-key-file needs --tls-cert-file"):
        client_tls.client_context("require", None, None, certs.client_key)
    client_tls.client_context("require", None, certs.client_cert, certs.client_key)
