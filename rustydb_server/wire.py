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
import math
import os
import socket
import time
from collections.abc import Callable

import trio

from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ServerSide
from rustydb_client.protocol.errors import LocalProtocolError, RemoteProtocolError

from . import auth
from .audit import audit
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
    def __init__(self, listener: WireListener, stream: trio.SocketStream, peer, *, superuser: bool = False):
        self.listener = listener
        self.stream = stream
        self.peer = peer
        self.superuser = superuser
        self.protocol = ServerSide(auth.auth_fn_for(listener.settings, peer))
        self.dispatcher: Dispatcher | None = None  # once the handshake is over
        self.idle_scope: trio.CancelScope | None = None

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
            data = await self.stream.receive_some(RECV_SIZE)
            if not data:
                raise ConnectionClosed()
            self.protocol.receive_data(data)

    async def recv_idle(self):
        """Wait for the next event; None when shutdown interrupts the wait."""
        settings = self.listener.settings
        idle = to_seconds("idle_session_timeout", settings["idle_session_timeout"])
        with trio.CancelScope() as scope:
            self.idle_scope = scope
            if self.listener.lifecycle.stopping:
                scope.cancel()
            if idle:
                scope.deadline = trio.current_time() + idle
            event = await self.recv()
            self.idle_scope = None
            return event
        self.idle_scope = None
        if not self.listener.lifecycle.stopping:
            raise _closing("idle_timeout", "closing the connection after idle_session_timeout")
        return None

    # ------------------------------------------------------------- flow
    async def run(self) -> None:
        try:
            await self._run()
        except ReportedError as e:
            log.info("closing client connection", peer=self.peer, code=e.code, reason=str(e))
            await self._try_send(events.Error(e.code, str(e), fatal=True))
        except RemoteProtocolError as e:
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
                await self.stream.aclose()
                if self.protocol.largest_frame_received >= TRIM_AFTER_FRAME:
                    self.protocol = None  # its buffers with it
                    await trio.to_thread.run_sync(return_freed_memory)  # ~30 ms after 600 MB

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
            while isinstance(event, events.AuthContinue):
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

    async def _run(self) -> None:
        try:
            event = await self._handshake()
        finally:
            self.listener.handshake_ended(self)
        if isinstance(event, events.Goodbye):
            return
        for reply in event.replies:
            await self.send(reply)
        listener = self.listener
        self.dispatcher = Dispatcher(listener.services, self, listener.next_session_id)
        listener.next_session_id += 1
        ready = await self.dispatcher.open_session(event)
        listener.sessions[self.dispatcher.session_id] = self
        await self.send(ready)
        while True:
            if listener.lifecycle.stopping:
                raise _closing("shutdown", "the server is shutting down")
            event = await self.recv_idle()
            if event is None:
                raise _closing("shutdown", "the server is shutting down")
            if isinstance(event, events.Goodbye):
                return
            await self.dispatcher.handle(event)


def _peer_of(stream: trio.SocketStream):
    try:
        host, port = stream.socket.getpeername()[:2]
        return host, port
    except OSError:
        return None, None


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

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then accept connections until shutdown and wait for all to close."""
        settings = self.settings
        try:
            listeners = await trio.open_tcp_listeners(settings["port"], host=settings["listen_address"])
        except OSError as e:
            raise StartupError(
                f"cannot listen on {settings['listen_address']} port {settings['port']}: "
                f"{e.strerror or e}; check listen_address (--listen) and port (--port), and that "
                "no other program uses that port"
            ) from None
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
        self._all_closed.set()

    async def _handle(self, stream: trio.SocketStream) -> None:
        peer = _peer_of(stream)
        conn = ClientConnection(self, stream, peer, superuser=auth.is_superuser_peer(self.settings, peer))
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
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()
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
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()
        with trio.move_on_after(5):
            await self._all_closed.wait()
