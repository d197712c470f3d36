"""Lower bounds on the non-compulsory traffic of every plan, for graphs of any size.

The exact solver proves its own bound but only scales to a few hundred ops; `dnc` plans
thousands and proves nothing. `lower_bound` gives every plan a proof (bound <= optimum),
so a gap can be reported, from the arguments below (the best one wins):

1. **Peak.** When the capacity holds the no-spill peak of some order, that order needs
   no spill (offsets aside): 0 is the bound and nothing else is computed.
2. **Certain liveness** (`_covering`). Whatever the order, when op o computes, its own
   tensors are resident, and every tensor made by an ancestor of o (or an input read by
   one) and read by a descendant of o is live: resident, or in slow memory. If their
   padded bytes exceed the capacity, some of the passing-through ones are in slow memory
   then, and each such tensor costs at least its reload, plus its store unless that
   store is compulsory (graph outputs, DESIGN §3). The least-cost choice that covers the
   excess at every op (a 0-1 covering programme on HiGHS; its dual bound when time runs
   out) is a lower bound.
3. **Segments** (`_segments`). The ops are cut into consecutive slices of a topological
   order, each cut where the fewest bytes are live across it. Each tensor is *owned* by one slice (its producer's, or for an input its first
   reader's). A slice's problem keeps its ops and the tensors it owns; every tensor it
   reads but does not own becomes a separate input per reader (resident at that step
   only, its load free), and an owned tensor read beyond the slice becomes an output
   (its store compulsory). Any plan of the whole graph, restricted to a slice's steps,
   is a plan of the slice problem that moves at most the bytes the whole plan moves for
   the slice's own tensors, so the slices' bounds (each the exact solver's, or its own
   certain-liveness bound) add up to a bound. The state at the cuts is what is lost.

The covering bound also has a row per op for the bytes live in *every* order, which is a
minimum cut (`_Liveness.least`) and may exceed what is certainly live; its spill columns
are then every tensor that may be live there.

4. **Prefixes** (`_Positions`), rows of the same covering programme, by position
   rather than by op. After its k-th op every order has run a set of k ops closed under
   predecessors; the least bytes live across such a set plus the next op's outputs (a
   closure problem with a cardinality row) is live after k ops in every order, and only
   tensors whose producer can have run and one of whose readers can still be waiting
   after k ops can be the spilled ones. On random layered DAGs and RandWire graphs no
   single op sees more than the capacity live in every order (an op's ancestors and
   descendants are few), but the middle positions do. What stays loose is that a
   tensor can be live at many positions while the rows only know one at a time.

5. **Spine** (`_spine`): the exact solver's spine relaxation (`solvers.exact.stages`) of
   the heaviest chain, for its bound: each op off the chain runs in one of the chain's
   gaps, in any order. Its LP is solved where it has at most `SPINE_MAX_COLUMNS`.

With `fixed_order` the order is a chain: ancestors are all earlier ops, and both bounds
hold for that order. With `allow_recompute` an activation may come back by recomputing
its producer instead; its spill is charged the lesser of that and a reload, and slices
are not solved (the exact solver's free-order models do not charge recomputes).

`Beside` runs `lower_bound` in a child process while the planner searches: on two cores
the bound and the search then each have the whole time limit instead of taking turns,
and a solver that is handed `Beside.now` stops as soon as the bound proves its plan.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from planner.ir import Graph, Op, Tensor
from planner.problem import Problem, align_up
from planner.solvers.exact import backends
from planner.solvers.exact.model import closures

__all__ = ["Beside", "Bound", "lower_bound"]

SPINE_MAX_COLUMNS = 50_000  # the spine relaxation's LP past this size does not solve in a bound's time


@dataclass
class Bound:
    bytes: int  # non-compulsory bytes every plan moves, at least
    how: str  # which argument gave it, in a few words
    seconds: float = 0.0


def lower_bound(problem: Problem, time_limit: float = 10.0, *, peak: int | None = None,
                order: list[str] | None = None, segment_ops: int = 40,
                report: Callable[[Bound], None] | None = None) -> Bound:
    """A proven lower bound on the non-compulsory bytes of every plan of `problem`.

    Parameters
    ----------
    problem : graph, target (capacity = the budget), fixed_order / allow_recompute.
    time_limit : seconds, about; the covering programme and the slices share them.
    peak : the no-spill peak of some order (M_P or an upper bound on it), when known.
    order : a topological order to cut into slices (the min-peak order is best: its
        slices hold the ops that run together); the graph's order when None.
    segment_ops : ops per slice; slices of four times as many are tried too (they lose
        less at their cuts, but each is harder to bound), and the better sum counts.
    report : called with each better bound as it is found (the last call's is returned).
    """
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    if peak is not None and problem.capacity >= peak:
        return Bound(0, "capacity holds an order's no-spill peak", time.perf_counter() - t0)
    order = [o.name for o in problem.graph.ops] if problem.fixed_order or order is None else order
    sizes = [k for k in (segment_ops, 4 * segment_ops) if len(order) > k] if not problem.allow_recompute else []
    best = Bound(0, "no argument found a spill")

    def better(value: int, how: str = "live bytes by op and by position") -> None:
        nonlocal best
        if value > best.bytes:
            best = Bound(value, how, time.perf_counter() - t0)
            if report is not None:
                report(best)

    rounds = _covering(problem, deadline, order)
    better(next(rounds))  # op rows and the positions' LPs: a first bound within seconds at any size
    if not problem.fixed_order and not problem.allow_recompute:  # on up to 30% of the time
        better(_spine(problem, time.perf_counter() + 0.3 * (deadline - time.perf_counter())),
               "the spine relaxation")
    slices_end = time.perf_counter() + 0.3 * (deadline - time.perf_counter())
    for i, k in enumerate(sizes):  # then slices, on 30% of what is left; the covering takes what they leave
        better(_segments(problem, order, k, time.perf_counter() + (slices_end - time.perf_counter()) / (len(sizes) - i)),
               f"slices of about {k} ops")
    for value in rounds:
        better(value)
    best.seconds = time.perf_counter() - t0
    return best


class Beside:
    """`lower_bound(problem, time_limit, ...)` in a fresh interpreter, started now; the
    child writes each better bound to a file as it finds one, so the parent can read the
    best so far at any time (`now`, `best`) and keeps what was found if it has to stop the
    child early. The child ignores Ctrl-C (the parent handles it) and dies with its parent
    (Linux). A child that fails raises when it is finished, naming its last error line."""

    def __init__(self, problem: Problem, time_limit: float, *, peak: int | None = None,
                 order: list[str] | None = None):
        from planner.solvers.exact.backends import child_setup

        self._dir = tempfile.TemporaryDirectory(prefix="planner-bound-")
        d = Path(self._dir.name)
        self._out, self._err = d / "bound.pkl", d / "stderr"
        (d / "in.pkl").write_bytes(pickle.dumps((problem.portable(), time_limit, peak, order)))
        code = f"from planner.solvers.lower import _child; _child({str(d)!r})"
        with open(self._err, "wb") as err:
            self._proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=err,
                                          preexec_fn=child_setup)
        self._best, self._seen = Bound(0, "no argument found a spill"), (0, 0)

    def best(self) -> Bound:
        """The best bound the child has written so far."""
        try:
            st = self._out.stat()
        except FileNotFoundError:
            return self._best
        stamp = (st.st_ino, st.st_mtime_ns)  # each write is a new file (os.replace)
        if stamp != self._seen:
            self._best, self._seen = pickle.loads(self._out.read_bytes()), stamp
        return self._best

    def now(self) -> int:
        """The best bound's bytes so far: a `LowerBound` for solvers (planner.bounds)."""
        return self.best().bytes

    def finish(self, timeout: float, enough: float = math.inf) -> Bound:
        """Waits up to `timeout` seconds for the child to end or to write a bound of at
        least `enough` bytes (the best plan's traffic: nothing more to prove), then stops
        it and returns the best bound it wrote."""
        until = time.perf_counter() + timeout
        while self._proc.poll() is None and self.now() < enough and time.perf_counter() < until:
            try:
                self._proc.wait(timeout=min(0.1, max(until - time.perf_counter(), 0.0)))
            except subprocess.TimeoutExpired:
                pass
        return self.stop()

    def stop(self) -> Bound:
        """Stops the child now; the best bound it wrote."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        elif self._proc.returncode != 0:
            last = (self._err.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            self._dir.cleanup()
            raise RuntimeError(f"the lower-bound process failed (exit code {self._proc.returncode}): {last}")
        best = self.best()
        self._dir.cleanup()
        return best


def _child(folder: str) -> None:
    """The child of `Beside`: reads its arguments, writes every better bound (atomically)."""
    d = Path(folder)
    problem, time_limit, peak, order = pickle.loads((d / "in.pkl").read_bytes())

    def write(b: Bound) -> None:
        (d / "bound.tmp").write_bytes(pickle.dumps(b))
        os.replace(d / "bound.tmp", d / "bound.pkl")

    write(lower_bound(problem, time_limit, peak=peak, order=order, report=write))


def _covering(problem: Problem, deadline: float, order: list[str] | None = None) -> Iterator[int]:
    """The covering bound in bytes, as it grows: certain-liveness and min-cut rows per op,
    prefix rows per position (see the module docstring); `order`, any topological order,
    tells which positions can overflow.

    It is anytime: the op rows and the positions' LP relaxations first, the programme
    solved (the first value), then rounds that tighten more positions with their MIPs and
    solve it again (one value each), until every position is tightened or `deadline`."""
    cap = align_up(problem.capacity, problem.target.alignment)  # padded bytes resident at once fit (as in exact)
    live = _Liveness(problem)
    rows = _op_rows(problem, live, cap, time.perf_counter() + 0.2 * (deadline - time.perf_counter()))
    if problem.fixed_order:  # in a fixed order the certain rows are exact: no positions
        yield _programme(problem, live, rows, deadline)
        return
    positions = _Positions(problem, live, order or [o.name for o in live.ops], cap)
    positions.relax(time.perf_counter() + 0.15 * (deadline - time.perf_counter()))
    while True:
        last = positions.done() or time.perf_counter() >= deadline
        until = deadline if last else time.perf_counter() + 0.25 * (deadline - time.perf_counter())
        yield _programme(problem, live, rows + positions.rows(), until)
        if last:
            return
        positions.tighten(min(deadline, time.perf_counter() + max(2.0, 0.3 * (deadline - time.perf_counter()))))


def _spine(problem: Problem, until: float) -> int:
    """The exact solver's spine relaxation (`solvers.exact.stages`) on the heaviest chain,
    solved for its bound by `until`: every op off the chain runs in some gap of it, in
    any order. Where the capacity binds along one long chain it sees what the rows here
    cannot, a tensor kept out across many of its peaks (a transformer's encoder memory
    read by every decoder layer: 458,752 B proven at M_H against 131,072 from the rows).
    0 past `SPINE_MAX_COLUMNS`, whose LP does not solve in the time a bound gets."""
    from planner.solvers.exact import stages

    chains = stages.spines(problem)
    if not chains:
        return 0
    try:
        rel = stages.Relaxation(problem, chains[0], max_columns=SPINE_MAX_COLUMNS)
    except ValueError:  # its gap columns alone are too many: not built
        return 0
    if len(rel.model.lb) > SPINE_MAX_COLUMNS or until - time.perf_counter() < 1.0:
        return 0
    res = backends.solve(rel.model, "highs", until - time.perf_counter(), 1, None, bound_only=True,
                         isolate=len(rel.model.lb) > 2000)
    return rel.bytes(res.bound)


def _op_rows(problem: Problem, live: "_Liveness", cap: int, until: float) -> list[tuple[int, list[str]]]:
    """Covering rows per op: its own tensors and those live when it computes in every
    order, and (for ops where some order could overflow, the fullest first, until
    `until`) the least bytes live then in any order, a minimum cut, over the tensors that
    may be live then. A row is (bytes in slow memory at least, the tensors that can be)."""
    rows: list[tuple[int, list[str]]] = []
    wide = []  # ops where an order could overflow: their least live bytes come from a min cut
    sure_bytes, maybe_bytes = live.bytes(live.sure), live.bytes(live.made)
    for i, o in enumerate(live.ops):
        own = set(problem.tensors_of(o))
        base = sum(live.pad[t] for t in own)
        excess = base + sure_bytes[i] - sum(live.pad[t] for t in own if live.holds(live.sure, t, i)) - cap
        if excess > 0:
            rows.append((excess, sorted(live.at(live.sure, i) - own)))
        reach = base + maybe_bytes[i] - sum(live.pad[t] for t in own if live.holds(live.made, t, i)) - cap
        if reach > max(excess, 0):
            wide.append((reach, i, own))
    for _, i, own in sorted(wide, key=lambda w: -w[0]):
        if time.perf_counter() > until:
            break
        maybe = live.made[i].copy()
        maybe[[live.row[t] for t in own if t in live.row]] = False
        excess = sum(live.pad[t] for t in own) + live.least(i, maybe) - cap
        if excess > 0:
            rows.append((excess, sorted(live.tensors[k] for k in np.flatnonzero(maybe))))
    return rows


def _programme(problem: Problem, live: "_Liveness", rows: list[tuple[int, list[str]]], until: float) -> int:
    """The least cost of tensors in slow memory that covers every row: a 0-1 covering
    programme on HiGHS, its dual bound if `until` comes first."""
    if not rows:
        return 0
    cost = {t: _spill_cost(problem, t) for _, ts in rows for t in ts}
    m = backends.Model()
    col: dict[str, int] = {}
    unit = math.gcd(*(live.pad[t] for _, ts in rows for t in ts), *(e for e, _ in rows)) or 1
    cunit = math.gcd(*cost.values()) or 1  # free spills (recompute) cost 0
    for k, (excess, ts) in enumerate(rows):
        for t in ts:
            if t not in col:
                col[t] = m.var(f"z_{t}", cost=cost[t] // cunit)
        m.row(f"cover_{k}", {col[t]: live.pad[t] // unit for t in ts}, lo=math.ceil(excess / unit))
    res = backends.solve(m, "highs", max(until - time.perf_counter(), 0.2), 1, None, bound_only=True)
    # every row can be covered (an op's own tensors fit, check_budget), so no infinite bound
    return max(0, math.ceil(res.bound - 1e-6) * cunit) if math.isfinite(res.bound) else 0


class _Positions:
    """Covering rows per position k: after its k-th op, every order has run a set I of k
    ops closed under predecessors, and before its next op v runs, the tensors live across
    I (made or read in I, read outside it) and v's outputs are resident or in slow memory.
    The least of their padded bytes over all (I, v), `_prefix_least`, less the capacity,
    is in slow memory, and only tensors that can be live after k ops can be there.

    `order`'s own prefix is one such I: positions where it fits are never rows. The
    others get the LP relaxation first (`relax`), then the MIP (`tighten`)."""

    def __init__(self, problem: Problem, live: "_Liveness", order: list[str], cap: int):
        self.problem, self.live, self.cap = problem, live, cap
        n = len(live.ops)
        pos = {o: i for i, o in enumerate(order)}
        self.na = [a.bit_count() for a in live.anc]
        self.nd = [d.bit_count() for d in live.desc]
        g = problem.graph
        self.span: dict[str, tuple[int, int]] = {}  # after how many ops a tensor can be live
        delta = [0] * (n + 2)  # and when it is live in `order`
        for t in live.tensors:
            tt = g.tensors[t]
            readers = [live.index[c] for c in tt.consumers]
            first = live.index[tt.producer] if tt.producer is not None else min(readers, key=lambda c: self.na[c])
            self.span[t] = (self.na[first] + 1, max(n - 1 - self.nd[c] for c in readers))
            made = pos[tt.producer] if tt.producer is not None else min(pos[c] for c in tt.consumers)
            delta[made + 1] += live.pad[t]
            delta[max(pos[c] for c in tt.consumers) + 1] -= live.pad[t]
        self.outs = [sum(live.pad[t] for t in o.outputs if t in live.pad) for o in live.ops]
        across, self.cut = 0, {}  # positions where `order` overflows, and its bytes there
        for k in range(1, n):
            across += delta[k]
            if across + self.outs[live.index[order[k]]] > cap:
                self.cut[k] = across + self.outs[live.index[order[k]]]
        self.least: dict[int, int] = {}  # position -> bytes live after it in every order, at least
        self.tight: set[int] = set()  # positions whose MIP has run

    def relax(self, until: float) -> None:
        """LP relaxations (fast, and close to the MIP), the fullest positions of `order`
        first and coarse to fine (n/8 positions apart, then n/16, ...), until `until`."""
        todo, apart = sorted(self.cut, key=lambda k: -self.cut[k]), len(self.live.ops) // 8
        while todo and time.perf_counter() < until:
            for k in todo:
                if time.perf_counter() > until:
                    break
                if all(abs(k - j) > apart for j in self.least):
                    self.least[k] = self._least(k, until - time.perf_counter(), relax=True)
            todo = [k for k in todo if k not in self.least]
            apart //= 2

    def tighten(self, until: float) -> None:
        """MIPs (at most 2 s each, their dual bound if cut short) until `until`: first
        where the relaxation came highest, then the positions it did not reach."""
        todo = sorted(self.least, key=lambda k: -self.least[k]) + sorted(set(self.cut) - set(self.least),
                                                                         key=lambda k: -self.cut[k])
        for k in todo:
            if k in self.tight:
                continue
            if time.perf_counter() > until:
                break
            self.least[k] = max(self.least.get(k, 0), self._least(k, min(until - time.perf_counter(), 2.0)))
            self.tight.add(k)

    def done(self) -> bool:
        return self.tight >= set(self.cut)

    def rows(self) -> list[tuple[int, list[str]]]:
        return [(m - self.cap, sorted(t for t, (lo, hi) in self.span.items() if lo <= k <= hi))
                for k, m in self.least.items() if m > self.cap]

    def _least(self, k: int, time_limit: float, relax: bool = False) -> int:
        return _prefix_least(self.problem, self.live, k, self.na, self.nd, self.outs, time_limit, relax)


def _prefix_least(problem: Problem, live: "_Liveness", k: int, na: list[int], nd: list[int],
                  outs: list[int], time_limit: float, relax: bool = False) -> int:
    """At least the padded bytes live between the k-th and the next op of any order: a
    set I of k ops closed under predecessors (a closure problem with one cardinality
    row, on HiGHS), the next op v (its predecessors in I, itself not), the tensors live
    across I plus v's outputs. An op with k or more ancestors is outside I, one with n - k
    or more descendants inside; the others are columns. `relax`: the LP relaxation's
    optimum, a weaker bound found in a fraction of the time."""
    g = problem.graph
    n = len(live.ops)
    m = backends.Model()
    state: list[int | None] = [0 if na[i] + 1 > k else 1 if n - 1 - nd[i] < k else None for i in range(n)]
    x = {i: m.var(f"x_{i}") for i in range(n) if state[i] is None}
    preds = [{live.index[p] for t in o.inputs if (p := g.tensors[t].producer) is not None} for o in live.ops]

    def at_least(terms: dict[int, int], ops: list[tuple[int, int]], lo: int, name: str) -> None:
        """Adds sum(terms) + sum(c * [op in I] for c, op in ops) >= lo, fixed ops folded in."""
        for c, i in ops:
            if state[i] is None:
                terms[x[i]] = terms.get(x[i], 0) + c
            else:
                lo -= c * state[i]
        m.row(name, terms, lo=lo)

    for j in x:
        for p in preds[j]:
            if state[p] is None:
                m.row(f"closed_{p}_{j}", {x[p]: 1, x[j]: -1}, lo=0)
    inside = sum(1 for s in state if s == 1)
    m.row("k", {c: 1 for c in x.values()}, lo=k - inside, hi=k - inside)
    for t in live.tensors:
        tt = g.tensors[t]
        ends = [live.index[c] for c in tt.consumers]
        starts = [live.index[tt.producer]] if tt.producer is not None else ends
        if all(state[s] == 0 for s in starts) or all(state[c] == 1 for c in ends):
            continue  # not made yet, or read by all
        if any(state[s] == 1 for s in starts) and any(state[c] == 0 for c in ends):
            m.offset += live.pad[t]
            continue
        z = m.var(f"live_{t}", cost=live.pad[t])
        for s in starts:
            for c in ends:
                if s != c and state[s] != 0 and state[c] != 1:
                    at_least({z: 1}, [(-1, s), (1, c)], 0, f"live_{t}_{s}_{c}")  # made and not all read
    nxt = {}
    for v in range(n):
        if state[v] != 1 and all(state[p] != 0 for p in preds[v]):
            nxt[v] = e = m.var(f"next_{v}", cost=outs[v])
            at_least({e: -1}, [(-1, v)], -1, f"next_out_{v}")
            for p in preds[v]:
                at_least({e: -1}, [(1, p)], 0, f"next_after_{p}_{v}")
    m.row("one_next", {e: 1 for e in nxt.values()}, lo=1, hi=1)
    res = backends.solve(m, "highs", max(time_limit, 0.05), 1, None, bound_only=True, relax=relax)
    return math.ceil(res.bound - 1e-6 * max(1.0, abs(res.bound))) if math.isfinite(res.bound) else 0


class _Liveness:
    """Which tensors are live when an op computes, over all orders: `sure` in every order,
    `made` in some (op x tensor matrices), and `least` the fewest padded bytes live in any.

    When op i computes, the ops already run form a set I closed under predecessors that
    holds i's ancestors and none of its descendants; a tensor is live if made in I (an
    input: read in I) and read outside I. The least live bytes over such sets is a
    minimum cut (a closure problem): an op node on the source side is in I, and a tensor
    costs its bytes when its producer is in I and one of its readers is not."""

    def __init__(self, problem: Problem):
        g = problem.graph
        self.problem = problem
        self.ops = problem.graph.ops
        self.index = {o.name: i for i, o in enumerate(self.ops)}
        a = problem.target.alignment
        self.pad = {t: align_up(s, a) for t, s in problem.sizes.items()}
        self.anc, self.desc = _closures(problem)
        self.tensors = [t for t in problem.sizes if g.tensors[t].consumers]
        self.row = {t: k for k, t in enumerate(self.tensors)}
        n = len(self.ops)
        # op x tensor: t is live when op i computes in some order (made), in every order (sure)
        self.made = np.zeros((n, len(self.tensors)), dtype=bool)
        self.sure = np.zeros((n, len(self.tensors)), dtype=bool)
        starts, reads = [], []  # (tensor row, op): its makers (an input: its readers), its readers
        for k, t in enumerate(self.tensors):
            tt = g.tensors[t]
            readers = [self.index[c] for c in tt.consumers]
            starts += [(k, self.index[tt.producer])] if tt.producer is not None else [(k, c) for c in readers]
            reads += [(k, c) for c in readers]
            before = 0  # ops with a reader among their descendants (a reader may follow)
            for c in readers:
                before |= self.anc[c]
            if tt.producer is not None:
                p = self.index[tt.producer]
                after = self.desc[p]
                may = ((1 << n) - 1) & ~self.anc[p] & ~(1 << p)
            else:
                after = 0
                for c in readers:
                    after |= self.desc[c]
                may = (1 << n) - 1
            last = 0  # ops that follow every reader: t is dead there
            for j, c in enumerate(readers):
                last = self.desc[c] if j == 0 else last & self.desc[c]
            first = ~0  # an input before all its readers is not loaded yet
            if tt.producer is None:
                for c in readers:
                    first &= self.anc[c]
            else:
                first = 0
            self.sure[:, k] = _bits(after & before, n)
            self.made[:, k] = _bits(may & ~last & ~(first & ((1 << n) - 1)), n)
        self.padded = np.array([self.pad[t] for t in self.tensors], dtype=np.int64)
        # the closure network's pieces as arrays (`least`): op j reads a tensor op p made;
        # tensor k is made by (or, an input, first read by one of) `start_op`, read by `read_op`
        preds = [(j, self.index[p]) for j, o in enumerate(self.ops) for t in o.inputs
                 if (p := g.tensors[t].producer) is not None]
        self.pred_j, self.pred_p = np.array(preds, dtype=np.int64).reshape(-1, 2).T
        self.start_t, self.start_op = np.array(starts, dtype=np.int64).reshape(-1, 2).T
        self.read_t, self.read_op = np.array(reads, dtype=np.int64).reshape(-1, 2).T

    def bytes(self, m: np.ndarray) -> list[int]:
        """Per op, the padded bytes of the tensors `m` marks."""
        return [int(self.padded[m[i]].sum()) for i in range(len(self.ops))]

    def holds(self, m: np.ndarray, t: str, i: int) -> bool:
        return t in self.row and bool(m[i, self.row[t]])

    def at(self, m: np.ndarray, i: int) -> set[str]:
        return {self.tensors[k] for k in np.flatnonzero(m[i])}

    def least(self, i: int, maybe: np.ndarray) -> int:
        """The least padded bytes of the tensors `maybe` marks (a mask over `tensors`: what
        may be live when op i computes, its own left out) live then in any order: a
        maximum flow (scipy's Dinic) on the closure network, in units of the padding's gcd.
        The network is built with array operations: on 5,000 ops a cut takes milliseconds,
        so every op of a graph that size gets one within a bound's time."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import maximum_flow

        n = len(self.ops)
        source, sink = 0, 1  # then op j is node 2 + j, then a top and a bottom node per tensor
        before, after = _bits(self.anc[i], n), _bits(self.desc[i] | (1 << i), n)
        side = np.arange(2, n + 2)
        side[before], side[after] = source, sink
        # j in I puts its predecessors in I: uncuttable edges from free ops
        keep = ~before[self.pred_j] & ~after[self.pred_j] & (side[self.pred_p] != source)
        u, v, c = [2 + self.pred_j[keep]], [side[self.pred_p[keep]]], [np.zeros(int(keep.sum()), np.int64)]
        nt = len(self.tensors)
        s_side, r_side = side[self.start_op], side[self.read_op]

        def any_of(pairs: np.ndarray, where: np.ndarray) -> np.ndarray:
            out = np.zeros(nt, dtype=bool)
            out[pairs[where]] = True
            return out

        start_source, start_live = any_of(self.start_t, s_side == source), any_of(self.start_t, s_side != sink)
        read_sink, read_live = any_of(self.read_t, r_side == sink), any_of(self.read_t, r_side != source)
        alive = maybe & start_live & read_live  # else made after i, or read before it: dead
        const = int(self.padded[alive & start_source & read_sink].sum())
        cut = alive & ~(start_source & read_sink)
        node = np.full(nt, -1)
        node[cut] = 2 + n + 2 * np.arange(int(cut.sum()))
        e = (node[self.start_t] >= 0) & (s_side >= 2)  # a free start runs before the tensor is made
        u.append(s_side[e]), v.append(node[self.start_t[e]]), c.append(np.zeros(int(e.sum()), np.int64))
        k = np.flatnonzero(cut)
        u.append(np.where(start_source[k], source, node[k])), v.append(node[k] + 1), c.append(self.padded[k])
        e = (node[self.read_t] >= 0) & (r_side != source)  # a reader outside I keeps it live
        u.append(node[self.read_t[e]] + 1), v.append(r_side[e]), c.append(np.zeros(int(e.sum()), np.int64))
        if not len(k):
            return const
        unit = int(np.gcd.reduce(self.padded[k]))
        big = int(self.padded[k].sum()) // unit + 1  # more than any cut of tensor edges: the uncuttable ones
        if big >= 2**31:
            raise ValueError("live bytes beyond what a 32-bit flow network holds")
        cap = np.concatenate(c) // unit
        cap[cap == 0] = big
        nodes = 2 + n + 2 * len(k)
        m = coo_matrix((cap, (np.concatenate(u), np.concatenate(v))), shape=(nodes, nodes)).tocsr()
        m.data = np.minimum(m.data, big).astype(np.int32)  # parallel edges summed, capped
        return const + int(maximum_flow(m, source, sink, method="dinic").flow_value) * unit


def _bits(x: int, n: int) -> np.ndarray:
    """The bitset `x` over n ops as a boolean array (bit i: op i)."""
    raw = np.frombuffer(x.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def _spill_cost(problem: Problem, t: str) -> int:
    """Least bytes a tensor costs when it is in slow memory while live: its reload, plus
    its store unless that is compulsory; with recompute, at most its producer's charge."""
    tt = problem.graph.tensors[t]
    s = problem.sizes[t]
    if tt.kind in ("input", "weight", "output"):
        load = s
    else:
        load = 2 * s
    if problem.allow_recompute and tt.producer is not None:
        load = min(load, math.floor(problem.recompute_weight * problem.graph.op(tt.producer).flops))
    return load


def _closures(problem: Problem) -> tuple[list[int], list[int]]:
    """Per op (graph order), the bitsets of its ancestors and descendants; with
    fixed_order, every earlier op is an ancestor and every later one a descendant."""
    n = len(problem.graph.ops)
    if problem.fixed_order:
        return [(1 << i) - 1 for i in range(n)], [((1 << n) - 1) ^ ((1 << (i + 1)) - 1) for i in range(n)]
    return closures(problem)


def _segments(problem: Problem, order: list[str], segment_ops: int, deadline: float) -> int:
    """The sum of the slices' bounds (see the module docstring); slices whose no-spill
    peak fits contribute 0, the others share the time, fullest first."""
    from planner.bounds import peak_bytes
    from planner.solvers import exact

    cuts = _cuts(problem, order, segment_ops)
    parts = [order[a:b] for a, b in zip([0] + cuts, cuts + [len(order)])]
    subs = [_slice(problem, parts, k) for k in range(len(parts))]
    over = [(peak_bytes(s, [o.name for o in s.graph.ops]) - s.capacity, k) for k, s in enumerate(subs)]
    todo = [k for e, k in sorted(over, reverse=True) if e > 0]
    total = 0
    for i, k in enumerate(todo):
        until = time.perf_counter() + (deadline - time.perf_counter()) / (len(todo) - i)
        sub = subs[k]
        got = max(_covering(sub, time.perf_counter() + (until - time.perf_counter()) / 3, [o.name for o in sub.graph.ops]))
        if until - time.perf_counter() > 0.5:
            p = exact.solve(sub, exact.Params(time_limit=until - time.perf_counter(),
                                              schedule=[o.name for o in sub.graph.ops]))
            got = max(got, int(p.solver.bound or 0))
        total += got
    return total


def _cuts(problem: Problem, order: list[str], segment_ops: int) -> list[int]:
    """Where to cut `order`: every slice holds between half and one and a half times
    `segment_ops` ops, and each cut goes where the fewest bytes are live across it (what
    is live across a cut is what the slices' bounds lose)."""
    g = problem.graph
    pos = {o: i for i, o in enumerate(order)}
    delta = [0] * (len(order) + 1)
    for t, s in problem.sizes.items():
        tt = g.tensors[t]
        uses = [pos[c] for c in tt.consumers] + ([pos[tt.producer]] if tt.producer else [])
        if uses:  # live across every cut k with first < k <= last
            delta[min(uses) + 1] += s
            delta[max(uses) + 1] -= s
    across, run = [], 0
    for d in delta:
        run += d
        across.append(run)
    cuts, start = [], 0
    while len(order) - start > segment_ops + segment_ops // 2:
        lo, hi = start + max(1, segment_ops // 2), start + segment_ops + segment_ops // 2
        start = min(range(lo, hi + 1), key=lambda k: (across[k], abs(k - start - segment_ops)))
        cuts.append(start)
    return cuts


def _slice(problem: Problem, parts: list[list[str]], k: int) -> Problem:
    """The problem of slice `k`: its ops, the tensors it owns, a private input per read of
    a tensor it does not own (see the module docstring)."""
    g = problem.graph
    part = {o: j for j, ops in enumerate(parts) for o in ops}
    mine = set(parts[k])
    pos = {o: i for j in range(len(parts)) for i, o in enumerate(parts[j])}

    def owner(t: Tensor) -> int:
        if t.producer is not None:
            return part[t.producer]
        return min(((part[c], pos[c]) for c in t.consumers), default=(-1, 0))[0]

    tensors: dict[str, Tensor] = {}
    ops: list[Op] = []
    for name in parts[k]:
        o = g.op(name)
        ins = []
        for t in o.inputs:
            tt = g.tensors[t]
            if t not in problem.sizes or owner(tt) == k:  # untracked weights stay as they are
                ins.append(t)
                if t not in tensors:
                    tensors[t] = dataclasses.replace(tt, consumers=[c for c in tt.consumers if c in mine])
            else:
                copy = f"{t}@{name}"
                kind = "weight" if tt.kind == "weight" else "input"
                tensors[copy] = dataclasses.replace(tt, name=copy, kind=kind, producer=None, consumers=[name])
                ins.append(copy)
        for t in o.outputs:
            tt = g.tensors[t]
            inside = [c for c in tt.consumers if c in mine]
            kind = "output" if tt.kind == "output" or len(inside) < len(tt.consumers) else tt.kind
            tensors[t] = dataclasses.replace(tt, kind=kind, consumers=inside)
        ops.append(dataclasses.replace(o, inputs=ins, fn=None))
    sub = Graph(f"{g.name}[{k}]", tensors, ops, [t for t, v in tensors.items() if v.kind == "input"],
                [t for t, v in tensors.items() if v.kind == "output"]).lint()
    return Problem(sub, problem.target, fixed_order=problem.fixed_order, allow_recompute=problem.allow_recompute,
                   recompute_weight=problem.recompute_weight)
