"""The admin HTTP API: a Starlette app served by hypercorn's trio worker.

A component of the server's root nursery, started before recovery when the
WAL may need replaying (after a crash), so that health answers "starting"
(503) while a long recovery runs, and otherwise right after the SQL listener
(run.py imports this module, and hypercorn and Starlette behind it, only
then); every other route answers 503 until the run module hands it the
running server's components.
Every route lives under /api/v1/admin/ as the operations guide shows. Who may
use which route, and how, is ``http_access.decide``: health answers everyone
(the whole report only to a trusted client), every other route needs the
bearer token but from trusted loopback clients, and browsers cannot drive it.
"""

from __future__ import annotations

import errno
import logging
import os

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import http_access
from . import tls as tls_mod
from .audit import audit
from .backup import api as backup_api
from .backup.expire import ExpireFailed
from .backup.service import BackupService
from .health import health_report
from .lifecycle import Lifecycle, StartupError
from .logsetup import get_logger
from .metrics import Metrics
from .schedule import api as schedule_api

log = get_logger("rustydb.http")


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class AccessGuard:
    """ASGI middleware: who may use the API and how (``http_access.decide``);
    refusals of a token or a trust are audit events."""

    def __init__(self, app, settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client") or (None, None)
        try:
            token = http_access.read_token(self.settings["http_api_token_file"])
        except http_access.TokenFileError as e:
            log.error("the HTTP API cannot check tokens", error=str(e))
            resp = error(503, str(e), "config_error")
            return await resp(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        verdict = http_access.decide(
            scope["method"],
            scope["path"],
            headers,
            client[0],
            token,
            trust_loopback_setting=self.settings["http_api_trust_loopback"],
            allowed_host_names=http_access.allowed_hosts(self.settings["http_api_allowed_hosts"]),
        )
        if verdict.status:
            if verdict.audit:
                audit(
                    "http_request",
                    verdict.audit,
                    peer=client,
                    method=scope["method"],
                    path=scope["path"],
                    reason=verdict.code,
                )
            resp = error(verdict.status, verdict.message, verdict.code)
            if verdict.status == 401:
                resp.headers["WWW-Authenticate"] = "Bearer"
            return await resp(scope, receive, send)
        scope.setdefault("state", {})["access"] = verdict
        return await self.app(scope, receive, send)


def check_token_file(settings) -> None:
    """At start: a token file that cannot be read, or that others may read, stops the server."""
    try:
        http_access.read_token(settings["http_api_token_file"])
    except http_access.TokenFileError as e:
        raise StartupError(str(e)) from None


def _tls_on(settings) -> bool:
    """Whether the API is served over HTTPS; a StartupError when the TLS settings cannot work."""
    try:
        return tls_mod.policy(settings).enabled
    except tls_mod.TlsConfigError as e:
        raise StartupError(str(e)) from None


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


def _health_answer(request: Request, report: dict) -> JSONResponse:
    # degraded: running and serving, with its reasons; starting, stopping, unhealthy: 503
    code = 200 if report["status"] in ("healthy", "degraded") else 503
    access = getattr(request.state, "access", None)
    if access is None or not access.full:
        # An untrusted client (a load balancer, a monitor) learns whether the
        # server is up, and which release, nothing else: no paths, no WAL positions.
        report = {"status": report["status"], "version": report["version"]}
    return JSONResponse(report, status_code=code)


def build_starting_app(settings, lifecycle: Lifecycle) -> Starlette:
    """While the server recovers: health, and 503 for what needs the running server."""

    async def health(request: Request) -> JSONResponse:
        return _health_answer(request, health_report(settings, lifecycle))

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

    async def starting(request: Request) -> JSONResponse:
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
            # Retention on demand, and the Prometheus figures (metrics.py).
            Route("/api/v1/admin/expire", starting, methods=["POST"]),
            Route("/metrics", starting, methods=["GET"]),
        ]
    )


def build_app(
    settings, lifecycle: Lifecycle, engine, archiver, backups: BackupService, sessions, metrics: Metrics | None = None
) -> Starlette:
    """The running server's API; ``sessions`` is the wire listener's open sessions,
    ``metrics`` what GET /metrics renders."""

    async def health(request: Request) -> JSONResponse:
        return _health_answer(
            request, health_report(settings, lifecycle, engine, archiver, len(sessions), backups=backups)
        )

    async def archive(request: Request) -> JSONResponse:
        return JSONResponse(archiver.report())

    routes = [
        Route("/api/v1/admin/health", health, methods=["GET"]),
        Route("/api/v1/admin/archive", archive, methods=["GET"]),
    ]
    routes.extend(backup_api.routes(backups, settings))
    # The backup scheduler's last and next runs.
    routes.extend(schedule_api.routes(backups))

    async def scrape(request: Request) -> Response:
        if metrics is None:
            return error(503, "this server keeps no metrics", "not_available")
        body = await trio.to_thread.run_sync(metrics.render)
        return Response(body, media_type=metrics.content_type)

    async def expire(request: Request) -> JSONResponse:
        try:
            body = await backup_api.read_body(request)
        except backup_api.BadBody as e:
            return e.response()
        dry_run = body.get("dry_run", False) if isinstance(body, dict) else None
        if not isinstance(dry_run, bool) or set(body) - {"dry_run"}:
            return error(400, 'the body is {"dry_run": true} or {"dry_run": false} (or empty)', "bad_request")
        who = backup_api.who(request)
        try:
            doc = await backups.expirer.run(dry_run=dry_run)
        except ExpireFailed as e:
            audit("expire", "failed", **who, via="http", dry_run=dry_run, error=str(e))
            return error(e.status, str(e), "expire_failed")
        audit(
            "expire",
            "ok",
            **who,
            via="http",
            dry_run=dry_run,
            backups=[b["backup_id"] for b in doc["backups"] if b["removed"]],
            segments=sum(1 for s in doc["segments"] if s["removed"]),
        )
        return JSONResponse(doc, status_code=200 if doc["ok"] else 500)

    routes.append(Route("/api/v1/admin/expire", expire, methods=["POST"]))
    routes.append(Route("/metrics", scrape, methods=["GET"]))
    return _app(routes)


class HttpApi:
    def __init__(self, settings, lifecycle: Lifecycle):
        self._settings = settings
        self._lifecycle = lifecycle
        self._app = AccessGuard(build_starting_app(settings, lifecycle), settings)

    def serve_running(self, engine, archiver, backups: BackupService, sessions) -> None:
        """Recovery is over: from now on every route answers."""
        metrics = Metrics(self._settings, engine, archiver, backups, sessions)
        app = build_app(self._settings, self._lifecycle, engine, archiver, backups, sessions, metrics)
        self._app = AccessGuard(app, self._settings)

    async def __call__(self, scope, receive, send):
        """The ASGI app hypercorn serves: the starting one, then the running one."""
        await self._app(scope, receive, send)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on listen_address:http_port until cancelled."""
        check_token_file(self._settings)
        host, port = self._settings["listen_address"], self._settings["http_port"]
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 1.0
        config.keep_alive_timeout = 5.0
        scheme = "http"
        if _tls_on(self._settings):
            # HTTPS with the wire protocol's certificate and key (checked there);
            # client certificates (tls_ca_file) are the wire protocol's only.
            config.certfile, config.keyfile = self._settings["tls_cert_file"], self._settings["tls_key_file"]
            scheme = "https"
        started = []

        class _Started:  # tells a failure to bind apart from one while serving
            def started(self, value=None):
                started.append(True)
                log.info("HTTP API listening", address=f"{host}:{port}", scheme=scheme, pid=os.getpid())
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
