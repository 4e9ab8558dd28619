"""GET /api/v1/admin/schedule: each backup schedule's last and next run."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def routes(backups) -> list[Route]:
    async def schedule(request: Request) -> JSONResponse:
        scheduler = backups.scheduler
        if scheduler is None:
            return JSONResponse(
                {"error": "not_available", "message": "this server runs no backup scheduler"}, status_code=503
            )
        return JSONResponse(scheduler.status())

    return [Route("/api/v1/admin/schedule", schedule, methods=["GET"])]
