"""The independent checker for offset allocations. It imports nothing from the solvers and
recomputes everything from the buffers: an O(n^2) pairwise test, kept dumb on purpose."""
from __future__ import annotations


class InvalidPacking(ValueError):
    """A packing breaks a rule; `rule` names it: missing, negative, over capacity,
    misaligned, moved fixed or overlap."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{rule}: {message}")
        self.rule = rule


def validate(buffers, offsets, capacity: int | None) -> None:
    """Raises InvalidPacking unless every buffer has an offset, sits inside [0, capacity),
    is aligned, keeps its fixed offset, and shares no byte with a buffer alive at the same
    time. Lifetimes are half-open [lower, upper). capacity None skips the capacity rule.

    >>> class B:
    ...     def __init__(s, id, lower, upper, size): s.id, s.lower, s.upper, s.size, s.alignment, s.offset = \\
    ...         id, lower, upper, size, 1, None
    >>> validate([B("a", 0, 2, 4), B("b", 1, 3, 4)], [0, 4], 8)
    >>> try:
    ...     validate([B("a", 0, 2, 4), B("b", 1, 3, 4)], [0, 2], 8)
    ... except InvalidPacking as e:
    ...     print(e)
    overlap: a [0, 4) and b [2, 6) are both alive in steps [1, 2)
    """
    if offsets is None or len(offsets) != len(buffers):
        raise InvalidPacking("missing", f"{0 if offsets is None else len(offsets)} offsets for {len(buffers)} buffers")
    for b, o in zip(buffers, offsets):
        if o is None:
            raise InvalidPacking("missing", f"{b.id} has no offset")
        if o < 0:
            raise InvalidPacking("negative", f"{b.id} at offset {o}")
        if capacity is not None and o + b.size > capacity:
            raise InvalidPacking("over capacity", f"{b.id} ends at {o + b.size} > capacity {capacity}")
        if o % b.alignment:
            raise InvalidPacking("misaligned", f"{b.id} at offset {o} is not a multiple of {b.alignment}")
        if b.offset is not None and o != b.offset:
            raise InvalidPacking("moved fixed", f"{b.id} is fixed at {b.offset} but placed at {o}")
    for i, (a, oa) in enumerate(zip(buffers, offsets)):
        for b, ob in zip(buffers[:i], offsets[:i]):
            if a.lower < b.upper and b.lower < a.upper and oa < ob + b.size and ob < oa + a.size:
                raise InvalidPacking("overlap", f"{b.id} [{ob}, {ob + b.size}) and {a.id} [{oa}, {oa + a.size}) "
                                                f"are both alive in steps [{max(a.lower, b.lower)}, {min(a.upper, b.upper)})")
