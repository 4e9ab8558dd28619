"""The admin HTTP API: a Starlette app served by hypercorn's trio worker.

A component of the server's root nursery, started before recovery so that
health answers "starting" (503) while a long recovery runs; every other route
answers 503 until the run module hands it the running server's components.
Every route lives under /api/v1/admin/ as the operations guide shows. A bearer
token is required when one is configured, and always for clients that are not
on the loopback interface (an API that can start backups is not left open to
the network by default).
"""

from __future__ import annotations

import errno
import hmac
import logging
import os

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import is_loopback
from .backup import api as backup_api
from .backup.service import BackupService
from .health import health_report
from .lifecycle import Lifecycle, StartupError
from .logsetup import get_logger
from .schedule import api as schedule_api

log = get_logger("rustydb.http")


def read_token(path: str) -> str | None:
    if not path:
        return None
    with open(path) as f:
        token = f.read().strip()
    return token or None


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class TokenGuard:
    """ASGI middleware: bearer token check in constant time."""

    def __init__(self, app, settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client") or (None, None)
        try:
            token = read_token(self.settings["http_api_token_file"])
        except OSError as e:
            resp = error(503, f"cannot read http_api_token_file: {e.strerror}", "config_error")
            return await resp(scope, receive, send)
        if token is None and is_loopback(client[0]):
            return await self.app(scope, receive, send)
        if token is None:
            resp = error(
                401,
                "the HTTP API needs a bearer token for clients that are not on loopback; "
                "set http_api_token_file on the server",
                "unauthorized",
            )
            return await resp(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        expected = "Bearer " + token
        if not hmac.compare_digest(given.encode(), expected.encode()):
            resp = error(401, "missing or wrong bearer token", "unauthorized")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


async def _not_found(request: Request, exc) -> JSONResponse:
    return error(404, f"no such endpoint: {request.method} {request.url.path}", "not_found")


async def _method_not_allowed(request: Request, exc) -> JSONResponse:
    return error(405, f"{request.method} is not allowed on {request.url.path}", "method_not_allowed")


async def _server_error(request: Request, exc) -> JSONResponse:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.warning("HTTP request failed: disk full", path=request.url.path, error=str(exc))
        return error(507, f"the disk is full: {exc.strerror or exc}; free disk space and try again", "disk_full")
    log.error("HTTP handler failed", path=request.url.path, error=repr(exc))
    return error(500, "internal error; see the server log", "internal_error")


def _app(routes: list[Route]) -> Starlette:
    return Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _method_not_allowed, 500: _server_error},
    )


def _health_answer(report: dict) -> JSONResponse:
    # degraded: running and serving, with its reasons; starting, stopping, unhealthy: 503
    return JSONResponse(report, status_code=200 if report["status"] in ("healthy", "degraded") else 503)


def build_starting_app(settings, lifecycle: Lifecycle) -> Starlette:
    """While the server recovers: health, and 503 for what needs the running server."""

    async def health(request: Request) -> JSONResponse:
        return _health_answer(health_report(settings, lifecycle))

    async def archive(request: Request) -> JSONResponse:
        return error(503, "the server is still starting", "starting")

    async def start_backup(request: Request) -> JSONResponse:
        try:
            await backup_api.read_body(request)
        except backup_api.BadBody as e:
            return e.response()
        return error(503, "the server is still starting; try again in a moment", "invalid_backup_request")

    async def backups(request: Request) -> JSONResponse:
        return error(503, "the server is still starting; try again in a moment", "starting")

    return _app(
        [
            Route("/api/v1/admin/health", health, methods=["GET"]),
            Route("/api/v1/admin/archive", archive, methods=["GET"]),
            Route("/api/v1/admin/backup", start_backup, methods=["POST"]),
            Route("/api/v1/admin/backup/{backup_id}", backups, methods=["GET", "DELETE"]),
            Route("/api/v1/admin/backups", backups, methods=["GET"]),
            # The backup scheduler's last and next runs (schedule/api.py).
            Route("/api/v1/admin/schedule", backups, methods=["GET"]),
        ]
    )


def build_app(settings, lifecycle: Lifecycle, engine, archiver, backups: BackupService, sessions) -> Starlette:
    """The running server's API; ``sessions`` is the wire listener's open sessions."""

    async def health(request: Request) -> JSONResponse:
        return _health_answer(health_report(settings, lifecycle, engine, archiver, len(sessions)))

    async def archive(request: Request) -> JSONResponse:
        return JSONResponse(archiver.report())

    routes = [
        Route("/api/v1/admin/health", health, methods=["GET"]),
        Route("/api/v1/admin/archive", archive, methods=["GET"]),
    ]
    routes.extend(backup_api.routes(backups, settings))
    # The backup scheduler's last and next runs.
    routes.extend(schedule_api.routes(backups))
    return _app(routes)


class HttpApi:
    def __init__(self, settings, lifecycle: Lifecycle):
        self._settings = settings
        self._lifecycle = lifecycle
        self._app = TokenGuard(build_starting_app(settings, lifecycle), settings)

    def serve_running(self, engine, archiver, backups: BackupService, sessions) -> None:
        """Recovery is over: from now on every route answers."""
        app = build_app(self._settings, self._lifecycle, engine, archiver, backups, sessions)
        self._app = TokenGuard(app, self._settings)

    async def __call__(self, scope, receive, send):
        """The ASGI app hypercorn serves: the starting one, then the running one."""
        await self._app(scope, receive, send)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on listen_address:http_port until cancelled."""
        host, port = self._settings["listen_address"], self._settings["http_port"]
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 5.0
        started = []

        class _Started:  # tells a failure to bind apart from one while serving
            def started(self, value=None):
                started.append(True)
                log.info("HTTP API listening", address=f"{host}:{port}", pid=os.getpid())
                task_status.started(value)

        try:
            await serve(self, config, task_status=_Started())
        except BaseException as exc:
            e = exc
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]  # hypercorn binds inside a nursery
            if started or not isinstance(e, OSError):
                raise
            raise StartupError(
                f"cannot listen for the HTTP API on {host} port {port}: {e.strerror or e}; check "
                "listen_address (--listen) and http_port (--http-port), and that no other program "
                "uses that port"
            ) from None
