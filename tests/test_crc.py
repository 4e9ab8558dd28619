"""The CRC-32C that WAL, control file and backups use is the crc32c package's own."""

import crc32c as package
from hypothesis import given
from hypothesis import strategies as st

from rustydb_server.crc import crc32c


def test_the_check_value_of_crc32c():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value (RFC 3720)


@given(st.binary(max_size=5000), st.integers(min_value=0, max_value=2**32 - 1))
def test_the_same_function_as_the_package(data, start):
    assert crc32c(data) == package.crc32c(data)
    assert crc32c(data, start) == package.crc32c(data, start)


def test_loaded_without_running_the_package_init():
    """The point of rustydb_server.crc: importing it must not pull in importlib.metadata."""
    import subprocess
    import sys

    code = "import sys; import rustydb_server.crc; print('crc32c' in sys.modules, 'importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
