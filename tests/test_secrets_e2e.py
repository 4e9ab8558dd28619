"""No secret leaks into anything the server and the tools emit.

A real server with SCRAM password authentication (a users file), the HTTP
API behind a bearer token, encrypted WAL archiving, and encrypted backups
with a key file and with a passphrase; the usual operations are driven
through the real tools, the client and the API, wrong password and wrong
token included. Then everything emitted is searched for every secret (the
password, the wrong password, the token, the passphrase, the key's bytes in
hex and base64): the server's log (its stdout and stderr, at debug level),
every tool's stdout and stderr, the command line of the server and of every
tool process (/proc/PID/cmdline), every API response body, and SHOW ALL.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from rustydb_client import client as rc
from tests.support.servers import ServerProcess, tool


def cmdline(proc: subprocess.Popen) -> str:
    """The process's command line as /proc shows it (empty for a moment while it execs)."""
    while True:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            raw = f.read()
        if raw:
            return raw.replace(b"\0", b" ").decode(errors="replace")
        assert proc.poll() is None, f"{proc.args} exited before its command line could be read"
        time.sleep(0.001)


class Emitted:
    """Everything the server and the tools showed, with where it came from."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, text) -> None:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        self.items.append((where, text))

    def run(self, name: str, *args: str, env: dict | None = None, input: str | None = None, ok: bool = True):
        """Run a tool; record its command line (as /proc shows it while it runs), stdout and stderr."""
        proc = subprocess.Popen(
            [tool(name), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **(env or {})),
        )
        self.add(f"{name} cmdline", cmdline(proc))
        out, err = proc.communicate(input, timeout=120)
        self.add(f"{name} {args[:2]} stdout", out)
        self.add(f"{name} {args[:2]} stderr", err)
        assert (proc.returncode == 0) == ok, (name, args, proc.returncode, out, err)
        assert "Traceback" not in err
        return out, err


class Api:
    def __init__(self, port: int, token: str, emitted: Emitted):
        self.base = f"http://127.0.0.1:{port}"
        self.token = token
        self.emitted = emitted

    def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        token = self.token if token is None else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                status, raw, headers = r.status, r.read(), str(r.headers)
        except urllib.error.HTTPError as e:
            status, raw, headers = e.code, e.read(), str(e.headers)
        self.emitted.add(f"API {method} {path} {status} headers", headers)
        self.emitted.add(f"API {method} {path} {status} body", raw)
        return status, json.loads(raw)


@pytest.fixture
def secrets_setup(tmp_path):
    s = {
        "password": "pw-" + secrets.token_hex(12),
        "wrong_password": "nope-" + secrets.token_hex(12),
        "token": secrets.token_hex(24),
        "passphrase": "pass phrase " + secrets.token_hex(12),
        "pasted": "pasted-" + secrets.token_hex(12),
    }
    return s


def test_no_secret_appears_in_logs_outputs_command_lines_api_answers_or_show(tmp_path, secrets_setup):
    s = secrets_setup
    emitted = Emitted()
    no_key = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}
    as_alice = {"RUSTYDB_USER": "alice", "RUSTYDB_PASSWORD": s["password"], **no_key}

    # The secrets, made the way the guide makes them.
    users = tmp_path / "users.toml"
    out, _ = emitted.run("rusty-db-server", "--make-user", "alice", input=s["password"] + "\n")
    users.write_text(out)
    key_file = tmp_path / "backup.key"
    emitted.run("rusty-db-backup", "--create-key-file", str(key_file))
    key_bytes = bytes.fromhex(key_file.read_text().strip())
    token_file = tmp_path / "api.token"
    token_file.write_text(s["token"] + "\n")
    token_file.chmod(0o600)
    archive = tmp_path / "archive"
    archive.mkdir()
    conf = tmp_path / "rustydb.toml"
    conf.write_text(
        "auth_trust_loopback = false\n"
        f"auth_users_file = '{users}'\n"
        f"http_api_token_file = '{token_file}'\n"
        f"backup_key_file = '{key_file}'\n"
        "archive_mode = true\n"
        f"archive_dest = '{archive}'\n"
        "archive_encryption = true\n"
        "log_level = 'debug'\n"
    )

    srv = ServerProcess(str(tmp_path / "data"), extra_args=["--config", str(conf)], env=no_key)
    srv.start(wait=False)
    api = Api(srv.http_port, s["token"], emitted)
    try:
        emitted.add("server cmdline", cmdline(srv.proc))
        deadline = time.monotonic() + 30
        while True:
            assert srv.proc.poll() is None, srv.log()
            try:
                if api.call("GET", "/api/v1/admin/health")[1].get("status") == "healthy":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, srv.log()
            time.sleep(0.1)

        # Sessions: the password right, then wrong (client library and cli).
        with rc.connect("127.0.0.1", srv.port, user="alice", password=s["password"]) as c:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
            c.execute("INSERT INTO t(v) VALUES ('one'), ('two')")
            show = c.execute("SHOW ALL")
            emitted.add("SHOW ALL", repr(show.columns) + repr(show.rows))
            for name in ("auth_users_file", "http_api_token_file", "backup_key_file"):
                emitted.add(f"SHOW {name}", repr(c.execute(f"SHOW {name}").rows))
        for password in (s["wrong_password"], s["password"] + "x"):
            with pytest.raises(rc.ClientError) as refused:
                rc.connect("127.0.0.1", srv.port, user="alice", password=password)
            emitted.add("refused connection", str(refused.value))
        with pytest.raises(rc.ClientError) as unknown:
            rc.connect("127.0.0.1", srv.port, user="mallory", password=s["password"])
        emitted.add("refused unknown user", str(unknown.value))
        cli = ("--port", str(srv.port))
        emitted.run("rusty-db-cli", *cli, "--command", "SHOW ALL", env=as_alice)
        emitted.run("rusty-db-cli", *cli, "--json", "--command", "SELECT * FROM t", env=as_alice)
        emitted.run(
            "rusty-db-cli",
            *cli,
            "--command",
            "SELECT 1",
            env={**as_alice, "RUSTYDB_PASSWORD": s["wrong_password"]},
            ok=False,
        )

        # The password from a file instead of the environment (a wrong one too).
        password_file, wrong_file = tmp_path / "password", tmp_path / "wrong-password"
        password_file.write_text(s["password"] + "\n")
        wrong_file.write_text(s["wrong_password"] + "\n")
        by_file = {**no_key, "RUSTYDB_USER": "alice"}
        emitted.run("rusty-db-cli", *cli, "--password-file", str(password_file), "--command", "SELECT 2", env=by_file)
        emitted.run(
            "rusty-db-cli", *cli, "--password-file", str(wrong_file), "--command", "SELECT 2", env=by_file, ok=False
        )
        emitted.run(
            "rusty-db-backup", *cli, "--type", "full", "--output", str(tmp_path / "by-file.backup"),
            "--password-file", str(password_file), "--encrypt", "--key-file", str(key_file), env=by_file,
        )  # fmt: skip

        # Backups: a key file, a passphrase; verify, info, query, rotate, restore; a wrong passphrase.
        keyed, phrased = str(tmp_path / "keyed.backup"), str(tmp_path / "phrased.backup")
        emitted.run(
            "rusty-db-backup", *cli, "--type", "full", "--output", keyed, "--compress", "--encrypt",
            "--key-file", str(key_file), "--verify", "--json", env=as_alice,
        )  # fmt: skip
        with_phrase = {**as_alice, "RUSTYDB_BACKUP_PASSPHRASE": s["passphrase"]}
        emitted.run(
            "rusty-db-backup", *cli, "--type", "full", "--output", phrased, "--encrypt", "--json", env=with_phrase
        )
        incr = str(tmp_path / "incr.backup")
        emitted.run(
            "rusty-db-backup", *cli, "--type", "incremental", "--output", incr, "--base-backup", keyed,
            "--encrypt", "--key-file", str(key_file), env=as_alice,
        )  # fmt: skip
        emitted.run("rusty-db-backup", "--verify", keyed, "--key-file", str(key_file), "--json")
        emitted.run("rusty-db-backup", "--verify", phrased, env=with_phrase)
        emitted.run("rusty-db-backup", "--info", phrased, "--json")
        emitted.run("rusty-db-backup", "--query", keyed, "SELECT count(*) FROM t", "--key-file", str(key_file))
        wrong_phrase = {**no_key, "RUSTYDB_BACKUP_PASSPHRASE": s["wrong_password"]}
        emitted.run("rusty-db-backup", "--verify", phrased, env=wrong_phrase, ok=False)
        new_key = tmp_path / "new.key"
        emitted.run("rusty-db-backup", "--create-key-file", str(new_key))
        emitted.run("rusty-db-backup", "--rotate-key", "-", str(new_key), phrased, env=with_phrase)
        emitted.run(
            "rusty-db-restore", "--input", keyed, "--data-dir", str(tmp_path / "r1"), "--key-file", str(key_file)
        )
        emitted.run(
            "rusty-db-restore", "--input", incr, "--data-dir", str(tmp_path / "r2"), "--chain-dir", str(tmp_path),
            "--key-file", str(key_file), "--json",
        )  # fmt: skip
        emitted.run(
            "rusty-db-restore", "--input", phrased, "--data-dir", str(tmp_path / "r3"), env=wrong_phrase, ok=False
        )
        emitted.run(
            "rusty-db-restore", "--input", phrased, "--data-dir", str(tmp_path / "r3"), "--key-file", str(new_key)
        )

        # The HTTP API: every route, a backup it writes (encrypted), a wrong and a missing token.
        assert api.call("GET", "/api/v1/admin/health")[0] == 200
        assert api.call("GET", "/api/v1/admin/archive")[0] == 200
        status, started = api.call("POST", "/api/v1/admin/backup", {"backup_type": "full", "encryption": True})
        assert status == 202, started
        while (entry := api.call("GET", f"/api/v1/admin/backup/{started['backup_id']}")[1])["status"] == "in_progress":
            time.sleep(0.05)
        assert entry["status"] == "completed", entry
        assert api.call("GET", "/api/v1/admin/backups")[0] == 200
        assert api.call("GET", "/api/v1/admin/health", token=s["wrong_password"])[0] == 401
        assert api.call("GET", "/api/v1/admin/backups", token=s["token"][:-1])[0] == 401
        assert api.call("GET", "/api/v1/admin/settings")[0] == 404
        assert api.call("POST", "/api/v1/admin/backup", {"backup_type": "full", "key": s["passphrase"]})[0] == 422
        emitted.run("rusty-db-backup", "--verify", entry["location"], "--key-file", str(key_file))
        with rc.connect("127.0.0.1", srv.port, user="alice", password=s["password"]) as c:
            c.execute("SWITCH WAL")
        deadline = time.monotonic() + 30
        while (archived := api.call("GET", "/api/v1/admin/archive")[1])["segments_waiting"]:
            assert time.monotonic() < deadline, archived
            time.sleep(0.1)
        # A password pasted into the users file by mistake: the login is refused, the log says
        # why without quoting the line.
        good_users = users.read_text()
        users.write_text(good_users + f'[users.bob]\nscram = "SCRAM-SHA-256${s["pasted"]}:c2FsdA==$YQ==:Yg=="\n')
        with pytest.raises(rc.ClientError) as refused:
            rc.connect("127.0.0.1", srv.port, user="alice", password=s["password"])
        emitted.add("refused while the users file is malformed", str(refused.value))
        users.write_text(good_users)
        # A reload, so the log also holds what the server says when it rereads its files.
        srv.proc.send_signal(1)
        time.sleep(0.5)
        emitted.run("rusty-db-restore", "--list-wal", "--archive-dir", str(archive), "--key-file", str(key_file))
    finally:
        code = srv.stop()
    assert code == 0
    with open(srv.log_path, "rb") as f:
        log = f.read()
    emitted.add("server log", log)
    assert b"authentication failed" in log or b"auth" in log  # the refusals were logged

    wanted = {
        "password": s["password"],
        "wrong password": s["wrong_password"],
        "token": s["token"],
        "passphrase": s["passphrase"],
        "password pasted into the users file": s["pasted"],
        "key (hex)": key_bytes.hex(),
        "key (HEX)": key_bytes.hex().upper(),
        "key (base64)": base64.b64encode(key_bytes).decode(),
        "key (urlsafe base64)": base64.urlsafe_b64encode(key_bytes).decode().rstrip("="),
        "new key (hex)": new_key.read_text().strip(),
    }
    leaks = [f"{what} in {where}" for where, text in emitted.items for what, secret in wanted.items() if secret in text]
    assert not leaks, leaks
    # What was searched is what was emitted: the things that may be shown are there.
    seen = {where: text for where, text in emitted.items}
    assert '"user": "alice"' in seen["server log"] and "session opened" in seen["server log"]
    assert "users file" in seen["server log"] and "[users.bob]" in seen["server log"]
    assert str(token_file) in seen["SHOW http_api_token_file"] and str(key_file) in seen["SHOW backup_key_file"]
    assert entry["location"] in seen[f"API GET /api/v1/admin/backup/{started['backup_id']} 200 body"]
    assert f"--key-file {key_file}" in seen["rusty-db-backup cmdline"]
    assert len(emitted.items) > 60  # every source above was looked at
