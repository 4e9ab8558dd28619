"""The wire listener: one trio task per client connection.

The protocol logic lives in ``rustydb_client.protocol`` (sans-IO); this module
moves bytes between a socket and it: the handshake, then each request of the
session handed to its dispatcher (``dispatch.py``), whose answers go out
through ``send`` or, for a backup, the bulk and sendfile paths. A connection
that breaks the protocol gets a fatal error and is closed; nothing it sends
can affect the other connections.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import grp
import math
import os
import socket
import ssl
import time
from collections.abc import Callable

import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ServerSide
from rustydb_client.protocol.errors import LocalProtocolError, RemoteProtocolError

from . import auth
from . import roles as roles_mod
from . import tls as tls_mod
from .audit import DENIED, audit
from .backup.service import BackupService
from .checkpointer import Checkpointer
from .dispatch import Dispatcher, Services
from .errors import ReportedError
from .lifecycle import Lifecycle, StartupError
from .logsetup import get_logger
from .settings import to_seconds

log = get_logger("rustydb.wire")

RECV_SIZE = 65536
# How many unsent bytes a bulk stream may queue in the kernel (see bulk_sending).
BULK_NOTSENT_LOWAT = 4 << 20
# A connection that received a frame this large hands freed memory back to
# the OS when it closes (see return_freed_memory).
TRIM_AFTER_FRAME = 1 << 20
# A flood of refused connections is logged at most this often, with a count.
REFUSAL_LOG_EVERY_S = 10.0
# Socket errors that mean the peer is gone (beyond ConnectionError's).
_PEER_GONE = {errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENOTCONN}


def _load_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


_malloc_trim = _load_malloc_trim()


def return_freed_memory() -> None:
    """Give the heap memory Python has freed back to the OS.

    A large frame is received in 64 KiB pieces; glibc keeps the freed pieces
    in its heaps instead of returning them, so 40 clients that had each sent
    a 15 MiB frame left the server 570 MB larger after they had all closed.
    malloc_trim(0) releases the free pages of every heap (a no-op elsewhere
    than glibc).
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


class ConnectionClosed(Exception):
    pass


class SendTimedOut(Exception):
    """The client took no part of an answer within client_send_timeout: it
    stopped reading. The stream was closed (a frame may be cut short)."""


def _closing(code: str, message: str) -> ReportedError:
    """Why the server ends a connection that did nothing wrong."""
    return ReportedError(message, code, fatal=True)


class ClientConnection:
    def __init__(self, listener: WireListener, stream: trio.SocketStream, peer, *, uid: int | None = None):
        self.listener = listener
        self.stream = stream
        self.peer = peer
        self.uid = uid  # the peer's OS user on the Unix socket (SO_PEERCRED)
        self.superuser = auth.is_superuser_peer(listener.settings, peer, uid)
        self.role: roles_mod.Role | None = None  # once the handshake is over
        self.local = peer[0] == auth.LOCAL  # on the Unix socket, which never uses TLS
        self.protocol = ServerSide(
            auth.auth_fn_for(listener.settings, peer, lambda: listener.role_store.roles),
            tls_required=None if self.local else listener.tls.plaintext_refusal,
        )
        self.dispatcher: Dispatcher | None = None  # once the handshake is over
        # The session's wait for its next request: one cancel scope for the
        # connection's life (entered around the request loop), cancelled by
        # shutdown or given a deadline by idle_session_timeout only while the
        # connection waits (``waiting``), so a running statement is never
        # cancelled through it. One scope, not one per request: entering a
        # scope per request cost about 4.5 us of the event loop's CPU.
        self.wait_scope = trio.CancelScope()
        self.waiting = False

    # ------------------------------------------------------------- i/o
    async def send(self, *answer) -> None:
        """Send events in one write.

        First one plain write to the socket, past trio's stream (safe: only
        this connection's own task sends on it): a statement's answer nearly
        always fits the socket's buffer whole, and then costs no cancel scope,
        no timeout and no trip through the event loop (the request that
        follows is read through trio, which yields to the other tasks there).
        What did not fit goes the usual way, under client_send_timeout.
        """
        data = b"".join(map(self.protocol.send, answer))
        sent = self._try_write(data)
        if sent < len(data):
            await self._send_all(memoryview(data)[sent:] if sent else data)

    def _send_timeout(self) -> float:
        return to_seconds("client_send_timeout", self.listener.settings["client_send_timeout"])

    async def _send_all(self, data) -> None:
        """Write ``data``; a client that takes none of it for client_send_timeout
        has stopped reading, and its connection is closed (SendTimedOut), so
        its session's transaction and snapshot are released."""
        timeout = self._send_timeout()
        if not timeout:
            await self.stream.send_all(data)
            return
        with trio.move_on_after(timeout) as scope:
            await self.stream.send_all(data)
        if scope.cancelled_caught:
            await self._stopped_reading(timeout)

    def _try_write(self, data) -> int:
        """How many bytes of ``data`` one non-blocking write took (0 if none fit)."""
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return 0
        fd = sock.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the connection was closed")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as e:
            if isinstance(e, ConnectionError) or e.errno in _PEER_GONE:
                raise trio.BrokenResourceError(str(e)) from e
            raise

    async def _stopped_reading(self, timeout: float):
        # Part of a frame may be out: nothing more can go on this connection.
        await self._abandon_frame()
        raise SendTimedOut(f"the client took nothing of the answer for {timeout:g} s (client_send_timeout)")

    @contextlib.contextmanager
    def bulk_sending(self):
        """Let a bulk stream (a backup) fill the socket buffer while it lasts.

        trio sets TCP_NOTSENT_LOWAT to 16 KiB on the sockets it wraps, which
        keeps the next small message's latency low but makes a send return
        after about 200 KB: each 1 MiB backup frame took 5-7 sends, each a
        trip through the event loop. Throughput is what a backup wants.
        """
        sock = getattr(self.stream, "socket", None)
        option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
        try:
            before = sock.getsockopt(socket.IPPROTO_TCP, option)
            sock.setsockopt(socket.IPPROTO_TCP, option, BULK_NOTSENT_LOWAT)
        except (AttributeError, TypeError, OSError):  # not a TCP socket, or no such option here
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, before)

    async def send_bulk(self, event: events.BackupData) -> None:
        """Send ``event`` without copying its data into a frame."""
        head, data = self.protocol.send_with_data_passthrough(event)
        await self._send_all(head)
        await self._send_all(data)

    async def send_file_bulk(self, entry: str, last: bool, fd: int, offset: int, size: int) -> None:
        """Send a BackupData of ``size`` bytes of fd at offset, the bytes straight
        from the file to the socket (sendfile): no read into Python, no copy.

        Writes to the socket past trio's stream; that is safe because only this
        connection's own task ever sends on it.
        """
        await self._send_all(self.protocol.send_backup_data_head(entry, last, size))
        sock = getattr(self.stream, "socket", None)
        if sock is None or not hasattr(os, "sendfile"):
            data = await trio.to_thread.run_sync(os.pread, fd, size, offset)
            if len(data) != size:
                await self._file_ended_short(size - len(data))
            await self._send_all(data)
            return
        end = offset + size
        while offset < end:
            try:
                # In a worker thread: the socket does not block, but reading
                # the file may (pages not cached), and the event loop must not.
                sent = await trio.to_thread.run_sync(os.sendfile, sock.fileno(), fd, offset, end - offset)
            except BlockingIOError:
                timeout = self._send_timeout()
                with trio.move_on_after(timeout or math.inf) as scope:
                    await trio.lowlevel.wait_writable(sock)
                if scope.cancelled_caught:
                    await self._stopped_reading(timeout)
                continue
            except OSError as e:
                # Part of the frame is out: nothing more can go on this connection.
                await self._abandon_frame()
                if isinstance(e, ConnectionError) or e.errno in _PEER_GONE:
                    raise trio.BrokenResourceError(str(e)) from e
                raise
            if sent == 0:
                await self._file_ended_short(end - offset)
            offset += sent

    async def _file_ended_short(self, missing: int) -> None:
        await self._abandon_frame()
        raise OSError(f"the file ended {missing} bytes short of what was to be sent")

    async def _abandon_frame(self) -> None:
        """Close the connection after a frame was cut short: another frame
        after it would be read as the rest of its body."""
        await trio.aclose_forcefully(self.stream)

    async def recv(self):
        while True:
            event = self.protocol.next_event()
            if event is not events.NEED_DATA:
                return event
            await self._feed()

    async def _feed(self) -> None:
        data = await self._receive_some()
        if not data:
            raise ConnectionClosed()
        self.protocol.receive_data(data)

    async def _receive_some(self) -> bytes:
        """The next bytes from the client (b"" at its end).

        On a plain socket, a wait until it is readable and then one read,
        past trio's stream (only this connection's task reads it): trio's
        ``receive_some`` tries the read first, and a request is nearly never
        there yet when the answer has just gone out (the client has not run),
        so each request cost a failed read, its exception and two context
        managers more. The wait is a checkpoint either way. Over TLS, trio's
        stream.
        """
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            return await self.stream.receive_some(RECV_SIZE)
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the connection was closed")
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as e:
                if isinstance(e, ConnectionError) or e.errno in _PEER_GONE:
                    raise trio.BrokenResourceError(str(e)) from e
                if e.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the connection was closed") from e
                raise

    async def recv_idle(self):
        """Wait for the next event inside ``wait_scope``; None when shutdown or
        idle_session_timeout cancelled the wait (then it raises Cancelled, which
        the scope around the request loop catches; see ``_run``)."""
        event = self.protocol.next_event()
        if event is not events.NEED_DATA:
            return event  # it came with the one before: no wait
        scope = self.wait_scope
        settings = self.listener.settings
        idle = to_seconds("idle_session_timeout", settings["idle_session_timeout"])
        self.waiting = True
        try:
            if self.listener.lifecycle.stopping:
                scope.cancel()
            if idle:
                scope.deadline = trio.current_time() + idle
            await self._feed()  # the protocol has just said it needs data
            event = await self.recv()
        finally:
            self.waiting = False
            if idle:
                scope.deadline = math.inf
        if scope.cancel_called:
            # Cancelled after the wait had ended, before this task ran again:
            # shutdown or the idle timeout came first.
            return None
        return event

    def stop_waiting(self) -> None:
        """Shutdown: end the connection's wait for a request, if it is waiting
        (a running statement goes on)."""
        if self.waiting:
            self.wait_scope.cancel()

    # ------------------------------------------------------------- flow
    async def run(self) -> None:
        try:
            await self._run()
        except ReportedError as e:
            log.info("closing client connection", peer=self.peer, code=e.code, reason=str(e))
            await self._try_send(events.Error(e.code, str(e), fatal=True))
        except RemoteProtocolError as e:
            if e.code == "tls_required":  # policy, not a broken protocol: the audit event says it
                audit("authenticate", DENIED, peer=self.peer, method="plaintext", reason="TLS is required")
            else:
                log.warning("client broke the protocol", peer=self.peer, code=e.code, reason=e.message)
            if e.code == "auth_failed":
                audit("authenticate", "failed", user=self.protocol.hello_user, peer=self.peer, method="scram")
            await self._try_send(events.Error(e.code, e.message, fatal=True))
        except SendTimedOut as e:
            log.warning(
                "client stopped reading; closing its connection and rolling back its session",
                peer=self.peer,
                session=self.dispatcher.session_id if self.dispatcher is not None else None,
                reason=str(e),
            )
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as e:  # a bug or an I/O error: this client, not the server
            log.exception("internal error; closing this connection", peer=self.peer, error=str(e))
            await self._try_send(
                events.Error("internal_error", f"internal error: {e}; the server log has the details", fatal=True)
            )
        finally:
            # Shielded: even when the server is being cancelled, the session's
            # transaction is rolled back and its SQLite connection closed.
            with trio.CancelScope(shield=True):
                if self.dispatcher is not None:
                    await self.dispatcher.close()
                    self.listener.sessions.pop(self.dispatcher.session_id, None)
                await self._close_stream()
                if self.protocol.largest_frame_received >= TRIM_AFTER_FRAME:
                    self.protocol = None  # its buffers with it
                    await trio.to_thread.run_sync(return_freed_memory)  # ~30 ms after 600 MB

    async def _close_stream(self) -> None:
        """Close the stream; over TLS, a peer that takes no close_notify within
        a second is not waited for."""
        if isinstance(self.stream, trio.SSLStream):
            with trio.move_on_after(1):
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.aclose()
                return
            await trio.aclose_forcefully(self.stream)
            return
        await self.stream.aclose()

    async def _try_send(self, event) -> None:
        with trio.move_on_after(2):
            try:
                await self.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                pass  # gone, or already told a fatal error

    async def _handshake(self):
        """Read the hello and authenticate: the session request, or Goodbye.

        Bounded in time (authentication_timeout) and in memory (the
        protocol's small frame limit until the session is established).
        """
        settings = self.listener.settings
        timeout = to_seconds("authentication_timeout", settings["authentication_timeout"])
        with trio.move_on_after(timeout) as handshake:
            event = await self.recv()
            while isinstance(event, (events.AuthContinue, events.TlsRequested)):
                if isinstance(event, events.TlsRequested):
                    await self._answer_tls()
                else:
                    for reply in event.replies:
                        await self.send(reply)
                event = await self.recv()
        if handshake.cancelled_caught:
            raise _closing(
                "authentication_timeout",
                f"the client did not finish authenticating within {timeout:g} s "
                "(authentication_timeout); connection closed",
            )
        return event

    async def _answer_tls(self) -> None:
        """Answer a hello that asked for TLS; if accepted, wrap the stream in TLS
        (the handshake, under authentication_timeout with the rest)."""
        context = self.listener.tls.context
        if self.local or context is None:
            reason = tls_mod.NOT_ON_UNIX_SOCKET if self.local else tls_mod.NOT_ENABLED
            await self.send(events.TlsAnswer(False, reason))
            return
        await self.send(events.TlsAnswer(True))
        self.protocol.start_tls()
        stream = trio.SSLStream(self.stream, context, server_side=True)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as e:
            why = e.__cause__
            reason = getattr(why, "reason", None) or str(why or e)
            log.info("TLS handshake failed", peer=self.peer, reason=reason)
            if isinstance(why, ssl.SSLError):
                audit("authenticate", "failed", peer=self.peer, method="tls", reason=reason)
            raise ConnectionClosed() from None
        self.stream = stream
        cert = stream.getpeercert() or {}
        log.debug("TLS started", peer=self.peer, version=stream.version(), client_cert=bool(cert))

    async def _run(self) -> None:
        try:
            event = await self._handshake()
        finally:
            self.listener.handshake_ended(self)
        if isinstance(event, events.Goodbye):
            return
        listener = self.listener
        try:
            self.role = auth.session_role(listener.settings, listener.role_store.roles, self.peer, self.uid, event.user)
        except auth.PeerAuthFailed as e:
            audit("authenticate", DENIED, user=event.user, peer=self.peer, method="peer", reason=str(e))
            raise ReportedError(str(e), "auth_failed", fatal=True) from None
        for reply in event.replies:
            await self.send(reply)
        self.dispatcher = Dispatcher(listener.services, self, listener.next_session_id)
        listener.next_session_id += 1
        ready = await self.dispatcher.open_session(event)
        listener.sessions[self.dispatcher.session_id] = self
        await self.send(ready)
        with self.wait_scope:
            while True:
                if listener.lifecycle.stopping:
                    raise _closing("shutdown", "the server is shutting down")
                event = await self.recv_idle()
                if event is None:
                    break
                if isinstance(event, events.Goodbye):
                    return
                await self.dispatcher.handle(event)
        # The wait for a request was cancelled: shutdown, or the session idle.
        if not listener.lifecycle.stopping:
            raise _closing("idle_timeout", "closing the connection after idle_session_timeout")
        raise _closing("shutdown", "the server is shutting down")


def _peer_of(stream: trio.SocketStream):
    """(host, port) of a TCP peer; (auth.LOCAL, OS user name) and its uid on the Unix socket."""
    sock = stream.socket
    if sock.family == socket.AF_UNIX:
        uid = auth.peer_uid(sock)
        return (auth.LOCAL, auth.os_user_name(uid) if uid is not None else "?"), uid
    try:
        host, port = sock.getpeername()[:2]
        return (host, port), None
    except OSError:
        return (None, None), None


def _open_role_store(data_dir: str) -> roles_mod.RoleStore:
    try:
        return roles_mod.RoleStore(data_dir)
    except roles_mod.RoleError as e:
        raise StartupError(str(e)) from None


def tls_policy(settings) -> tls_mod.TlsPolicy:
    """The TLS policy of the settings; a StartupError when they cannot work."""
    try:
        return tls_mod.policy(settings)
    except tls_mod.TlsConfigError as e:
        raise StartupError(str(e)) from None


SOCKET_NAME = ".s.RUSTYDB.{port}"


def socket_path(settings) -> str | None:
    """Where the Unix socket goes: unix_socket_directory when it is writable
    (created when its parent is), else the data directory; None when it is off."""
    directory = settings["unix_socket_directory"]
    if not directory:
        return None
    name = SOCKET_NAME.format(port=settings["port"])
    with contextlib.suppress(OSError):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
        return os.path.join(directory, name)
    log.info(
        "unix_socket_directory is not writable; the Unix socket goes in the data directory",
        unix_socket_directory=directory,
    )
    return os.path.join(settings["data_dir"], name)


def _open_unix_listener(settings, path: str) -> trio.SocketListener:
    """Listen on ``path`` with unix_socket_permissions and unix_socket_group.

    A socket file left by a server that is gone is replaced; one a running
    server answers on is not (that server holds the port too, so this is
    reached only when another server's socket directory is shared).
    """
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens on it
        else:
            raise StartupError(f"another server listens on the Unix socket {path}; give this one another port")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        mode = int(settings["unix_socket_permissions"], 8)
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        group = settings["unix_socket_group"]
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise StartupError(
                    f"unix_socket_group {group!r} is not a group on this machine; name an existing group"
                ) from None
            os.chown(path, -1, gid)
        sock.listen(socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise StartupError(
            f"cannot listen on the Unix socket {path}: {e.strerror or e}; check unix_socket_directory "
            "(or set it to '' to listen on TCP only)"
        ) from None
    except StartupError:
        sock.close()
        raise
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


class WireListener:
    """The wire protocol's listener: one task per client connection, in its own nursery.

    Shutdown (``drain`` or ``abort``) closes the listening sockets and ends the
    connections; ``run`` returns once the last one has closed.
    """

    def __init__(
        self,
        engine,
        settings,
        lifecycle: Lifecycle,
        *,
        backups: BackupService,
        checkpointer: Checkpointer,
        settings_changed: Callable[[], None],
    ):
        self.settings = settings
        self.lifecycle = lifecycle
        self.services = Services(
            engine,
            settings,
            lifecycle,
            checkpointer,
            backups,
            settings_changed,
            trio.CapacityLimiter(settings["max_connections"] + 4),
            _open_role_store(settings["data_dir"]),
        )
        self.sessions: dict[int, ClientConnection] = {}
        # Every connection from accept to close, and those still authenticating:
        # what max_connections and max_handshakes limit.
        self.connections = 0
        self._handshaking: set[ClientConnection] = set()
        self._refused = 0  # refusals not logged yet
        self._refusal_logged_at = -math.inf
        self.next_session_id = 1
        self._accept_scope = trio.CancelScope()
        self._all_closed = trio.Event()
        self.role_store = self.services.role_store
        self.socket_path: str | None = None
        self.tls = tls_policy(settings)

    def _migrate_users_file(self) -> None:
        """The users file of before roles: its users become LOGIN SUPERUSER roles, once."""
        path = self.settings["auth_users_file"]
        if not path:
            return
        try:
            added = roles_mod.migrate_users_file(self.role_store, auth.users_file_verifiers(path))
        except (OSError, ValueError) as e:
            raise StartupError(
                f"cannot migrate the users file {path} into roles: {getattr(e, 'strerror', None) or e}; "
                "fix it or unset auth_users_file"
            ) from None
        if added:
            log.info("users file migrated into roles (LOGIN SUPERUSER)", path=path, roles=added)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then accept connections until shutdown and wait for all to close."""
        settings = self.settings
        self._migrate_users_file()
        if settings["auth_trust_loopback"]:
            log.warning(
                "auth_trust_loopback is on: any local OS user can connect over TCP loopback without a "
                "password as the superuser; turn it off and use the Unix socket or passwords"
            )
        try:
            listeners = await trio.open_tcp_listeners(settings["port"], host=settings["listen_address"])
        except OSError as e:
            raise StartupError(
                f"cannot listen on {settings['listen_address']} port {settings['port']}: "
                f"{e.strerror or e}; check listen_address (--listen) and port (--port), and that "
                "no other program uses that port"
            ) from None
        path = socket_path(settings)
        if path is not None:
            try:
                listeners.append(_open_unix_listener(settings, path))
            except StartupError:
                for listener in listeners:
                    await listener.aclose()
                raise
            self.socket_path = path
            log.info("listening on a Unix socket", path=path, mode=settings["unix_socket_permissions"])
        limit, reserved = settings["max_connections"], settings["superuser_reserved_connections"]
        if reserved >= limit:
            log.warning(
                "superuser_reserved_connections leaves no connection for clients other than the superuser",
                max_connections=limit,
                superuser_reserved_connections=reserved,
            )
        async with trio.open_nursery() as connections:
            task_status.started()
            with self._accept_scope:
                await trio.serve_listeners(self._handle, listeners, handler_nursery=connections)
            for listener in listeners:
                await listener.aclose()
            if self.socket_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
        self._all_closed.set()

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer, uid = _peer_of(stream)
        conn = ClientConnection(self, stream, peer, uid=uid)
        refusal = self._refusal(conn)
        if refusal is not None:
            self._log_refusal(conn.peer, refusal)
            await conn._try_send(events.Error("too_many_connections", refusal, fatal=True))
            await stream.aclose()
            return
        # Counted from here to close, with no checkpoint between the check
        # above and these: a client that connects and waits before its hello
        # holds its slot as much as one with a session.
        self.connections += 1
        self._handshaking.add(conn)
        try:
            await conn.run()
        finally:
            self._handshaking.discard(conn)
            self.connections -= 1

    def _log_refusal(self, peer, reason: str) -> None:
        """Log a refused connection; in a flood, one line per REFUSAL_LOG_EVERY_S
        with how many were refused, so the log cannot be flooded too."""
        self._refused += 1
        now = trio.current_time()
        if now - self._refusal_logged_at < REFUSAL_LOG_EVERY_S:
            return
        log.warning("connection refused", peer=peer, reason=reason, refused=self._refused)
        self._refused = 0
        self._refusal_logged_at = now

    def handshake_ended(self, conn: ClientConnection) -> None:
        """``conn`` authenticated (or gave up): no longer counted as handshaking."""
        self._handshaking.discard(conn)

    def _refusal(self, conn: ClientConnection) -> str | None:
        """Why a new connection may not be served now, or None."""
        settings = self.settings
        limit, reserved = settings["max_connections"], settings["superuser_reserved_connections"]
        if self.connections >= limit:
            return (
                f"the server already has {self.connections} connections, its limit (max_connections "
                f"{limit}); try again later, or raise max_connections"
            )
        if conn.superuser:
            return None
        ordinary = max(limit - reserved, 0)
        if self.connections >= ordinary:
            return (
                f"the server already has {self.connections} connections; the other {limit - ordinary} of "
                f"max_connections {limit} are reserved for the superuser (superuser_reserved_connections); "
                "try again later"
            )
        handshaking = sum(1 for c in self._handshaking if not c.superuser)
        if handshaking >= settings["max_handshakes"]:
            return (
                f"{handshaking} connections are still authenticating, the limit (max_handshakes "
                f"{settings['max_handshakes']}); try again shortly"
            )
        return None

    async def drain(self, timeout: float) -> None:
        """Graceful stop: no new connections, idle ones closed, running statements finish."""
        self._accept_scope.cancel()
        started = time.monotonic()
        for conn in list(self.sessions.values()):
            conn.stop_waiting()
        with trio.move_on_after(timeout):
            await self._all_closed.wait()
            log.info("all sessions closed", seconds=round(time.monotonic() - started, 3))
            return
        log.warning("shutdown_timeout reached; interrupting running statements", sessions=len(self.sessions))
        await self.abort()

    async def abort(self) -> None:
        """Immediate stop: running statements are interrupted, every connection closed."""
        self._accept_scope.cancel()
        for conn in list(self.sessions.values()):
            if conn.dispatcher is not None:
                conn.dispatcher.interrupt()
            conn.stop_waiting()
        with trio.move_on_after(5):
            await self._all_closed.wait()
