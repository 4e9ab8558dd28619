"""How LSNs are shown: like PostgreSQL's, high and low 32 bits in hex."""

from __future__ import annotations


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"
