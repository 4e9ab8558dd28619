"""The roles a backup's manifest carries, and why their SCRAM verifiers may sit
in the backup header, which is not encrypted even in an encrypted backup.

What the header holds for a password role is its SCRAM-SHA-256 verifier: the
salt, the iteration count, StoredKey = H(ClientKey) and ServerKey, never the
password. Logging in takes a proof of ClientKey, which StoredKey (a one-way
hash of it) does not give. These tests read the verifier out of a real
encrypted backup taken by rusty-db-backup without its key, check the
password is nowhere in the file, and try to log in to the real server with
what the header gives: refused. The same exchange with the ClientKey the
password makes is accepted, so the refusal is the verifier's doing, not the
test's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pytest

import rustydb_client.client as rc
import rustydb_client.protocol.connection as connection_mod
from rustydb_server.auth import parse_verifier
from rustydb_server.backup.manifest import Manifest
from rustydb_server.tools.backup.header import read_file_header
from tests.support.servers import run_tool

PASSWORD = "correct horse battery staple"
NO_KEYS = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class KeyHolderScram:
    """The client half of SCRAM-SHA-256 for someone who holds a ClientKey (a
    guess at it) instead of the password."""

    client_key = b""

    def __init__(self, user, password, mechanism):
        self._nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n={user},r={self._nonce}"

    def client_first(self) -> str:
        return "n,," + self._first_bare

    def client_final(self, server_first: str) -> str:
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self._first_bare},{server_first},{without_proof}".encode()
        stored_key = hashlib.sha256(self.client_key).digest()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(self.client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def check_server_final(self, server_final: str) -> None:
        pass


def _login_with_client_key(monkeypatch, port: int, client_key: bytes):
    monkeypatch.setattr(KeyHolderScram, "client_key", client_key)
    monkeypatch.setattr(connection_mod, "ClientScram", KeyHolderScram)
    return rc.connect("127.0.0.1", port, user="app", password="unused", tls="disable", timeout=10)


def test_an_encrypted_backups_role_verifiers_are_readable_and_let_no_one_log_in(server, tmp_path, monkeypatch):
    server.sql(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    out = tmp_path / "full.backup"
    key = tmp_path / "backup.key"
    run_tool("rusty-db-backup", "--create-key-file", str(key), check=True)
    args = ["--type", "full", "--output", str(out), "--port", str(server.port), "--encrypt", "--key-file", str(key)]
    run_tool("rusty-db-backup", *args, env=NO_KEYS, check=True)

    # What anyone who can read the file learns, without the key.
    header = read_file_header(str(out))
    assert header.encrypted
    roles = Manifest.from_header(header).roles
    salt, stored_key, server_key, iterations = parse_verifier(roles["app"]["verifier"])
    assert len(salt) >= 16 and iterations >= 4096 and len(stored_key) == 32
    assert PASSWORD.encode() not in out.read_bytes()

    # Logging in with what the header gives is refused: StoredKey is not the key
    # a proof needs, and nothing else in the header derives it.
    for guess in (stored_key, server_key, hashlib.sha256(stored_key).digest()):
        with pytest.raises(rc.ConnectionFailed) as refused:
            _login_with_client_key(monkeypatch, server.port, guess)
        assert refused.value.code == "auth_failed"

    # The harness is sound: the ClientKey the password makes is accepted.
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    assert hashlib.sha256(client_key).digest() == stored_key
    with _login_with_client_key(monkeypatch, server.port, client_key) as conn:
        assert conn.execute("SHOW role").rows[0][0] == "app"
