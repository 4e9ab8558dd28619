"""docs/backup-and-recovery.md lists exactly the HTTP routes the server has."""

from __future__ import annotations

import re
from pathlib import Path

from rustydb_server.http_api import build_app, build_starting_app
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "backup-and-recovery.md"


def served(app) -> set[tuple[str, str]]:
    # Starlette answers HEAD wherever it answers GET; the docs list GET.
    return {(method, route.path) for route in app.routes for method in route.methods if method != "HEAD"}


def documented() -> list[tuple[str, str]]:
    section = DOCS.read_text().split("\n## The HTTP API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z]+) (/\S+)` \|", section, re.M)


def test_docs_list_every_route_of_the_running_server_once(tmp_path):
    settings = Settings.load(None, str(tmp_path), {})
    # The routes are built without touching what they serve.
    app = build_app(settings, Lifecycle(), None, None, None, [])
    listed = documented()
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == served(app)
    assert ("DELETE", "/api/v1/admin/backup/{backup_id}") in listed


def test_the_starting_server_answers_no_route_the_docs_do_not_list(tmp_path):
    settings = Settings.load(None, str(tmp_path), {})
    assert served(build_starting_app(settings, Lifecycle())) == set(documented())
