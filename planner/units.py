"""Byte sizes as people write them: KiB/MiB/GiB are powers of 1024, kB/KB/MB/GB powers of
1000, a bare number is bytes (CONVENTIONS).

Decimals are parsed exactly (`fractions.Fraction`), not as floats: a float turns 2.01 GB
into 2009999999.9999998 B (then rejected as fractional) and rounds 10^30 to a nearby
integer, both silently wrong for a byte budget.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

from planner.errors import BadInput

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
BUDGET_NAMES = ("M_R", "M_H", "M_P")  # the reference budgets (planner.bounds, DESIGN)


def budget_name(budget: object) -> str | None:
    """"M_R" / "M_H" / "M_P" for a budget that names one (any case, "-" for "_"), else
    None: the one spelling rule of every place that takes a budget."""
    if isinstance(budget, str) and (name := budget.upper().replace("-", "_")) in BUDGET_NAMES:
        return name
    return None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """'2MiB' -> 2097152, '1.5 MB' -> 1500000, '512' -> 512, exactly.

    >>> parse_bytes("2MiB"), parse_bytes("1.5 MB"), parse_bytes(512), parse_bytes("2.01GB")
    (2097152, 1500000, 512, 2010000000)
    >>> parse_bytes("1" + "0" * 30) == 10**30
    True
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise BadInput(f"cannot read size {text!r}: give an int or a string such as '2MiB'")
    if isinstance(text, int):
        if text < 0:
            raise BadInput(f"size {text} is negative")
        return text
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise BadInput(f"cannot read size {text!r}: write a number with B, KB, KiB, MB, MiB, GB or GiB")
    value = Fraction(m.group(1)) * _UNITS[m.group(2).lower()]
    if value.denominator != 1:
        raise BadInput(f"size {text!r} is not a whole number of bytes")
    return int(value)


def parse_seconds(text: str) -> float:
    """A time limit: a finite number of seconds above zero ('nan', 'inf', '-5' and '0' are refused).

    >>> parse_seconds("2.5")
    2.5
    """
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"cannot read {text!r} as seconds: write a number such as 60 or 0.5") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"time limit {text!r} must be a finite number of seconds above 0")
    return value


def format_bytes(n: float) -> str:
    """Human form in binary units, exact bytes kept by callers that need them."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def seconds_arg(text: str) -> float:
    """`parse_seconds` as an argparse `type=`, so a bad value is a usage error (exit 1)."""
    import argparse

    try:
        return parse_seconds(text)
    except BadInput as e:
        raise argparse.ArgumentTypeError(str(e)) from None
