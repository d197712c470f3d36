"""Byte sizes as people write them: KiB/MiB/GiB are powers of 1024, kB/KB/MB/GB powers of
1000, a bare number is bytes (CONVENTIONS)."""
from __future__ import annotations

import re

from planner.errors import BadInput

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """'2MiB' -> 2097152, '1.5 MB' -> 1500000, '512' -> 512.

    >>> parse_bytes("2MiB"), parse_bytes("1.5 MB"), parse_bytes(512)
    (2097152, 1500000, 512)
    """
    if isinstance(text, int):
        if text < 0:
            raise BadInput(f"size {text} is negative")
        return text
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise BadInput(f"cannot read size {text!r}: write a number with B, KB, KiB, MB, MiB, GB or GiB")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value != int(value):
        raise BadInput(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_bytes(n: float) -> str:
    """Human form in binary units, exact bytes kept by callers that need them."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"
