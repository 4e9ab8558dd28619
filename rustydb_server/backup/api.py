"""HTTP routes for backups: start one, look one up, list the catalog."""

from __future__ import annotations

import json
import os

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .. import alerts
from ..audit import audit
from .request import BackupRequestError, parse_request
from .service import BackupService

PUBLIC_FIELDS = ("backup_id", "status", "started_at", "completed_at", "size_bytes", "location")


#: A backup request is a few fields; anything much larger is refused unread.
MAX_BODY = 64 * 1024


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class BadBody(Exception):
    """A request body that is too large or not JSON."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code

    def response(self) -> JSONResponse:
        return _error(self.status, str(self), self.code)


async def read_body(request: Request):
    """The request's JSON body (an empty one is ``{}``), read up to MAX_BODY bytes."""
    raw = bytearray()
    async for piece in request.stream():
        raw += piece
        if len(raw) > MAX_BODY:
            raise BadBody(
                413,
                f"the request body is larger than {MAX_BODY} bytes; a backup request is a small JSON object",
                "body_too_large",
            )
    try:
        return json.loads(raw or b"{}")
    except RecursionError:
        raise BadBody(400, "the request body is not valid JSON: nested too deeply", "bad_json") from None
    except ValueError as e:
        raise BadBody(400, f"the request body is not valid JSON: {e}", "bad_json") from None


def describe(entry: dict) -> dict:
    """The guide's fields first, then everything else the catalog knows."""
    out = {k: entry.get(k) for k in PUBLIC_FIELDS}
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def _who(request: Request) -> dict:
    """The audit fields of an API client: its address, and how it was trusted."""
    client = request.client
    access = getattr(request.state, "access", None)
    return {
        "peer": (client.host, client.port) if client else None,
        "user": f"http:{access.by}" if access is not None and access.by else None,
    }


#: For the other routes of the admin API.
who = _who


def routes(service: BackupService, settings) -> list[Route]:
    async def start(request: Request) -> JSONResponse:
        try:
            body = await read_body(request)
        except BadBody as e:
            return e.response()
        try:
            req = parse_request(body, settings)
        except BackupRequestError as e:
            audit("backup", "failed", **_who(request), via="http", error=str(e))
            return _error(e.status, str(e), "invalid_backup_request")
        try:
            entry = service.start_backup(req)
        except BackupRequestError as e:
            audit("backup", "failed", **_who(request), via="http", error=str(e))
            if e.status != 409:  # a well-formed request the server could not carry out
                alerts.failure(
                    "backup", req.backup_type.value, backup_type=req.backup_type.value, trigger="api", error=str(e)
                )
            return _error(e.status, str(e), "invalid_backup_request")
        audit(
            "backup",
            "ok",
            **_who(request),
            via="http",
            backup_id=entry["backup_id"],
            backup_type=req.backup_type.value,
        )
        if not req.wait:
            return JSONResponse(describe(entry), status_code=202)
        # "wait": true: answer with the outcome. The backup belongs to the
        # server, not to this request: a client that goes away stops waiting,
        # the backup goes on (GET /api/v1/admin/backup/{id} has its outcome).
        final = await service.finished(entry["backup_id"])
        if final.get("status") == "completed":
            return JSONResponse(describe(final))
        return JSONResponse(
            {
                "error": "backup_failed",
                "message": f"backup {final.get('backup_id')} failed: {final.get('error')}",
                "backup": describe(final),
            },
            status_code=500,
        )

    async def show(request: Request) -> JSONResponse:
        entry = service.catalog.get(request.path_params["backup_id"])
        if entry is None:
            return _error(404, f"no backup with id {request.path_params['backup_id']}", "not_found")
        return JSONResponse(describe(entry))

    async def listing(request: Request) -> JSONResponse:
        catalog = service.catalog
        entries = []
        for e in await trio.to_thread.run_sync(service.history):
            d = describe(e)
            d["dependents"] = catalog.dependents(e["backup_id"])
            entries.append(d)
        # Per repository of backup_repositories: backups copied, waiting, the last error, its name.
        repositories = service.replicator.summary()
        for url, state in repositories.items():
            state["name"] = getattr(url, "name", None)  # backup_repositories' name=URL, or None
        return JSONResponse({"backups": entries, "repositories": repositories})

    async def delete(request: Request) -> JSONResponse:
        """Delete a backup; refused while others depend on it, unless ?cascade=true."""
        backup_id = request.path_params["backup_id"]
        catalog = service.catalog
        entry = catalog.get(backup_id)
        if entry is None:
            return _error(404, f"no backup with id {backup_id}", "not_found")
        if entry["status"] == "in_progress":
            return _error(409, f"backup {backup_id} is still running", "in_progress")
        dependents = catalog.dependents(backup_id)
        cascade = request.query_params.get("cascade", "false").lower() in ("1", "true", "yes")
        if dependents and not cascade:
            return _error(
                409,
                f"backup {backup_id} is the base of {len(dependents)} other backup(s) "
                f"({', '.join(dependents)}); delete them first, or pass ?cascade=true to "
                "delete the whole dependent chain",
                "has_dependents",
            )
        deleted = []
        repository_errors = []
        for bid in [*reversed(dependents), backup_id]:
            removed = catalog.remove(bid)
            location = removed.get("location") or ""
            if removed.get("origin") == "api" and location.endswith(".backup"):
                try:
                    os.unlink(location)
                except FileNotFoundError:
                    pass
            # Its copies in backup_repositories go too: entry first, then file.
            for url in removed.get("repositories") or {}:
                try:
                    await trio.to_thread.run_sync(service.replicator.forget, url, bid)
                except Exception as e:
                    repository_errors.append({"backup_id": bid, "repository": url, "error": str(e)})
            deleted.append(bid)
        body: dict = {"deleted": deleted}
        if repository_errors:
            # Still listed there: delete them again once the repository is back.
            body["repository_errors"] = repository_errors
        return JSONResponse(body)

    return [
        Route("/api/v1/admin/backup", start, methods=["POST"]),
        Route("/api/v1/admin/backup/{backup_id}", show, methods=["GET"]),
        Route("/api/v1/admin/backup/{backup_id}", delete, methods=["DELETE"]),
        Route("/api/v1/admin/backups", listing, methods=["GET"]),
    ]
