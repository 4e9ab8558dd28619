"""The container sits below everything that uses it: importing it loads
nothing from backup, archive, restore, engine or tools, and archive needs
nothing from backup."""

import subprocess
import sys

ABOVE = ("backup", "archive", "restore", "engine", "tools")


def loaded_by(*modules: str) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('rustydb_server.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_the_container_imports_nothing_above_it():
    modules = [
        f"rustydb_server.container.{m}" for m in ("errors", "file", "format", "reader", "rotate", "threads", "writer")
    ]
    above = {m for m in loaded_by(*modules) if m.split(".")[1] in ABOVE}
    assert above == set()


def test_archive_does_not_import_backup():
    loaded = loaded_by("rustydb_server.archive.archiver", "rustydb_server.archive.segment_file")
    assert {m for m in loaded if m.startswith("rustydb_server.backup")} == set()
