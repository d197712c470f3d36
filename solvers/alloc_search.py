"""Exact offset allocation: a depth-first search over canonical solutions.

Ideas from MiniMalloc (Moffitt, ASPLOS'23); the code is ours. Every feasible packing can be
pushed down until no buffer can move to any lower free offset; in such a packing each
buffer sits at the lowest offset that clears the buffers below it that it meets in time.
So the search places buffers one at a time, each at its *minimum offset* (the highest top
of the placed buffers it meets), in non-decreasing (offset, rank) order. On top of that:

- section inference: time is cut into sections (maximal spans where the set of live buffers
  does not change); a section's unplaced bytes must fit between its floor and the capacity,
  where the floor is at least the last placed offset and the lowest minimum offset of the
  section's unplaced buffers;
- dominance: a branch dies when an unplaced buffer would fit wholly below the last placed
  offset (it could drop there, so the packing is not pushed down);
- hatless pruning: when a failed candidate raised no other buffer's minimum offset, its
  later siblings fail too (any of their packings could place it first), so they are skipped;
- symmetry: identical buffers are placed in index order;
- temporal decomposition: a time that no unplaced buffer crosses splits the rest into
  independent parts, solved one after the other, each ranked afresh by the preordering
  with its 'T' key (the busiest section a buffer spans) counting only unplaced bytes;
- restarts: three static orders tried round robin under a doubling node limit.

    time ->   s0   s1   s2   s3        sections: s0 = {a}, s1 = {a, b}, s2 = {b}, s3 = {c}
    a         [=========)              the boundary s2|s3 is crossed by nobody: {a, b}
    b              [=========)         and {c} are solved separately
    c                        [====)

The search runs in C (`_alloc_search.c`, compiled on first use and loaded with ctypes) or,
where no compiler is found or `Params.extension` is off, in the Python below, which follows
the C code step for step. Sizes are divided by their greatest common divisor first.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOUND, NOT_FOUND, NODE_LIMIT, TIMEOUT = 1, 0, -1, -2
_FLAGS = ("canonical_only", "section_inference", "unallocated_floor", "monotonic_floor", "check_dominance",
          "dynamic_ordering", "decomposition", "symmetry_breaking", "hatless_pruning")


@dataclass
class Params:
    """Search settings. Every technique is on by default; the switches exist to measure them."""

    time_limit: float | None = None  # seconds for the whole call; None waits for the answer
    # Place buffers only in non-decreasing (offset, rank) order: one order per packing.
    canonical_only: bool = True
    # Prune when some section's unplaced bytes cannot fit above its floor.
    section_inference: bool = True
    # Raise a section's floor to the lowest minimum offset of its unplaced buffers.
    unallocated_floor: bool = True
    # Raise every section's floor to the last placed offset (needs canonical_only).
    monotonic_floor: bool = True
    # Prune branches that leave a hole an unplaced buffer could drop into (needs canonical_only).
    check_dominance: bool = True
    # Try candidates lowest offset first, rank second (off: rank only).
    dynamic_ordering: bool = True
    # Split at times no unplaced buffer crosses and solve the parts independently.
    decomposition: bool = True
    # Identical buffers (same lifetime, size, alignment) are placed in index order.
    symmetry_breaking: bool = True
    # After a failed branch whose buffer raised no other buffer, skip the other candidates
    # (needs canonical_only and dynamic_ordering).
    hatless_pruning: bool = True
    # Rank buffers by the heuristics below (off: input order).
    static_preordering: bool = True
    # Round robin over the preorderings with a doubling node limit (off: the first only).
    restarts: bool = True
    # Preorderings, keys compared descending: T max section total, A area, W lifetime, Z size.
    preorderings: tuple[str, ...] = ("TAW", "WAT", "TWA")
    # Run the C search when it can be compiled (off: the Python search).
    extension: bool = True
    # solve() and minimize(): try the greedy heuristics before searching.
    greedy_first: bool = True
    # solve(): when the search runs out of half the time, CP-SAT (solvers/alloc_cpsat.py) gets
    # the rest. Its NoOverlap2D energy reasoning proves some tight instances infeasible at
    # once that the search needs tens of seconds for (a 45-buffer window of PNASNet-5: 0.15 s vs 25 s).
    cpsat_fallback: bool = True


@dataclass
class Instance:
    """A problem in search units: sizes divided by `unit`, time compressed to sections."""

    unit: int  # bytes per size unit (gcd of sizes, fixed offsets and capacity)
    movable: list[int]  # indices into the caller's buffers of the buffers to place
    size: np.ndarray  # units, per movable buffer
    align: np.ndarray  # units
    s0: np.ndarray  # first section
    s1: np.ndarray  # half-open
    twin: np.ndarray  # previous identical movable buffer, or -1
    width: np.ndarray  # lifetime length (upper - lower), for the preordering
    nb: list[np.ndarray]  # movable buffers overlapping each in time
    sb: list[np.ndarray]  # movable buffers alive in each section
    fixed: list[list[tuple[int, int]]]  # [lo, hi) units of fixed buffers overlapping each in time


def instance(buffers, capacity: int) -> Instance:
    """Precondition: sizes > 0, lower < upper, alignments >= 1, fixed offsets aligned."""
    unit = 0  # every canonical offset is a sum of sizes rounded up to alignments: the alignments count
    for b in buffers:
        unit = math.gcd(unit, b.size, b.alignment, b.offset or 0)
    unit = math.gcd(unit, capacity) or 1
    movable = [i for i, b in enumerate(buffers) if b.offset is None]
    times = sorted({t for i in movable for t in (buffers[i].lower, buffers[i].upper)})
    at = {t: k for k, t in enumerate(times)}
    mv = [buffers[i] for i in movable]
    size = np.array([b.size // unit for b in mv], dtype=np.int64)
    s0 = np.array([at[b.lower] for b in mv], dtype=np.int32)
    s1 = np.array([at[b.upper] for b in mv], dtype=np.int32)
    S = max(len(times) - 1, 0)
    sb = [[] for _ in range(S)]
    for c in range(len(mv)):
        for s in range(s0[c], s1[c]):
            sb[s].append(c)
    first: dict[tuple, int] = {}
    twin = []
    for c, b in enumerate(mv):
        key = (b.lower, b.upper, b.size, b.alignment)
        twin.append(first.get(key, -1))
        first[key] = c
    nb = [np.flatnonzero((s0 < s1[c]) & (s0[c] < s1) & (np.arange(len(mv)) != c)).astype(np.int32)
          for c in range(len(mv))]
    fixed = [[(buffers[j].offset // unit, (buffers[j].offset + buffers[j].size) // unit) for j in range(len(buffers))
              if buffers[j].offset is not None and buffers[j].lower < b.upper and b.lower < buffers[j].upper]
             for b in mv]
    width = np.array([b.upper - b.lower for b in mv], dtype=np.int64)
    align = np.array([b.alignment // math.gcd(b.alignment, unit) for b in mv], dtype=np.int64)
    return Instance(unit, movable, size, align, s0, s1, np.array(twin, dtype=np.int32), width, nb,
                    [np.array(x, dtype=np.int32) for x in sb], fixed)


def search(buffers, capacity: int, params: Params) -> tuple[int, list[int] | None, int, int]:
    """Decides whether `buffers` fit in `capacity` bytes.

    Returns (status, offsets in bytes or None, nodes, backtracks), status one of FOUND,
    NOT_FOUND (proven infeasible) or TIMEOUT. Fixed buffers keep their offsets."""
    if any(not h or len(h) > 4 or set(h) - set("TAWZ") for h in params.preorderings):
        raise ValueError(f"preorderings {params.preorderings}: each is 1-4 of the keys T, A, W, Z")
    deadline = math.inf if params.time_limit is None else time.monotonic() + params.time_limit
    inst = instance(buffers, capacity)
    cap = capacity // inst.unit
    flags = sum(1 << k for k, name in enumerate(_FLAGS) if getattr(params, name))
    heuristics = list(params.preorderings) if params.static_preordering else [None]
    if not params.restarts:
        heuristics = heuristics[:1]
    lib = _library() if params.extension else None
    nodes = backtracks = 0
    limit = max(2 * len(inst.size), 16) if len(heuristics) > 1 else math.inf
    while True:
        limit *= 2
        for h in heuristics:
            run = _run_c if lib is not None else _run_python
            st, sol, n_nodes, n_back = run(lib, inst, cap, flags, h, limit, deadline - time.monotonic())
            nodes += n_nodes
            backtracks += n_back
            if st == FOUND:
                offsets = [b.offset for b in buffers]
                for c, i in enumerate(inst.movable):
                    offsets[i] = int(sol[c]) * inst.unit
                return FOUND, offsets, nodes, backtracks
            if st in (NOT_FOUND, TIMEOUT):
                return st, None, nodes, backtracks
            if st != NODE_LIMIT:
                raise MemoryError("the allocation search ran out of memory")


# --- the C search -------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _library():
    """The compiled search: a built extension next to this file, else one compiled once into
    a cache directory with the system C compiler. None when neither works."""
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("_alloc_search*.so")) + sorted(here.glob("_alloc_search*.pyd")):
        try:
            return _bind(ctypes.CDLL(str(path)))
        except OSError:
            pass
    src = here / "_alloc_search.c"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not src.exists() or cc is None:
        return None
    digest = hashlib.sha256(src.read_bytes() + sys.version.encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"planner-alloc-{digest}" / "_alloc_search.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cc, "-O2", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", str(src), "-o", str(tmp)]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
        os.replace(tmp, out)
    try:
        return _bind(ctypes.CDLL(str(out)))
    except OSError:
        return None


def _bind(lib):
    P = ctypes.c_void_p
    lib.alloc_search.restype = ctypes.c_int
    lib.alloc_search.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int] + [P] * 6 + [
        ctypes.c_int] + [P] * 8 + [ctypes.c_int64, ctypes.c_double, P, P]
    return lib


def _csr(lists, dtype):
    start = np.zeros(len(lists) + 1, dtype=np.int32)
    start[1:] = np.cumsum([len(x) for x in lists])
    flat = np.concatenate([np.asarray(x, dtype=dtype) for x in lists]) if start[-1] else np.zeros(1, dtype=dtype)
    return start, flat


def _run_c(lib, inst, cap, flags, heuristic, limit, seconds):
    n, S = len(inst.size), len(inst.sb)
    nb_start, nb = _csr(inst.nb, np.int32)
    sb_start, sb = _csr(inst.sb, np.int32)
    fx_start, fx = _csr([[lo for lo, _ in f] for f in inst.fixed], np.int64)
    _, fx_hi = _csr([[hi for _, hi in f] for f in inst.fixed], np.int64)
    sol = np.zeros(max(n, 1), dtype=np.int64)
    stats = np.zeros(2, dtype=np.int64)
    heur = np.array([ord(k) for k in heuristic or ""] + [0], dtype=np.int32)
    arrays = [inst.size, inst.align, inst.width, inst.s0, inst.s1, heur]
    more = [inst.twin, nb_start, nb, sb_start, sb, fx_start, fx, fx_hi]
    st = lib.alloc_search(n, S, cap, flags, *[np.ascontiguousarray(a).ctypes.data for a in arrays],
                          len(heuristic or ""), *[np.ascontiguousarray(a).ctypes.data for a in more],
                          min(limit, 2**62), max(seconds, 0.0), sol.ctypes.data, stats.ctypes.data)
    return st, sol, int(stats[0]), int(stats[1])


# --- the same search in Python ------------------------------------------------------------

class _Stop(Exception):
    def __init__(self, status: int):
        self.status = status


class _PySearch:
    """Mirror of _alloc_search.c; see the comments there."""

    def __init__(self, inst: Instance, cap: int, flags: int, heuristic: str | None, limit, seconds):
        self.n, self.S, self.cap = len(inst.size), len(inst.sb), cap
        self.size, self.align = inst.size.tolist(), inst.align.tolist()
        self.s0, self.s1, self.twin = inst.s0.tolist(), inst.s1.tolist(), inst.twin.tolist()
        self.width, self.heuristic = inst.width.tolist(), heuristic or ""
        self.rank = list(range(len(inst.size)))
        self.nb = [x.tolist() for x in inst.nb]
        self.sb = [x.tolist() for x in inst.sb]
        self.fixed = inst.fixed
        f = {name: bool(flags >> k & 1) for k, name in enumerate(_FLAGS)}
        self.canon, self.section, self.unalloc = f["canonical_only"], f["section_inference"], f["unallocated_floor"]
        self.mono = f["monotonic_floor"] and self.canon
        self.dom = f["check_dominance"] and self.canon
        self.dyn, self.decomp, self.sym = f["dynamic_ordering"], f["decomposition"], f["symmetry_breaking"]
        self.hatless, self.last_hatless = f["hatless_pruning"], False
        self.limit, self.deadline = limit, time.monotonic() + seconds
        self.nodes = self.backtracks = 0
        self.m = [self.lift(c, 0) for c in range(self.n)]
        self.placed = [False] * self.n
        self.floor = [0] * self.S
        self.total = [sum(self.size[c] for c in sec) for sec in self.sb]
        self.cuts = [0] * (self.S + 1)
        for c in range(self.n):
            for k in range(self.s0[c] + 1, self.s1[c]):
                self.cuts[k] += 1
        self.sol = [0] * self.n

    def lift(self, c: int, t: int) -> int:
        a, v, moved = self.align[c], -(-t // self.align[c]) * self.align[c], True
        while moved:
            moved = False
            for lo, hi in self.fixed[c]:
                if v < hi and lo < v + self.size[c]:
                    v, moved = -(-hi // a) * a, True
        return v

    def check(self, a: int, b: int, last: int, lo: int, hi: int) -> bool:
        if not self.section:
            return True
        total, cap = self.total, self.cap
        if self.mono and any(t > 0 and last + t > cap for t in total[a:b]):
            return False
        for s in range(lo, hi):
            if total[s] == 0:
                continue
            f = self.floor[s]
            if self.unalloc:
                f = max(f, min(self.m[c] for c in self.sb[s] if not self.placed[c]))
            if self.mono:
                f = max(f, last)
            if f + total[s] > cap:
                return False
        return True

    def run(self) -> int:
        try:
            if not self.check(0, self.S, 0, 0, self.S):
                self.backtracks += 1
                return NOT_FOUND
            cuts = [k for k in range(1, self.S) if self.cuts[k] == 0] if self.decomp else []
            parts = zip([0] + cuts, cuts + [self.S])
            return FOUND if all(self.solve_part(p, q, 0) for p, q in parts) else NOT_FOUND
        except _Stop as stop:
            return stop.status

    def solve_part(self, a: int, b: int, last: int) -> bool:
        part = [c for c in range(self.n) if not self.placed[c] and self.s0[c] >= a and self.s1[c] <= b]
        old = [self.rank[c] for c in part]

        def key(c):
            value = {"T": max(self.total[self.s0[c]:self.s1[c]]), "A": self.size[c] * self.width[c],
                     "W": self.width[c], "Z": self.size[c]}
            return [-value[h] for h in self.heuristic] + [c]
        for c, r in zip(sorted(part, key=key), sorted(old)):
            self.rank[c] = r
        try:
            return self.search(a, b, last, -1)
        finally:
            for c, r in zip(part, old):
                self.rank[c] = r

    def search(self, a: int, b: int, last: int, last_rank: int) -> bool:
        self.nodes += 1
        if self.nodes > self.limit:
            raise _Stop(NODE_LIMIT)
        if self.nodes & 1023 == 0 and time.monotonic() > self.deadline:
            raise _Stop(TIMEOUT)
        m, size, rank = self.m, self.size, self.rank
        scope = [c for c in range(self.n) if not self.placed[c] and self.s0[c] >= a and self.s1[c] <= b]
        if not scope:
            return True
        min_height = min(m[c] + size[c] for c in scope)
        if self.dom and min_height <= last:
            self.backtracks += 1
            return False
        cands = []
        for c in scope:
            if m[c] + size[c] > self.cap or (self.dom and m[c] >= min_height):
                continue
            if self.canon and (m[c] < last or (m[c] == last and rank[c] < last_rank)):
                continue
            if self.sym and self.twin[c] >= 0 and not self.placed[self.twin[c]]:
                continue
            cands.append(((m[c] if self.dyn else 0), rank[c], c))
        for _, _, c in sorted(cands):
            if self.branch(a, b, c):
                return True
            if self.hatless and self.canon and self.dyn and self.last_hatless:
                break
        self.backtracks += 1
        return False

    def branch(self, a: int, b: int, c: int) -> bool:
        m, o = self.m, self.m[c]
        top, lo, hi, trail = o + self.size[c], self.s0[c], self.s1[c], []
        self.placed[c] = True
        for d in self.nb[c]:
            if not self.placed[d] and m[d] < top:
                trail.append((d, m[d]))
                m[d] = self.lift(d, top)
                lo, hi = min(lo, self.s0[d]), max(hi, self.s1[d])
        old_floor = self.floor[self.s0[c]:self.s1[c]]
        self.floor[self.s0[c]:self.s1[c]] = [top] * (self.s1[c] - self.s0[c])
        for s in range(self.s0[c], self.s1[c]):
            self.total[s] -= self.size[c]
        ok = False
        try:
            if self.check(a, b, o, lo, hi):
                if self.decomp:
                    inner = range(self.s0[c] + 1, self.s1[c])
                    for k in inner:
                        self.cuts[k] -= 1
                    try:
                        cuts = [k for k in inner if self.cuts[k] == 0]
                        if cuts:
                            ok = all(self.solve_part(p, q, o) for p, q in zip([a] + cuts, cuts + [b]))
                        else:
                            ok = self.search(a, b, o, self.rank[c])
                    finally:
                        for k in inner:
                            self.cuts[k] += 1
                else:
                    ok = self.search(a, b, o, self.rank[c])
        finally:
            for s in range(self.s0[c], self.s1[c]):
                self.total[s] += self.size[c]
            self.floor[self.s0[c]:self.s1[c]] = old_floor
            for d, v in reversed(trail):
                m[d] = v
            self.placed[c] = False
        if ok:
            self.sol[c] = o
        self.last_hatless = not trail
        return ok


def _run_python(_lib, inst, cap, flags, heuristic, limit, seconds):
    s = _PySearch(inst, cap, flags, heuristic, limit, max(seconds, 0.0))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * s.n + 1000))
    st = s.run()
    return st, s.sol, s.nodes, s.backtracks
