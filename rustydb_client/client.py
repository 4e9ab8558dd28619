"""A blocking RustyDB client: a socket loop around the sans-IO ClientSide.

Every query message carries exactly one statement (scripts are split here
with sqlsplit), so each is answered by one `complete` or one `error` and the
connection never loses track of where an answer ends.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from rustydb_client.protocol.connection import ClientSide
from rustydb_client.protocol.errors import LocalProtocolError, RemoteProtocolError
from rustydb_client.protocol.events import (
    DEFAULT_BATCH_ROWS,
    NEED_DATA,
    AuthContinue,
    Columns,
    Complete,
    ConnectionClosed,
    Error,
    Goodbye,
    Hello,
    Notice,
    Query,
    Ready,
    Rows,
    TlsAnswer,
)
from rustydb_client.protocol.frames import DEFAULT_MAX_FRAME
from rustydb_client.tls import DISABLE, PREFER, VERIFY_FULL, TlsOptionError, client_context, resolve_mode

if TYPE_CHECKING:
    import ssl

CLIENT_NAME = "rustydb-client"
# Between frames, and for small ones. The body of a large frame (a backup's
# 1 MiB data) is received in place instead (FrameDecoder.recv_buffer); a
# larger receive here would pull most of the next body through two copies.
_RECV_SIZE = 64 * 1024


class ClientError(Exception):
    """Base of the errors this module raises; str() is a message for users."""


class RequestTooLarge(ClientError):
    """A request larger than one message may be; nothing was sent, the session goes on."""


class ConnectionFailed(ClientError):
    """No usable session: refused, unreachable, authentication failed, or lost."""

    def __init__(self, message: str, code: str = "connection_failed"):
        super().__init__(message)
        self.code = code
        self.message = message


class ServerError(ClientError):
    """The server refused a statement. The connection stays usable unless `fatal`."""

    def __init__(self, code: str, message: str, statement_line: int | None = None, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.statement_line = statement_line
        self.fatal = fatal


@dataclass
class Result:
    columns: list[str]
    rows: list[list]
    status: str
    rows_affected: int
    notices: list[str] = field(default_factory=list)


DEFAULT_SOCKET_DIR = "/run/rustydb"
SOCKET_NAME = ".s.RUSTYDB.{port}"


def socket_path(directory: str, port: int) -> str:
    return os.path.join(directory, SOCKET_NAME.format(port=port))


def connect(
    host: str | None = None,
    port: int = 5432,
    *,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 30,
    query_timeout: float | None = None,
    client_name: str = CLIENT_NAME,
    max_frame: int = DEFAULT_MAX_FRAME,
    tls: str | None = None,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    data_dir: str | None = None,
) -> Connection:
    """Open a session. The password comes from `password` or $RUSTYDB_PASSWORD.

    `host` None: the server's Unix socket in /run/rustydb first (peer
    authentication: the OS user decides the role), then in `data_dir` (default
    $RUSTYDB_DATA_DIR; several separated by ":"), where the server puts it when
    /run/rustydb is not writable, then TCP on 127.0.0.1, as psql does. A
    `host` that starts with "/" is a socket directory, used alone; any other
    is a TCP host. `timeout` bounds connecting and authenticating;
    `query_timeout` (default none) bounds each wait for the server during a
    statement.

    `tls` (default $RUSTYDB_TLS, else prefer) is one of rustydb_client.tls's
    modes, for TCP only; the CA, certificate and key files default to
    $RUSTYDB_TLS_CA_FILE, $RUSTYDB_TLS_CERT_FILE and $RUSTYDB_TLS_KEY_FILE.
    """
    try:
        mode = resolve_mode(tls)
    except TlsOptionError as e:
        raise ConnectionFailed(str(e), "tls_options") from None
    if password is None:
        password = os.environ.get("RUSTYDB_PASSWORD") or None
    if user is None:
        user = os.environ.get("RUSTYDB_USER") or getpass.getuser()
    sock, where = _open_socket(host, port, timeout, data_dir)
    if password is None and sock.family != socket.AF_UNIX:
        password = passfile_password(where.rpartition(":")[0], port, database, user)
    context = None
    if mode != DISABLE and sock.family != socket.AF_UNIX:  # the Unix socket never uses TLS
        env = os.environ
        cert_file = tls_cert_file or env.get("RUSTYDB_TLS_CERT_FILE")
        try:
            context = client_context(
                mode,
                tls_ca_file or env.get("RUSTYDB_TLS_CA_FILE"),
                cert_file,
                tls_key_file or env.get("RUSTYDB_TLS_KEY_FILE"),
            )
        except TlsOptionError as e:
            sock.close()
            raise ConnectionFailed(str(e), "tls_options") from None
    conn = Connection(sock, ClientSide(password, max_frame=max_frame), where)
    try:
        if context is not None:
            conn._start_tls(mode, context, where.rpartition(":")[0], client_name, client_cert=bool(cert_file))
        conn._handshake(Hello(user, database, client_name))
    except BaseException:
        conn._drop()
        raise
    conn._sock.settimeout(query_timeout)
    return conn


def socket_candidates(port: int, data_dir: str | None = None) -> list[str]:
    """Where a client with no --host looks for the server's Unix socket, in order:
    /run/rustydb, then each data directory of ``data_dir`` (else $RUSTYDB_DATA_DIR),
    ":"-separated, where the server puts it when /run/rustydb is not writable."""
    paths = [socket_path(DEFAULT_SOCKET_DIR, port)]
    dirs = data_dir if data_dir is not None else os.environ.get("RUSTYDB_DATA_DIR", "")
    paths += [socket_path(d, port) for d in dirs.split(os.pathsep) if d]
    return paths


def _open_socket(host: str | None, port: int, timeout: float, data_dir: str | None = None) -> tuple[socket.socket, str]:
    if host is None or host.startswith("/"):
        paths = [socket_path(host, port)] if host is not None else socket_candidates(port, data_dir)
        for path in paths:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path)
                return sock, path
            except OSError as e:
                sock.close()
                if host is not None:
                    raise ConnectionFailed(
                        f"could not connect to the Unix socket {path}: {e.strerror or e}; the RustyDB server may "
                        "not be running, or its unix_socket_directory or port may be other (see --host/--port)",
                        "connection_refused"
                        if isinstance(e, (ConnectionRefusedError, FileNotFoundError))
                        else "connection_failed",
                    ) from None
        host = "127.0.0.1"  # no socket here: TCP, as before sockets
    where = f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise ConnectionFailed(
            f"could not connect to {where}: connection refused; the RustyDB server may "
            "not be running or may listen on another port (see --host/--port)",
            "connection_refused",
        ) from None
    except TimeoutError:
        raise ConnectionFailed(
            f"could not connect to {where}: no answer within {timeout} s; check the host, "
            "the port and any firewall in between",
            "connection_timeout",
        ) from None
    except OSError as e:
        raise ConnectionFailed(f"could not connect to {where}: {e.strerror or e}; check --host and --port") from None
    # As libpq: no Nagle delay. A TLS session writes its handshake's last
    # message and the hello back to back, and the second would otherwise wait
    # for the delayed ACK of the first (40 ms a connection).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, where


def read_password_file(path: str | None) -> str | None:
    """The password on the first line of ``path`` (None without a file: $RUSTYDB_PASSWORD then)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "it is not UTF-8 text"
        raise ConnectionFailed(f"cannot read the password file {path}: {why}", "password_file") from None
    password = line.rstrip("\r\n")
    if not password:
        raise ConnectionFailed(
            f"the password file {path} is empty; put the password on its first line", "password_file"
        )
    return password


PASSFILE = "~/.rustydbpass"


def passfile_password(host: str, port: int, database: str | None, user: str, path: str | None = None) -> str | None:
    """The password ~/.rustydbpass (or $RUSTYDB_PASSFILE) holds for this server, as .pgpass does.

    Each line is ``host:port:database:user:password``; ``*`` matches anything,
    ``\\:`` and ``\\\\`` are a literal colon and backslash, lines starting with
    # are comments. The file is ignored unless only its owner can read it
    (mode 0600 or stricter), with a warning on stderr, as psql does.
    """
    path = os.path.expanduser(path or os.environ.get("RUSTYDB_PASSFILE") or PASSFILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:
            import sys

            print(
                f"WARNING: password file {path} has group or world access; permissions should be "
                "u=rw (0600) or less. It is ignored",
                file=sys.stderr,
            )
            return None
        with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
            fd = -1
            lines = f.read().splitlines()
    finally:
        if fd >= 0:
            os.close(fd)
    wanted = [host, str(port), database or "*", user]
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _passfile_fields(line)
        if len(fields) != 5:
            continue
        if all(f == "*" or f == w or (w == "*" and i == 2) for i, (f, w) in enumerate(zip(fields[:4], wanted))):
            return fields[4]
    return None


def _passfile_fields(line: str) -> list[str]:
    fields, current, escaped = [], [], False
    for c in line:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    return fields


class Connection:
    """One session: a blocking socket around the sans-IO ClientSide. Use as a
    context manager, or call close()."""

    def __init__(self, sock: socket.socket, protocol: ClientSide, where: str):
        self._sock: socket.socket | None = sock
        self._protocol = protocol
        self._where = where
        self._user: str | None = None
        # The first bytes the server sent: an answer that starts like HTTP's
        # means the port is an HTTP server's (the admin API), not the wire protocol's.
        self._first_bytes: bytes | None = None
        self._client_cert = False  # whether the TLS context holds a client certificate

    # -- state

    @property
    def database(self) -> str | None:
        return self._protocol.database

    @property
    def in_transaction(self) -> bool:
        return self._protocol.in_transaction

    @property
    def server_version(self) -> str | None:
        return self._protocol.server_version

    @property
    def session_id(self) -> int | None:
        return self._protocol.session_id

    @property
    def closed(self) -> bool:
        return self._sock is None

    # -- statements

    def execute(self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> Result:
        """Run every statement of `sql` in order; return the last one's Result.

        Raises ServerError at the first failing statement, with statement_line
        counted from the start of `sql`.
        """
        from rustydb_client.sqlsplit import split_statements

        statements = split_statements(sql)
        if len(statements) == 1:
            return self._execute_one(statements[0].sql, batch_rows, statements[0].line)
        notices: list[str] = []
        last: Result | None = None
        columns: list[str] = []
        rows: list[list] = []
        for event in self.stream(sql, batch_rows=batch_rows):
            if isinstance(event, Columns):
                columns, rows = list(event.names), []
            elif isinstance(event, Rows):
                rows.extend(event.rows)
            elif isinstance(event, Notice):
                notices.append(event.message)
            elif isinstance(event, Complete):
                last = Result(columns, rows, event.status, event.rows_affected, notices)
                columns, rows = [], []
        return last or Result([], [], "", 0, notices)

    def _execute_one(self, sql: str, batch_rows: int, first_line: int) -> Result:
        """execute() of one statement: stream_statement's loop, without a
        generator and a type test chain per event (every statement's path)."""
        self.send(Query(sql, batch_rows))
        columns: list[str] = []
        rows: list[list] = []
        notices: list[str] = []
        finished = False
        try:
            while True:
                event = self.next_event()
                kind = type(event)
                if kind is Rows:
                    rows.extend(event.rows)
                elif kind is Complete:
                    finished = True
                    return Result(columns, rows, event.status, event.rows_affected, notices)
                elif kind is Columns:
                    columns, rows = list(event.names), []
                elif kind is Notice:
                    notices.append(event.message)
                elif kind is Error:
                    finished = True
                    line = event.statement_line
                    raise ServerError(
                        event.code, event.message, None if line is None else first_line + line - 1, event.fatal
                    )
        finally:
            if not finished and not self.closed:
                self._drain()

    def stream(self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Columns | Rows | Complete | Notice]:
        """Yield each statement's events as they arrive: Columns, Rows batches, Complete.

        Stopping early is safe: the rest of the current answer is read and dropped.
        """
        # Imported here: tools that only stream backups never split SQL, and
        # every millisecond of their start counts against a small incremental.
        from rustydb_client.sqlsplit import split_statements

        for statement in split_statements(sql):
            yield from self.stream_statement(statement.sql, batch_rows=batch_rows, first_line=statement.line)

    def stream_statement(
        self, sql: str, *, batch_rows: int = DEFAULT_BATCH_ROWS, first_line: int = 1
    ) -> Iterator[Columns | Rows | Complete | Notice]:
        """Like stream() for text that is exactly one statement (no splitting)."""
        self.send(Query(sql, batch_rows))
        finished = False
        try:
            while True:
                event = self.next_event()
                if isinstance(event, Error):
                    finished = True
                    line = event.statement_line
                    raise ServerError(
                        event.code,
                        event.message,
                        None if line is None else first_line + line - 1,
                        event.fatal,
                    )
                if isinstance(event, Complete):
                    finished = True
                    yield event
                    return
                yield event
        finally:
            if not finished and not self.closed:
                self._drain()

    # -- events (backup streaming and other tools)

    def send(self, event) -> None:
        """Send one request (Query, BackupRequested, ...)."""
        self._require_open()
        try:
            frame = self._protocol.send(event)
        except LocalProtocolError as e:
            if e.code != "frame_too_large":
                raise ClientError(f"cannot send {event.type} now: {e.message}") from None
            if isinstance(event, Query):
                size = len(event.sql.encode("utf-8", "surrogatepass"))
                raise RequestTooLarge(
                    f"the statement is {size / 1e6:.1f} MB, more than the "
                    f"{DEFAULT_MAX_FRAME / 1e6:.1f} MB one message can carry; split "
                    "it into smaller statements (several INSERTs, say)"
                ) from None
            raise RequestTooLarge(e.message) from None
        except UnicodeEncodeError:
            # Bytes that were not UTF-8 reach Python strings as lone surrogates
            # (command-line arguments, a non-UTF-8 locale); they cannot be sent.
            raise ClientError(
                "the statement holds bytes that are not UTF-8 text; convert it to UTF-8 and try again"
            ) from None
        try:
            self._sock.sendall(frame)
        except OSError as e:
            refusal = self._error_before_close()
            self._drop()
            if refusal is not None:
                what = "refused the session" if self._protocol.session_id is None else "closed the connection"
                raise ConnectionFailed(f"the server at {self._where} {what}: {refusal.message}", refusal.code) from None
            raise ConnectionFailed(
                f"lost the connection to {self._where} while sending ({e.strerror or e}); the server may have stopped",
                "connection_lost",
            ) from None

    def _error_before_close(self) -> Error | None:
        """After a failed send: the error the server sent before closing, or None.

        A server refusing a connection (max_connections, say) answers at once
        and closes without reading the hello; the hello's send then fails, but
        the answer saying why is waiting to be read."""
        try:
            self._sock.settimeout(1.0)
            while True:
                event = self._protocol.next_event()
                if event is NEED_DATA:
                    data = self._sock.recv(_RECV_SIZE)
                    if not data:
                        return None
                    self._protocol.receive_data(data)
                elif isinstance(event, Error):
                    return event
                elif isinstance(event, ConnectionClosed):
                    return None
        except Exception:  # whatever the broken connection holds, the send's failure is reported instead
            return None

    def next_event(self):
        """The next event from the server; blocks until it arrives.

        A backup's large data pieces come as read-only views of the frames
        they arrived in, not copies.
        """
        self._require_open()
        while True:
            try:
                event = self._protocol.next_event()
            except RemoteProtocolError as e:
                self._drop()
                if self._first_bytes is not None and self._first_bytes.startswith(_HTTP_ANSWER):
                    raise self._http_port() from None
                if e.code == "password_required":
                    raise ConnectionFailed(
                        f"the server at {self._where} requires a password for user {self._user}: "
                        "set RUSTYDB_PASSWORD or use --password-file",
                        "password_required",
                    ) from None
                if e.code == "connection_lost":
                    raise self._closed_by_server() from None
                what = "sent an invalid message" if e.code in _FRAME_ERRORS else "broke the protocol"
                raise ConnectionFailed(f"the server at {self._where} {what} ({e.message})", e.code) from None
            if event is NEED_DATA:
                self._receive()
            elif isinstance(event, ConnectionClosed):
                self._drop()
                if self._first_bytes is not None and self._first_bytes.startswith(_HTTP_ANSWER):
                    raise self._http_port()
                raise self._closed_by_server()
            else:
                if isinstance(event, Error) and event.fatal:
                    self._drop()
                return event

    # -- lifecycle

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendall(self._protocol.send(Goodbye()))
        except OSError:
            pass  # the server may already be gone (e.g. after SHUTDOWN)
        self._drop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def tls_version(self) -> str | None:
        """The TLS version in use ("TLSv1.3"), or None in plaintext."""
        version = getattr(self._sock, "version", None)  # an ssl.SSLSocket's
        return version() if version is not None else None

    @property
    def tls_description(self) -> str | None:
        """ "TLSv1.3, cipher TLS_AES_256_GCM_SHA384" over TLS; None in plaintext."""
        cipher = getattr(self._sock, "cipher", None)  # an ssl.SSLSocket's
        if cipher is None or cipher() is None:
            return None
        name, version, _bits = cipher()
        return f"{version}, cipher {name}"

    # -- internals

    def _start_tls(
        self, mode: str, context: ssl.SSLContext, host: str, client_name: str, *, client_cert: bool = False
    ) -> None:
        """Ask for TLS right away (a hello naming no user) and, if the server
        accepts, wrap the socket; without it, go on in plaintext only under prefer."""
        import ssl  # imported by client_context already; not at all over the Unix socket

        self.send(Hello("", None, client_name, tls=True))
        event = self.next_event()
        if isinstance(event, Error):
            raise ConnectionFailed(f"the server at {self._where} refused the session: {event.message}", event.code)
        if not isinstance(event, TlsAnswer):
            self._drop()
            raise ConnectionFailed(
                f"the server at {self._where} sent {event.type} instead of answering the request for TLS",
                "protocol_violation",
            )
        if not event.accepted:
            if mode != PREFER:
                self._drop()
                raise ConnectionFailed(
                    f"the server at {self._where} does not offer TLS ({event.reason}) and --tls is {mode}; "
                    "enable TLS on the server (tls_cert_file, tls_key_file) or connect with --tls prefer",
                    "tls_unavailable",
                )
            return
        try:
            self._protocol.start_tls()
        except RemoteProtocolError as e:
            self._drop()
            raise ConnectionFailed(f"the server at {self._where} broke the protocol ({e.message})", e.code) from None
        try:
            self._sock = context.wrap_socket(self._sock, server_hostname=host)
            self._client_cert = client_cert
        except ssl.SSLCertVerificationError as e:
            self._drop()
            hint = (
                "the certificate does not name this host; connect with the host name it was issued for"
                if "mismatch" in (e.verify_message or "").lower()
                else "check --tls-ca-file names the CA that signed the server's certificate"
            )
            raise ConnectionFailed(
                f"the server at {self._where} presented a TLS certificate that --tls {VERIFY_FULL} refuses: "
                f"{e.verify_message or e.reason}; {hint}",
                "tls_verify_failed",
            ) from None
        except ssl.SSLError as e:
            self._drop()
            raise ConnectionFailed(
                f"the TLS handshake with {self._where} failed: {e.reason or e}", "tls_failed"
            ) from None
        except TimeoutError:
            self._drop()
            raise ConnectionFailed(
                f"the TLS handshake with {self._where} did not finish in time; the connection is closed", "timeout"
            ) from None
        except OSError as e:
            self._drop()
            raise ConnectionFailed(
                f"lost the connection to {self._where} during the TLS handshake ({e.strerror or e})",
                "connection_lost",
            ) from None

    def _handshake(self, hello: Hello) -> None:
        self._user = hello.user
        self.send(hello)
        while True:
            event = self.next_event()
            if isinstance(event, AuthContinue):
                for reply in event.replies:
                    self.send(reply)
            elif isinstance(event, Ready):
                return
            elif isinstance(event, Error):
                raise ConnectionFailed(
                    f"the server at {self._where} refused the session: {event.message}",
                    event.code,
                )

    def _receive(self) -> None:
        place = self._protocol.recv_buffer()
        try:
            if place is not None:  # the rest of a large frame, straight into its body
                got = self._sock.recv_into(place)
                if got:
                    self._protocol.received_into(got)
                    return
                data = b""
            else:
                data = self._sock.recv(_RECV_SIZE)
        except TimeoutError:
            self._drop()
            raise ConnectionFailed(
                f"the server at {self._where} did not answer in time; the connection is closed",
                "timeout",
            ) from None
        except OSError as e:
            self._drop()
            failure = self._tls_failure(e) if self._protocol.tls_active else None
            raise failure or ConnectionFailed(
                f"lost the connection to {self._where} ({e.strerror or e}); the server may have stopped",
                "connection_lost",
            ) from None
        if self._first_bytes is None and data:
            self._first_bytes = bytes(data[: len(_HTTP_ANSWER)])
        self._protocol.receive_data(data)

    def _tls_failure(self, e: OSError) -> ConnectionFailed | None:
        """What a TLS error while receiving means; None if ``e`` is no TLS error."""
        import ssl  # loaded already: the session is over TLS

        if not isinstance(e, ssl.SSLError):
            return None
        reason = e.reason or str(e)
        hint = ""
        if "CERTIFICATE_REQUIRED" in reason.upper():
            hint = "; the server requires a client certificate: give one with --tls-cert-file and --tls-key-file"
        elif "CERTIFICATE" in reason.upper():
            hint = "; the server may not accept this client's certificate"
        return ConnectionFailed(f"the server at {self._where} ended the TLS session ({reason}){hint}", "tls_failed")

    def _http_port(self) -> ConnectionFailed:
        return ConnectionFailed(
            f"{self._where} answered in HTTP: it is the server's HTTP API port, not its wire protocol "
            "port; use the port the server's `port` setting names (5432 by default) with --port",
            "http_port",
        )

    def _closed_by_server(self) -> ConnectionFailed:
        if self._protocol.tls_active and self._protocol.session_id is None:
            # A TLS server that refuses the client's certificate (or its lack of
            # one) closes the connection once the client's hello arrives.
            why = (
                "it may not accept the client certificate given (one its tls_ca_file's CAs did not sign)"
                if self._client_cert
                else "it may require a client certificate: give one with --tls-cert-file and --tls-key-file"
            )
            return ConnectionFailed(
                f"the server at {self._where} closed the connection after the TLS handshake; {why}",
                "tls_failed",
            )
        return ConnectionFailed(
            f"the server at {self._where} closed the connection; it may have been shut down or restarted",
            "connection_lost",
        )

    def _drain(self) -> None:
        # The caller stopped reading mid-answer: read the rest so the next
        # statement's answer is not mistaken for this one's.
        try:
            while True:
                event = self.next_event()
                if isinstance(event, (Complete, Error)):
                    return
        except ClientError:
            pass

    def _require_open(self) -> None:
        if self._sock is None:
            raise ConnectionFailed(f"the connection to {self._where} is closed; connect again", "closed")

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


_HTTP_ANSWER = b"HTTP/"

# What the frame decoder refuses, as opposed to a message at the wrong time.
_FRAME_ERRORS = frozenset({"bad_frame", "bad_message", "frame_too_large", "frame_too_deep", "frame_too_complex"})


__all__ = [
    "ClientError",
    "Columns",
    "Complete",
    "Connection",
    "ConnectionFailed",
    "Notice",
    "Result",
    "Rows",
    "ServerError",
    "connect",
    "read_password_file",
]
