"""tools/progress.py: the bar draws on a terminal and stays silent anywhere else."""

from __future__ import annotations

import io

from rustydb_server.tools.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_silent_when_stderr_is_no_terminal():
    out = io.StringIO()
    with Progress("backup", 100, stream=out) as bar:
        bar.update(100)
    assert out.getvalue() == ""


def test_the_bar_shows_the_fraction_done_and_ends_its_line():
    out = Terminal()
    with Progress("verify", 2048, stream=out) as bar:
        bar.update(2048)
    drawn = out.getvalue()
    assert drawn.startswith("\rverify [" + "#" * 30 + "] 100.0% 2.0 KB/2.0 KB")
    assert drawn.endswith("\n")


def test_a_total_learned_later_replaces_the_first():
    out = Terminal()
    bar = Progress("backup", 0, stream=out)
    bar.update(0, 4096)
    bar.update(1024)
    bar.finish()
    assert bar.total == 4096
    assert "25.0% 1.0 KB/4.0 KB" in out.getvalue()


def test_nothing_drawn_means_nothing_to_end():
    out = Terminal()
    Progress("restore", 10, stream=out).finish()
    assert out.getvalue() == ""
