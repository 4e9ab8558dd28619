"""SCRAM-SHA-256 for the handshake: stored credentials and each side's exchange.

Both exchanges turn scramp's errors into the protocol's ``auth_failed`` (or
``password_required``), and the server's fails the same way for an unknown
user as for a wrong password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

from .errors import RemoteProtocolError
from .events import SCRAM_MECHANISM

SCRAM_ITERATIONS = 4096

# One message for every authentication failure, so a client cannot tell a
# wrong password from an unknown user.
AUTH_FAILED_MESSAGE = (
    "authentication failed: the user name or password is wrong; "
    "check --user and the RUSTYDB_PASSWORD environment variable"
)

# Per process, so an unknown user always gets the same fake salt within one
# server's life (a changing salt would reveal that the user does not exist).
_DECOY_SECRET = secrets.token_bytes(32)


def _scramp():
    # Imported on first use: only authenticating connections need it, and it
    # costs tens of milliseconds at the start of every command-line tool.
    import scramp

    return scramp


def make_scram_credentials(password: str, iteration_count: int = SCRAM_ITERATIONS) -> tuple:
    """(salt, stored_key, server_key, iteration_count) to keep in a users file.

    The password itself is never stored; these are what scramp's server needs.
    """
    return _scramp().ScramMechanism(SCRAM_MECHANISM).make_auth_info(password, iteration_count=iteration_count)


def _decoy_credentials(user: str, secret: bytes) -> tuple:
    salt = hmac.new(secret, user.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:16]
    return salt, secrets.token_bytes(32), secrets.token_bytes(32), SCRAM_ITERATIONS


class ServerScram:
    """The server's half of one exchange for ``user`` (the one hello named).

    ``auth_fn(user)`` gives the stored credentials, or None or LookupError for
    an unknown user, who then gets decoy credentials: the exchange runs to the
    end and fails like a wrong password would.
    """

    def __init__(self, user: str, auth_fn: Callable[[str], tuple | None], decoy_secret: bytes | None = None):
        self._user = user
        self._auth_fn = auth_fn
        self._decoy_secret = decoy_secret or _DECOY_SECRET
        self._server = _scramp().ScramMechanism(SCRAM_MECHANISM).make_server(self._credentials)

    def server_first(self, client_first: str) -> str:
        try:
            self._server.set_client_first(client_first)
            return self._server.get_server_first()
        except _scramp().ScramException:
            raise RemoteProtocolError("auth_failed", AUTH_FAILED_MESSAGE) from None

    def server_final(self, client_final: str) -> str:
        try:
            self._server.set_client_final(client_final)
            return self._server.get_server_final()
        except _scramp().ScramException:
            raise RemoteProtocolError("auth_failed", AUTH_FAILED_MESSAGE) from None

    def _credentials(self, _scram_user: str) -> tuple:
        # The user named in hello is the one authenticated (SCRAM's own user
        # field is ignored, as PostgreSQL does).
        try:
            creds = self._auth_fn(self._user)
        except LookupError:
            creds = None
        return creds if creds is not None else _decoy_credentials(self._user, self._decoy_secret)


class ClientScram:
    """The client's half of one exchange."""

    def __init__(self, user: str, password: str | None, mechanism: str):
        if mechanism != SCRAM_MECHANISM:
            raise RemoteProtocolError(
                "auth_failed", f"the server asks for {mechanism}, this client only speaks {SCRAM_MECHANISM}"
            )
        if password is None:
            raise RemoteProtocolError(
                "password_required",
                "the server requires a password; set the RUSTYDB_PASSWORD "
                "environment variable (or pass password= to connect)",
            )
        self._client = _scramp().ScramClient([SCRAM_MECHANISM], user, password)

    def client_first(self) -> str:
        return self._client.get_client_first()

    def client_final(self, server_first: str) -> str:
        try:
            self._client.set_server_first(server_first)
            return self._client.get_client_final()
        except _scramp().ScramException as e:
            raise RemoteProtocolError("auth_failed", f"the server's SCRAM message is invalid ({e})") from None

    def check_server_final(self, server_final: str) -> None:
        try:
            self._client.set_server_final(server_final)
        except _scramp().ScramException:
            raise RemoteProtocolError(
                "auth_failed",
                "the server could not prove that it knows the password; it may not "
                "be the RustyDB server you meant to reach",
            ) from None
