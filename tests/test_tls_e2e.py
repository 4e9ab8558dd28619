"""TLS on the wire protocol and the HTTP API, end to end.

Real servers started with a throwaway CA's certificates (tests/support/tls_certs.py),
the real rusty-db-cli and rusty-db-backup over TCP, HTTPS with urllib.
"""

from __future__ import annotations

import io
import json
import socket
import ssl
import urllib.error
import urllib.request

import pytest

import rustydb_client.client as rc
from rustydb_client import cli
from rustydb_client.protocol import events as ev
from rustydb_client.protocol.connection import ClientSide
from tests.support.servers import ServerProcess, run_tool
from tests.support.tls_certs import write_certs

PASSWORD = "tls pass"
NO_KEYS = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}


def _config(path, **settings) -> str:
    lines = [f"{name} = {json.dumps(value)}" for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return write_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def tls_server(certs, tmp_path_factory):
    """tls_mode = require with the certificate for localhost and 127.0.0.1; a
    password role "app" (SUPERUSER) and "bk" (BACKUP) for TCP."""
    base = tmp_path_factory.mktemp("tls")
    conf = _config(
        base / "rustydb.toml",
        tls_mode="require",
        tls_cert_file=certs.server_cert,
        tls_key_file=certs.server_key,
    )
    srv = ServerProcess(str(base / "data"), extra_args=["--config", conf], https_ca_file=certs.ca)
    with srv:
        srv.sql(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        srv.sql(f"CREATE ROLE bk LOGIN BACKUP PASSWORD '{PASSWORD}'")
        yield srv


def _log_events(srv) -> list[dict]:
    events = []
    for line in open(srv.log_path, encoding="utf-8", errors="replace"):
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def cli_tcp(srv, *args, host="127.0.0.1", user="app", env=None):
    return run_tool(
        "rusty-db-cli",
        "--host",
        host,
        "--port",
        str(srv.port),
        "-U",
        user,
        *args,
        env={"RUSTYDB_PASSWORD": PASSWORD, "RUSTYDB_TLS": "", "RUSTYDB_TLS_CA_FILE": "", **(env or {})},
    )


def test_verify_full_runs_sql_over_tls_with_the_real_cli(tls_server, certs):
    ok = cli_tcp(tls_server, "--tls", "verify-full", "--tls-ca-file", certs.ca, "--csv", "-c", "SELECT 40 + 2 AS n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "n\n42\n"
    # the same from the environment, by host name
    by_env = cli_tcp(
        tls_server,
        "-c",
        "SELECT 1",
        host="localhost",
        env={"RUSTYDB_TLS": "verify-full", "RUSTYDB_TLS_CA_FILE": certs.ca},
    )
    assert by_env.returncode == 0, by_env.stderr
    # the certificate is really checked: a CA that did not sign it is refused
    rogue = cli_tcp(tls_server, "--tls", "verify-full", "--tls-ca-file", certs.rogue_ca, "-c", "SELECT 1")
    assert rogue.returncode == 1
    assert "certificate" in rogue.stderr and "--tls-ca-file" in rogue.stderr and "Traceback" not in rogue.stderr


def test_the_session_is_encrypted_and_prefer_takes_tls(tls_server, certs):
    with rc.connect(
        "127.0.0.1", tls_server.port, user="app", password=PASSWORD, tls="verify-full", tls_ca_file=certs.ca
    ) as conn:
        assert conn.tls_version in ("TLSv1.2", "TLSv1.3")
        # the shell says so, as psql does
        out = io.StringIO()

        def read_line(prompt):
            raise EOFError

        assert cli.run_interactive(conn, read_line, cli.TablePrinter(out), out, io.StringIO()) == 0
        assert f"TLS connection ({conn.tls_version}, cipher " in out.getvalue()
        # a large answer crosses many TLS records
        rows = conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 20000) "
            "SELECT i, hex(randomblob(32)) FROM n"
        ).rows
        assert len(rows) == 20000 and rows[-1][0] == 20000
    # prefer (the default) takes TLS when offered, without checking the certificate
    with rc.connect("127.0.0.1", tls_server.port, user="app", password=PASSWORD, tls="prefer") as conn:
        assert conn.tls_version is not None
    # the Unix socket never uses TLS, whatever the mode
    with rc.connect(port=tls_server.port, tls="verify-full", tls_ca_file=certs.ca) as conn:
        assert conn.tls_version is None
        assert conn.execute("SELECT 1").rows == [[1]]


def test_a_tls_request_on_the_unix_socket_is_declined_and_the_session_goes_on(tls_server):
    """The Unix socket never uses TLS, under tls_mode = require too: a client
    that asks there (ours never does) is told so and may go on in plaintext."""

    def next_event(protocol, sock):
        while (event := protocol.next_event()) is ev.NEED_DATA:
            protocol.receive_data(sock.recv(65536))
        return event

    protocol = ClientSide()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(tls_server.socket_path)
        sock.sendall(protocol.send(ev.Hello("", None, "test", tls=True)))
        answer = next_event(protocol, sock)
        assert answer == ev.TlsAnswer(False, "the Unix socket never uses TLS")
        sock.sendall(protocol.send(ev.Hello("root", None, "test")))
        assert isinstance(next_event(protocol, sock), ev.Ready)


def test_require_refuses_a_plaintext_client_with_a_message_the_cli_prints(tls_server):
    plain = cli_tcp(tls_server, "--tls", "disable", "-c", "SELECT 1")
    assert plain.returncode == 1
    assert "only over TLS (tls_mode = require)" in plain.stderr
    assert "--tls require" in plain.stderr and "Traceback" not in plain.stderr
    refusals = [e for e in _log_events(tls_server) if e.get("event") == "audit" and e.get("method") == "plaintext"]
    assert refusals and refusals[-1]["outcome"] == "denied"
    # require encrypts without checking the certificate (no CA given)
    assert cli_tcp(tls_server, "--tls", "require", "-c", "SELECT 1").returncode == 0


def test_backup_streams_over_tls(tls_server, certs, tmp_path):
    tls_server.sql("CREATE TABLE IF NOT EXISTS t(x)")
    tls_server.sql(
        "INSERT INTO t SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS "
        "(SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 3000) SELECT i FROM n)"
    )
    out = tmp_path / "full.backup"
    taken = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--host",
        "127.0.0.1",
        "--port",
        str(tls_server.port),
        "-U",
        "bk",
        "--tls",
        "verify-full",
        "--tls-ca-file",
        certs.ca,
        env={"RUSTYDB_PASSWORD": PASSWORD, **NO_KEYS},
    )
    assert taken.returncode == 0, taken.stderr
    verified = run_tool("rusty-db-backup", "--verify", str(out), env=NO_KEYS)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # without TLS the server refuses the backup client like any other
    plain = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(tmp_path / "plain.backup"),
        "--host",
        "127.0.0.1",
        "--port",
        str(tls_server.port),
        "-U",
        "bk",
        "--tls",
        "disable",
        env={"RUSTYDB_PASSWORD": PASSWORD, **NO_KEYS},
    )
    assert plain.returncode == 1 and "only over TLS" in plain.stderr
    assert not (tmp_path / "plain.backup").exists()


def test_http_api_is_served_over_https(tls_server, certs):
    health = tls_server.health()  # https, checked against the test CA
    assert health["status"] in ("healthy", "degraded")
    context = ssl.create_default_context(cafile=certs.ca)
    with urllib.request.urlopen(f"https://localhost:{tls_server.http_port}/api/v1/admin/health", context=context) as r:
        assert r.status == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_server.http_port}/api/v1/admin/health", timeout=5)


def test_client_certificates_and_host_names(certs, server_factory, tmp_path):
    """tls_ca_file set: a TCP client needs TLS and a certificate the CA signed.
    The server's certificate names db.example.com only: verify-full to 127.0.0.1 refuses it."""
    conf = _config(
        tmp_path / "clientcert.toml",
        tls_cert_file=certs.other_cert,
        tls_key_file=certs.other_key,
        tls_ca_file=certs.ca,
    )
    srv = server_factory(name="clientcert", extra_args=["--config", conf], https_ca_file=certs.ca)
    srv._https.check_hostname = False  # its certificate is for db.example.com
    srv.start()
    srv.sql(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    client = ["--tls-cert-file", certs.client_cert, "--tls-key-file", certs.client_key]

    wrong_host = cli_tcp(srv, "--tls", "verify-full", "--tls-ca-file", certs.ca, *client, "-c", "SELECT 1")
    assert wrong_host.returncode == 1
    assert "not valid for '127.0.0.1'" in wrong_host.stderr and "host name" in wrong_host.stderr

    with_cert = cli_tcp(srv, "--tls", "require", *client, "-c", "SELECT 1")
    assert with_cert.returncode == 0, with_cert.stderr

    no_cert = cli_tcp(srv, "--tls", "require", "-c", "SELECT 1")
    assert no_cert.returncode == 1
    assert "client certificate" in no_cert.stderr and "Traceback" not in no_cert.stderr

    plain = cli_tcp(srv, "--tls", "disable", *client, "-c", "SELECT 1")
    assert plain.returncode == 1 and "requires a client certificate" in plain.stderr
    assert "TLS handshake failed" in srv.log()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("key_mode_0644", "has group or other access"),
        ("mismatched_key", "does not match the certificate"),
    ],  # the other refusals (a missing file, require without a certificate): tests/test_tls.py
)
def test_the_server_refuses_to_start_with_tls_settings_that_cannot_work(certs, tmp_path, case, expected):
    settings = {"tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    if case == "key_mode_0644":
        key = tmp_path / "open.key"
        key.write_bytes(open(certs.server_key, "rb").read())
        key.chmod(0o644)
        settings["tls_key_file"] = str(key)
    else:
        settings["tls_key_file"] = certs.other_key
    conf = _config(tmp_path / "rustydb.toml", **settings)
    srv = ServerProcess(str(tmp_path / "data"), extra_args=["--config", conf])
    srv.start(wait=False)
    try:
        code = srv.wait_exit(30)
    finally:
        srv.kill()
    assert code == 1
    log = srv.log()
    assert expected in log and "Traceback" not in log
