"""Fuzz harnesses, one module per parser that reads bytes from outside.

Each module holds ``check(data)``, which feeds one input to the parser and
asserts its contract (only the module's documented errors; a round trip
where there is one), and ``seeds()``, valid inputs made by the real code.
The hypothesis tests (tests/test_property_*.py) call the same ``check``;
``python -m fuzz.<target>`` runs it under atheris, and ``bench/fuzz.py``
runs every target time-boxed and counts executions and crashes.
"""

TARGETS = ("frames", "connection", "wal", "backup", "sqlsplit")
