"""Offset allocation for buffers with fixed lifetimes (the MiniMalloc problem).

Buffers live over half-open step intervals [lower, upper); two buffers whose intervals
intersect must not share bytes. Two questions: does everything fit a capacity (`solve`),
and what is the smallest capacity that fits (`minimize`, with a proven lower bound).

- Greedy heuristics: `greedy_by_size` is TFLite's arena allocator (largest first, lowest
  offset that fits); `best_fit` places by decreasing size or decreasing lifetime into the
  smallest gap that fits (XLA's heap simulator). They need 1.3-1.4x LOAD on hard instances.
- The exact search (solvers/alloc_search.py) enumerates canonical packings with MiniMalloc's
  pruning; `cpsat_solve` (solvers/alloc_cpsat.py) is a NoOverlap2D model to cross-check it.
- LOAD, the most bytes alive at any one time, is a lower bound on every capacity; with
  alignments, `aligned_load` pads all live buffers but one and is at least as strong.

Statuses: "optimal" (minimize: capacity == lower bound), "feasible" (a packing fits; for
minimize the lower bound may be lower), "infeasible" (proven), "timeout" (no packing found
and nothing proven: never read it as infeasible), "unknown" (`planner alloc --solver
greedy` only: the heuristics found no packing, which proves nothing). Every packing returned has passed
solvers/alloc_check.validate.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from planner.errors import BadInput, Infeasible, PlannerError
from planner.units import seconds_arg
from planner.solvers.alloc_check import InvalidPacking, validate
from planner.solvers.alloc_search import FOUND, NOT_FOUND, Params, search

__all__ = ["Buffer", "AllocResult", "Params", "greedy_by_size", "best_fit", "greedy", "load", "aligned_load", "height",
           "solve", "minimize", "cpsat_solve", "read_csv", "write_csv", "validate", "add_arguments", "run"]


@dataclass
class Buffer:
    id: str
    lower: int  # first step alive
    upper: int  # half-open: last step alive + 1
    size: int  # bytes
    alignment: int = 1  # offset must be a multiple of this
    offset: int | None = None  # fixed position, if given


@dataclass
class AllocResult:
    status: str  # "optimal" | "feasible" | "infeasible" | "timeout"
    offsets: list[int] | None  # bytes, in the order of the buffers; None when no packing was found
    height: int | None  # max(offset + size) of the packing, bytes
    lower_bound: int  # bytes: no capacity below this fits (proven)
    load: int  # bytes alive at the busiest time
    seconds: float
    solver: str  # "greedy" | "exact" | "cpsat"
    nodes: int = 0  # search nodes (exact search)
    backtracks: int = 0
    capacity: int | None = None  # the capacity asked for (solve), None for minimize


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


class _Placed:
    """The buffers placed so far, as arrays: finding those alive with a new buffer is one
    vector operation, which keeps the greedy packers fast on plans of 10k residencies."""

    def __init__(self, buffers: list[Buffer]):
        self.lower = np.array([b.lower for b in buffers], dtype=np.int64)
        self.upper = np.array([b.upper for b in buffers], dtype=np.int64)
        self.size = np.array([b.size for b in buffers], dtype=np.int64)
        self.offset = np.zeros(len(buffers), dtype=np.int64)
        self.placed = np.zeros(len(buffers), dtype=bool)

    def busy(self, b: Buffer) -> list[tuple[int, int]]:
        """Byte ranges [start, end) of the placed buffers alive at the same time as `b`, sorted."""
        idx = np.flatnonzero(self.placed & (self.lower < b.upper) & (b.lower < self.upper))
        start = self.offset[idx]
        end = start + self.size[idx]
        k = np.lexsort((end, start))
        return list(zip(start[k].tolist(), end[k].tolist()))

    def place(self, i: int, offset: int) -> None:
        self.offset[i], self.placed[i] = offset, True


def _pack(buffers: list[Buffer], alignment: int, key: Callable[[Buffer], tuple],
          fit: Callable[[list[tuple[int, int]], int, int], int]) -> list[int]:
    """The greedy packers' common loop: fixed buffers first at their offsets, then the
    others in the order of `key`, each at `fit(busy ranges of its contemporaries, size,
    alignment)`."""
    offsets = [0] * len(buffers)
    placed = _Placed(buffers)
    for i in sorted(range(len(buffers)), key=lambda i: (buffers[i].offset is None, key(buffers[i]))):
        b = buffers[i]
        offsets[i] = b.offset if b.offset is not None else fit(placed.busy(b), b.size, max(alignment, b.alignment))
        placed.place(i, offsets[i])
    return offsets


def _first_fit(busy: list[tuple[int, int]], size: int, a: int) -> int:
    """The lowest aligned offset below, between or above the busy ranges that holds `size`."""
    at = 0
    for lo, hi in busy:
        if at + size <= lo:
            break
        at = max(at, _align(hi, a))
    return at


def _best_fit(busy: list[tuple[int, int]], size: int, a: int) -> int:
    """The start of the smallest gap between busy ranges that holds `size`, else the top."""
    best, best_gap, at = None, math.inf, 0
    for lo, hi in busy:
        if at + size <= lo and lo - at < best_gap:
            best, best_gap = at, lo - at
        at = max(at, _align(hi, a))
    return at if best is None else best


def greedy_by_size(buffers: list[Buffer], alignment: int = 1) -> list[int]:
    """Offsets (in the order of `buffers`) from TFLite's greedy-by-size, first fit.

    Fixed buffers keep their offsets and are placed first. The arena this needs is
    `max(offset + size)`; callers compare it with their capacity.

    >>> greedy_by_size([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)])
    [8, 0, 8]
    """
    return _pack(buffers, alignment, lambda b: (-b.size, b.lower), _first_fit)


def best_fit(buffers: list[Buffer], order: str = "size", alignment: int = 1) -> list[int]:
    """Offsets from best fit: buffers by decreasing size (order="size") or decreasing
    lifetime (order="lifetime"), each into the smallest free gap of its lifetime that
    holds it, else on top. Fixed buffers keep their offsets.

    >>> best_fit([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)])
    [8, 0, 8]
    """
    key = {"size": lambda b: (-b.size, -(b.upper - b.lower), b.lower),
           "lifetime": lambda b: (-(b.upper - b.lower), -b.size, b.lower)}[order]
    return _pack(buffers, alignment, key, _best_fit)


def height(buffers: list[Buffer], offsets: list[int]) -> int:
    return max((o + b.size for b, o in zip(buffers, offsets)), default=0)


def greedy(buffers: list[Buffer], alignment: int = 1) -> list[int]:
    """The lowest packing of greedy_by_size and best_fit by size and by lifetime."""
    candidates = [greedy_by_size(buffers, alignment), best_fit(buffers, "size", alignment),
                  best_fit(buffers, "lifetime", alignment)]
    return min(candidates, key=lambda offsets: height(buffers, offsets))


def load(buffers: list[Buffer]) -> int:
    """LOAD: the most bytes alive at one time (a buffer ending at t frees before one
    starting at t allocates).

    >>> load([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)])
    12
    """
    events = sorted([(b.lower, b.size) for b in buffers] + [(b.upper, -b.size) for b in buffers],
                    key=lambda e: (e[0], e[1]))
    best = live = 0
    for _, d in events:
        live += d
        best = max(best, live)
    return best


def aligned_load(buffers: list[Buffer]) -> int:
    """LOAD with alignment padding: a lower bound on every capacity, at least LOAD.

    At a time t, order the live buffers by offset. Every offset is a multiple of g, the gcd
    of their alignments, so each buffer but the topmost ends at least align_up(size, g) below
    the next one's offset; the topmost pays no padding. The capacity is therefore at least
    the padded live bytes minus the largest single padding.

    >>> aligned_load([Buffer("a", 0, 2, 100, 64), Buffer("b", 0, 2, 100, 64)]), load(
    ...     [Buffer("a", 0, 2, 100, 64), Buffer("b", 0, 2, 100, 64)])
    (228, 200)
    """
    best = 0
    for t in sorted({b.lower for b in buffers}):
        live = [b for b in buffers if b.lower <= t < b.upper]
        g = 0
        for b in live:
            g = math.gcd(g, b.alignment)
        padded = [_align(b.size, g) for b in live]
        best = max(best, sum(padded) - max(p - b.size for p, b in zip(padded, live)))
    return best


def _bound(buffers: list[Buffer]) -> int:
    """The proven lower bound both questions start from: padded LOAD, and the fixed buffers' tops."""
    return max(aligned_load(buffers), max((b.offset + b.size for b in buffers if b.offset is not None), default=0))


def _check_input(buffers: list[Buffer]) -> None:
    for b in buffers:
        if b.size <= 0 or b.lower >= b.upper or b.alignment < 1:
            raise BadInput(f"buffer {b.id}: need size > 0, lower < upper and alignment >= 1")
        if b.offset is not None and (b.offset < 0 or b.offset % b.alignment):
            raise BadInput(f"buffer {b.id}: fixed offset {b.offset} is negative or not a multiple of {b.alignment}")


def fixed_conflict(buffers: list[Buffer], capacity: int | None) -> str | None:
    """Why the fixed buffers alone cannot be packed (two overlap while both alive, or one
    ends above `capacity`), naming them; None when they can."""
    fixed = [b for b in buffers if b.offset is not None]
    try:
        validate(fixed, [b.offset for b in fixed], capacity)
    except InvalidPacking as e:
        return str(e)
    return None


def solve(buffers: list[Buffer], capacity: int, params: Params | None = None) -> AllocResult:
    """Decides whether the buffers fit `capacity` bytes: greedy first, then the exact search;
    with a time limit, the search gets half and CP-SAT the rest if it ran out
    (`Params.cpsat_fallback`), since CP-SAT proves some tight instances infeasible at once.

    Parameters
    ----------
    buffers : buffers with lifetimes, sizes, alignments and optional fixed offsets
    capacity : bytes
    params : search settings; `time_limit` bounds the whole call

    Returns
    -------
    AllocResult with status "feasible" (offsets set), "infeasible" (proven) or "timeout".

    Raises
    ------
    BadInput on a buffer with size <= 0, lower >= upper, alignment < 1 or a bad fixed offset.

    Examples
    --------
    >>> r = solve([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)], 12)
    >>> r.status, r.offsets
    ('feasible', [8, 0, 8])
    >>> solve([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8)], 11).status
    'infeasible'
    """
    params = params or Params()
    start = time.monotonic()
    _check_input(buffers)
    lb = _bound(buffers)

    def result(status, offsets=None, solver="exact", nodes=0, backtracks=0):
        if offsets is not None:
            validate(buffers, offsets, capacity)
        return AllocResult(status, offsets, None if offsets is None else height(buffers, offsets),
                           max(lb, capacity + 1) if status == "infeasible" else lb, load(buffers),
                           time.monotonic() - start, solver, nodes, backtracks, capacity)

    if lb > capacity or fixed_conflict(buffers, capacity):
        return result("infeasible", solver="bound")
    if params.greedy_first:
        offsets = greedy(buffers)
        if height(buffers, offsets) <= capacity:
            return result("feasible", offsets, "greedy")
    fallback = params.cpsat_fallback and params.time_limit is not None
    st, offsets, nodes, backtracks = search(buffers, capacity,
                                            replace(params, time_limit=params.time_limit / 2) if fallback else params)
    status = {FOUND: "feasible", NOT_FOUND: "infeasible"}.get(st, "timeout")
    if status == "timeout" and fallback:
        left = params.time_limit - (time.monotonic() - start)
        if left > 0.01:
            r = cpsat_solve(buffers, capacity, left, workers=1)
            if r.status in ("feasible", "infeasible"):
                return result(r.status, r.offsets, "cpsat", nodes, backtracks)
    return result(status, offsets, "exact", nodes, backtracks)


def minimize(buffers: list[Buffer], params: Params | None = None) -> AllocResult:
    """The smallest capacity that fits, proven with `solve`'s exact search.

    The lower bound starts at the padded LOAD (`aligned_load`) and rises with every capacity proven infeasible; the
    upper bound starts at the best greedy packing. Searches with slack can be slow either
    way, so the probes run in rounds with a per-probe budget (4 s, then 4x a round): first
    upwards from the lower bound (one success there is optimal), then a binary search over
    the gap, where a probe that runs out of budget only narrows the next guess. With a
    time limit the result may be "feasible" with lower_bound < height (the gap). Heights
    move in steps of the sizes' common divisor when every alignment keeps that grid.

    >>> r = minimize([Buffer("a", 0, 2, 4), Buffer("b", 1, 3, 8), Buffer("c", 2, 4, 4)])
    >>> r.status, r.height, r.lower_bound
    ('optimal', 12, 12)
    """
    params = params or Params()
    start = time.monotonic()
    deadline = math.inf if params.time_limit is None else start + params.time_limit
    _check_input(buffers)
    if fixed_conflict(buffers, None):
        return AllocResult("infeasible", None, None, 0, load(buffers), time.monotonic() - start, "bound")
    step = 0
    for b in buffers:
        step = math.gcd(step, b.size, b.offset or 0)
    step = step if step and all(b.alignment % step == 0 or step % b.alignment == 0 for b in buffers) else 1
    lb = _bound(buffers)
    lo = -(-lb // step) * step  # every capacity below lo is proven infeasible
    best = greedy(buffers)
    stats = [0, 0]

    def probe(capacity: int, budget: float) -> int:
        nonlocal best, lo
        left = min(budget, deadline - time.monotonic())
        st, offsets, n, bt = search(buffers, capacity, replace(params, time_limit=max(left, 0.0)))
        stats[0], stats[1] = stats[0] + n, stats[1] + bt
        if st == FOUND:
            best = offsets
        elif st == NOT_FOUND:
            lo = max(lo, capacity + step)
        return st

    budget = 4.0
    while lo < height(buffers, best) and time.monotonic() < deadline:
        while lo < height(buffers, best) and probe(lo, budget) == NOT_FOUND:
            pass
        guess = lo + step
        while guess < height(buffers, best) and time.monotonic() < deadline:
            hi = height(buffers, best)
            mid = guess + ((hi - guess) // step - 1) // 2 * step
            if probe(mid, budget) != FOUND:
                guess = max(mid + step, lo)
        budget *= 4
    validate(buffers, best, None)
    h = height(buffers, best)
    return AllocResult("optimal" if lo >= h else "feasible", best, h, min(lo, h), load(buffers),
                       time.monotonic() - start, "exact", stats[0], stats[1])


def cpsat_solve(buffers: list[Buffer], capacity: int | None = None, time_limit: float | None = None,
                workers: int = 2) -> AllocResult:
    """The CP-SAT cross-check; see solvers/alloc_cpsat.py."""
    from planner.solvers.alloc_cpsat import cpsat_solve as _cpsat

    return _cpsat(buffers, capacity, time_limit, workers)


# --- CSV ----------------------------------------------------------------------------------

_REQUIRED = ("id", "lower", "upper", "size")
_OPTIONAL = ("alignment", "offset", "hint", "gaps")


def read_csv(path: str | Path) -> list[Buffer]:
    """Reads MiniMalloc's CSV: a header with id,lower,upper,size and optionally alignment
    and offset (a fixed position); `hint` is ignored and `gaps` must be empty.

    Raises BadInput naming the file and line of the first bad row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not part of the header
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text CSV (it is not UTF-8)") from None
    if "\0" in text:
        raise BadInput(f"{path}: not a text CSV (it contains NUL bytes)")
    rows = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(rows, [])]
    missing = [h for h in _REQUIRED if h not in header]
    if missing:
        raise BadInput(f"{path}:1: header lacks {', '.join(missing)} (need id,lower,upper,size[,alignment][,offset])")
    unknown = [h for h in header if h not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise BadInput(f"{path}:1: unknown column {unknown[0]!r}")
    buffers, seen = [], set()
    for line, row in enumerate(rows, start=2):
        if not row or all(not x.strip() for x in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            raise BadInput(f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        v = dict(zip(header, (x.strip() for x in row)))
        if v.get("gaps"):
            raise BadInput(f"{where}: lifetime gaps are not supported")
        num = {}
        for k in ("lower", "upper", "size", "alignment", "offset"):
            if v.get(k, "") == "" and k in ("alignment", "offset"):
                continue
            try:
                num[k] = int(v[k])
            except ValueError:
                raise BadInput(f"{where}: {k} {v[k]!r} is not an integer") from None
            if abs(num[k]) >= 2**62:  # the packers add sizes and offsets in int64
                raise BadInput(f"{where}: {k} {v[k]} is too large (at most 2^62 - 1)")
        b = Buffer(v["id"], num["lower"], num["upper"], num["size"], num.get("alignment", 1), num.get("offset"))
        if b.lower >= b.upper:
            raise BadInput(f"{where}: lower {b.lower} must be below upper {b.upper} (lifetimes are half-open)")
        if b.size <= 0:
            raise BadInput(f"{where}: size {b.size} must be positive")
        if b.alignment < 1:
            raise BadInput(f"{where}: alignment {b.alignment} must be at least 1")
        if b.offset is not None and (b.offset < 0 or b.offset % b.alignment):
            raise BadInput(f"{where}: offset {b.offset} must be >= 0 and a multiple of the alignment {b.alignment}")
        if b.id in seen:
            raise BadInput(f"{where}: id {b.id!r} appears twice")
        seen.add(b.id)
        buffers.append(b)
    return buffers


def write_csv(path: str | Path, buffers: list[Buffer], offsets: list[int]) -> None:
    """Writes the buffers as read_csv reads them, with an offset column (which reads back
    as fixed offsets)."""
    with_align = any(b.alignment != 1 for b in buffers)
    try:
        with open(path, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(list(_REQUIRED) + (["alignment"] if with_align else []) + ["offset"])
            for b, o in zip(buffers, offsets):
                w.writerow([b.id, b.lower, b.upper, b.size] + ([b.alignment] if with_align else []) + [o])
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None


# --- CLI: planner alloc -------------------------------------------------------------------

_HELP = {
    "canonical_only": "place buffers in any order, not only by (offset, rank)",
    "section_inference": "do not prune on sections whose unplaced bytes cannot fit",
    "unallocated_floor": "do not raise section floors to their unplaced buffers' lowest offset",
    "monotonic_floor": "do not raise section floors to the last placed offset",
    "check_dominance": "do not prune packings that leave a hole a buffer could drop into",
    "dynamic_ordering": "try candidates by rank only, not lowest offset first",
    "decomposition": "do not split at times that no unplaced buffer crosses",
    "symmetry_breaking": "do not place identical buffers in index order",
    "hatless_pruning": "do not skip siblings of a failed buffer that raised nobody",
    "static_preordering": "rank buffers in input order",
    "restarts": "run the first preordering only, without node limits",
    "extension": "run the Python search instead of the C one",
    "greedy_first": "do not try the greedy heuristics before searching",
    "cpsat_fallback": "with --capacity and a time limit, do not hand the second half to CP-SAT",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `planner alloc INSTANCE.csv [--capacity 1MiB | --minimize] ...`."""
    parser.add_argument("instance", help="MiniMalloc CSV: id,lower,upper,size[,alignment][,offset]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--capacity", help="decide whether everything fits this many bytes (1MiB, 1048576, ...)")
    mode.add_argument("--minimize", action="store_true", help="find the smallest capacity (the default)")
    parser.add_argument("--time-limit", type=seconds_arg, default=None, help="seconds; default: no limit")
    parser.add_argument("--solver", choices=("exact", "cpsat", "greedy"), default="exact",
                        help="exact search (default), the CP-SAT cross-check, or the greedy heuristics only")
    parser.add_argument("-o", "--output", help="write the packing as CSV with an offset column")
    for f in fields(Params):
        if f.type in ("bool", bool) and f.default:
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                help=_HELP[f.name])
    parser.add_argument("--preorderings", default=",".join(Params.preorderings),
                        help="static orders tried round robin, keys T/A/W/Z (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Runs `planner alloc`; prints one summary line. Exit codes: 0 a packing was found,
    1 bad input, 2 proven infeasible (below the lower bound), 3 no packing found and
    nothing proven (the time limit, or `--solver greedy`, whose failure proves nothing)."""
    from planner.units import parse_bytes

    try:
        buffers = read_csv(args.instance)
        capacity = None if args.capacity is None else parse_bytes(args.capacity)
        orders = tuple(p.strip().upper() for p in args.preorderings.split(",") if p.strip())
        if not orders or any(len(p) > 4 or set(p) - set("TAWZ") for p in orders):
            raise BadInput(f"--preorderings {args.preorderings!r}: comma-separated orders of 1-4 keys from T, A, W, Z")
        params = Params(time_limit=args.time_limit, preorderings=orders,
                        **{f.name: getattr(args, f.name) for f in fields(Params)
                           if f.type in ("bool", bool) and hasattr(args, f.name)})
        _check_input(buffers)
        why = fixed_conflict(buffers, None)
        if why:  # no capacity fits: say which buffers, rather than a lower bound that means nothing
            raise Infeasible(f"no capacity fits: fixed offsets collide ({why})")
        start = time.monotonic()
        if args.solver == "cpsat":
            r = cpsat_solve(buffers, capacity, args.time_limit)
        elif args.solver == "greedy":
            offsets, lb = greedy(buffers), _bound(buffers)
            h = height(buffers, offsets)
            fits = capacity is None or h <= capacity
            status = "feasible" if fits else "infeasible" if lb > capacity else "unknown"
            r = AllocResult(status, offsets if fits else None, h if fits else None,
                            max(lb, capacity + 1) if status == "infeasible" else lb, load(buffers),
                            time.monotonic() - start, "greedy" if fits or status == "unknown" else "bound",
                            capacity=capacity)
        elif capacity is not None:
            r = solve(buffers, capacity, params)
        else:
            r = minimize(buffers, params)
        if r.offsets is not None:
            validate(buffers, r.offsets, capacity)
            if args.output:
                write_csv(args.output, buffers, r.offsets)
    except PlannerError as e:
        print(f"planner: error: {e}", file=sys.stderr)
        return e.exit_code
    asked = "" if capacity is None else f" asked={capacity}"
    print(f"buffers={len(buffers)} load={r.load}{asked} capacity={r.height if r.height is not None else '-'} "
          f"lower_bound={r.lower_bound} status={r.status} solver={r.solver} nodes={r.nodes} "
          f"backtracks={r.backtracks} seconds={r.seconds:.3f}")
    return {"infeasible": 2, "timeout": 3, "unknown": 3}.get(r.status, 0)
