"""tools/output.py: sizes, rates, JSON summaries and error lines as the tools print them."""

from __future__ import annotations

import io
import json

import pytest

from rustydb_server.tools.output import fail, human_size, mb_per_second, print_json


@pytest.mark.parametrize(
    "size,text",
    [(0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KB"), (3_565_158, "3.4 MB"), (1 << 40, "1.0 TB")],
)
def test_human_size(size, text):
    assert human_size(size) == text


def test_mb_per_second_survives_a_zero_duration():
    assert mb_per_second(10 * 1024 * 1024, 2.0) == 5.0
    assert mb_per_second(1024, 0.0) == 0.0


def test_print_json_is_one_compact_line_in_the_given_order():
    out = io.StringIO()
    print_json({"b": 1, "a": [1, "x"]}, out)
    assert out.getvalue() == '{"b":1,"a":[1,"x"]}\n'
    assert json.loads(out.getvalue()) == {"b": 1, "a": [1, "x"]}


def test_fail_names_the_tool_on_stderr_and_returns_1(capsys):
    assert fail("rusty-db-backup", "disk full") == 1
    assert capsys.readouterr().err == "rusty-db-backup: error: disk full\n"
