"""Offset allocation for buffers with fixed lifetimes (the MiniMalloc problem).

Buffers live over half-open step intervals [lower, upper); two buffers whose intervals
intersect must not share bytes. `greedy_by_size` is TFLite's arena allocator: place
buffers largest first, each at the lowest aligned offset that clears every already
placed buffer alive at the same time (first fit).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Buffer:
    id: str
    lower: int  # first step alive
    upper: int  # half-open: last step alive + 1
    size: int  # bytes
    alignment: int = 1  # offset must be a multiple of this
    offset: int | None = None  # fixed position, if given


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def greedy_by_size(buffers: list[Buffer], alignment: int = 1) -> list[int]:
    """Offsets (in the order of `buffers`) from TFLite's greedy-by-size, first fit.

    Fixed buffers keep their offsets and are placed first. The arena this needs is
    `max(offset + size)`; callers compare it with their capacity.

    >>> greedy_by_size([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)])
    [8, 0, 8]
    """
    order = sorted(range(len(buffers)), key=lambda i: (buffers[i].offset is None, -buffers[i].size, buffers[i].lower))
    offsets: list[int | None] = [None] * len(buffers)
    placed: list[int] = []
    for i in order:
        b = buffers[i]
        a = max(alignment, b.alignment)
        if b.offset is not None:
            offsets[i] = b.offset
        else:
            # Occupied ranges of buffers alive at the same time, by offset.
            busy = sorted((offsets[j], offsets[j] + buffers[j].size) for j in placed  # type: ignore[operator]
                          if buffers[j].lower < b.upper and b.lower < buffers[j].upper)
            at = 0
            for lo, hi in busy:
                if at + b.size <= lo:
                    break
                at = max(at, _align(hi, a))
            offsets[i] = at
        placed.append(i)
    return offsets  # type: ignore[return-value]
