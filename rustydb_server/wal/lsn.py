"""How LSNs are shown and read: like PostgreSQL's, high and low 32 bits in hex."""

from __future__ import annotations


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:08X}"


def parse_lsn(text: str) -> int:
    """``1A/00000F00`` (as SHOW and the tools print it) or a plain integer."""
    text = text.strip()
    if "/" in text:
        hi, lo = text.split("/", 1)
        return (int(hi, 16) << 32) | int(lo, 16)
    return int(text, 0)
