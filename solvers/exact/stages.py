"""A lower bound over all operator orders: the spine relaxation.

Pick a **spine**, a chain of ops each an ancestor of the next, so every order runs them
in the same sequence c_0 < c_1 < ... < c_{m-1}. Every other op falls into one of the m + 1
**gaps** between them (gap g: after c_{g-1}, before c_g), inside the window its ancestry
allows; inside a gap the order is forgotten. Memory is looked at the spine ops:

    d[o, j] = 1 if op o (off the spine) runs before c_j (so in the first gap g with d[o, g] = 1)
    R[t, j] = 1 if tensor t is resident while c_j computes
    a[t, j] = 1 if t is live at c_j (made before it, read after it) but not resident
    l[t, j] = 1 if t is loaded in gap j + 1 (it was absent at c_j and is used or back by c_{j+1})
    st[t]   = 1 if activation t is stored (needed before it can be loaded)

and at the ops off the spine where the bytes certainly live there could overflow
(`_off_spine`). Every plan gives a solution of at most its cost (its loads between two
spine ops, each counted once, and its stores), so the optimum is a lower bound. It stays
small where the time-indexed model (`model.py`) does not: the transformer's decoder
projects its memory in ops that float over hundreds of steps, but each decoder layer's
self-attention lies on one chain, which is where memory runs out.

    encoder ... memory ──────────────┬──────────────────┐         (spine: ===)
    === enc layers === dec 0 === dec 1 (qkv: 6 of 7 units) === dec 2 ...
                       kv proj 1 floats in any gap before dec 1's cross-attention

A solution also suggests an order (`order_of`), which the fixed-order model then plans.
"""
from __future__ import annotations

import math

from planner.problem import Problem, align_up
from planner.solvers.exact.backends import Model
from planner.solvers.exact.model import _lin
from planner.solvers.exact.orders import ancestors


def spines(problem: Problem) -> list[list[str]]:
    """Chains of greatest footprint, the heaviest of all first, then one per graph input:
    each a longest path (from an op that reads the input), every op weighted by the padded bytes it needs resident, so the
    ops where capacity binds lie on it. Two inputs (a transformer's source and target)
    give two chains, each seeing the capacity of its own branch."""
    g = problem.graph
    a = problem.target.alignment
    weight = {o.name: 1 + sum(align_up(problem.sizes[t], a) for t in problem.tensors_of(o)) for o in g.ops}
    out: list[list[str]] = []
    starts = [set(g.tensors[x].consumers) for x in g.inputs if x in g.tensors]
    for reach in [{o.name for o in g.ops}] + starts:  # first the heaviest path of all
        best: dict[str, tuple[int, str | None]] = {}
        for o in g.ops:  # topological
            preds = [p for p in {g.tensors[t].producer for t in o.inputs} - {None} if p in best]
            if not preds and o.name not in reach:
                continue
            prev = max(preds, key=lambda p: best[p][0], default=None)
            best[o.name] = (weight[o.name] + (best[prev][0] if prev else 0), prev)
        if not best:
            continue
        end: str | None = max(best, key=lambda o: best[o][0])
        chain = []
        while end is not None:
            chain.append(end)
            end = best[end][1]
        if chain[::-1] not in out:
            out.append(chain[::-1])
    return out


class Relaxation:
    """The spine model of `problem` (see the module docstring) and the maps to read it."""

    def __init__(self, problem: Problem, chain: list[str], off_spine: bool = True, max_columns: int | None = None):
        """With problem.allow_recompute, an activation may come back by recomputing its
        producer instead of a load: each come-back then costs at least the lesser of its
        size and its producer's recompute charge (rounded down), and no store is needed.

        Raises ValueError, before building the model, when its gap columns alone exceed
        `max_columns` (a 5,000-op DAG's model takes 45 s to build, its windows 0.4 s)."""
        self.problem = problem
        g, size = problem.graph, problem.sizes
        al = problem.target.alignment
        self.chain = chain
        m = len(chain)
        pos = self.pos = {c: j for j, c in enumerate(chain)}
        index = {o.name: i for i, o in enumerate(g.ops)}
        anc = ancestors(problem)
        # Gap window of every op off the spine: after its last spine ancestor, before its
        # first spine descendant.
        self.gap: dict[str, tuple[int, int]] = {}
        for o in g.ops:
            if o.name in pos:
                continue
            lo = max((pos[c] + 1 for c in chain if anc[o.name] >> index[c] & 1), default=0)
            hi = min((pos[c] for c in chain if anc[c] >> index[o.name] & 1), default=m)
            self.gap[o.name] = (lo, hi)
        if max_columns is not None and sum(hi - lo for lo, hi in self.gap.values()) > max_columns:
            raise ValueError(f"spine model of more than {max_columns} columns")
        self.model = md = Model()
        self.unit = 1 if problem.allow_recompute else math.gcd(*size.values()) if size else 1
        self.d: dict[tuple[str, int], int] = {}
        # d[o, j] = 1 if op o runs before spine op c_j, for the j its window leaves open;
        # cumulative, so every "before" below is one column, not a sum over gaps.
        for o, (lo, hi) in self.gap.items():
            for j in range(lo, hi):
                self.d[o, j] = md.var(f"d_{o}_{j}")
                if j > lo:  # once before c_{j-1}, before c_j too
                    md.row(f"mono_{o}_{j}", {self.d[o, j - 1]: 1, self.d[o, j]: -1}, hi=0)
        # Order: a producer's gap is no later than its consumer's.
        for o in g.ops:
            if o.name in pos:
                continue
            for t in o.inputs:
                p = g.tensors[t].producer
                if p is None or p in pos:
                    continue
                lo, hi = self.gap[o.name][0], self.gap[p][1]
                for j in range(lo, hi):  # before(o, j) <= before(p, j)
                    (to, co), (tp, cp) = self.before(o.name, j), self.before(p, j)
                    md.row(f"prec_{p}_{o.name}_{j}", _lin((1, to), (-1, tp)), hi=cp - co)
        # DESIGN §3 at the spine ops: own tensors resident, the rest within capacity.
        cap = align_up(problem.capacity, al)
        own = [set(problem.tensors_of(g.op(c))) for c in chain]
        used: dict[int, dict[int, int]] = {j: {} for j in range(m)}
        self.absent: dict[str, dict[int, int]] = {}  # a[t, j]
        self.loads: dict[tuple[str, int], int] = {}  # l[t, j]
        self.st: dict[str, int] = {}  # st[t]
        for t in size:
            if g.tensors[t].consumers:
                self._tensor(t, own, used, align_up(size[t], al))
        for j, c in enumerate(chain):
            fixed = sum(align_up(size[t], al) for t in own[j])
            md.row(f"capacity_{c}", used[j], hi=cap - fixed)
        if off_spine:
            self._off_spine(anc, index, cap)

    def bytes(self, bound: float) -> int:
        """A dual bound of the model as bytes of traffic: its objective counts whole units,
        so the bound rounds up (0 when nothing is proven)."""
        return max(0, math.ceil(bound - 1e-6) * self.unit) if math.isfinite(bound) else 0

    def before(self, o: str, j: int) -> tuple[dict[int, int], int]:
        """1 if op o runs before spine op c_j, as (terms, constant)."""
        if o not in self.gap:  # a spine op
            return {}, int(self.pos[o] < j)
        lo, hi = self.gap[o]
        if j < lo:
            return {}, 0
        if j >= hi:
            return {}, 1
        return {self.d[o, j]: 1}, 0

    def _tensor(self, t: str, own, used, padded: int) -> None:
        """Residency and absence of tensor t at the spine ops, and the loads that end them."""
        g, md = self.problem.graph, self.model
        tt = g.tensors[t]
        starts = [tt.producer] if tt.producer else list(tt.consumers)
        absent = self.absent[t] = {}
        for j, c in enumerate(self.chain):
            if t in own[j]:
                continue
            rows = []
            for s in starts:
                for b in tt.consumers:
                    if s == b:
                        continue
                    (ts, cs), (tb, cb) = self.before(s, j), self.before(b, j)
                    if (not ts and not cs) or (not tb and cb):  # never live at c_j this way
                        continue
                    rows.append((ts, cs, tb, cb))
            if not rows:
                continue
            r = md.var(f"R_{t}_{j}")
            a = absent[j] = md.var(f"a_{t}_{j}")
            used[j][r] = padded
            for k, (ts, cs, tb, cb) in enumerate(rows):  # R + a >= before(s) - before(b)
                md.row(f"live_{t}_{j}_{k}", _lin((1, {r: 1, a: 1}), (-1, ts), (1, tb)), lo=cs - cb)
        # A load in gap j + 1 ends an absence at c_j: t is used in that gap or by c_{j+1},
        # is resident at c_{j+1}, or is live no longer.
        for j, a in absent.items():
            ld = self._load(t, j)
            nxt = {absent[j + 1]: 1} if j + 1 in absent else {}
            md.row(f"back_{t}_{j}", _lin((1, {ld: 1, a: -1}), (1, nxt)), lo=0)
            for b in tt.consumers:  # b in gap j + 1: before(b, j + 1) - before(b, j)
                if b in self.gap and self.gap[b][0] <= j + 1 <= self.gap[b][1]:
                    (t1, c1), (t0, c0) = self.before(b, j + 1), self.before(b, j)
                    md.row(f"use_{t}_{j}_{b}", _lin((1, {ld: 1, a: -1}), (-1, t1), (1, t0)), lo=c1 - c0 - 1)

    def _load(self, t: str, j: int) -> int:
        """l[t, j]: t is loaded in gap j + 1 (costs its size; an activation must be stored first)."""
        key = (t, j)
        if key not in self.loads:
            md = self.model
            tt = self.problem.graph.tensors[t]
            cost = self.problem.sizes[t] // self.unit
            redo = self.problem.allow_recompute and tt.kind == "activation"
            if redo:
                flops = self.problem.graph.op(tt.producer).flops  # type: ignore[arg-type]
                cost = min(cost, math.floor(self.problem.recompute_weight * flops))
            ld = self.loads[key] = md.var(f"l_{t}_{j}", cost=cost)
            if tt.kind == "activation" and not redo:
                if t not in self.st:
                    self.st[t] = md.var(f"st_{t}", cost=cost)
                md.row(f"stored_{t}_{j}", {self.st[t]: 1, ld: -1}, lo=0)
        return self.loads[key]

    def _off_spine(self, anc: dict[str, int], index: dict[str, int], cap: int) -> None:
        """DESIGN §3 capacity at ops off the spine, where the bytes certainly live there
        could overflow. With op k in gap g, tensor t is certainly live at k when a use that
        starts its life runs before c_{g-1} (or is an ancestor of k) and a reader after c_g
        (or a descendant of k). Such a t absent at k comes back by a load in gap g, or is
        still absent at c_g: k in gap g => sum of pad(t) * (1 - l[t, g-1] - a[t, g]) fits."""
        g, size, al = self.problem.graph, self.problem.sizes, self.problem.target.alignment

        def first_gap(o: str) -> int:  # from this gap on, o certainly ran before c_{gap-1}
            return self.pos[o] + 1 if o in self.pos else self.gap[o][1] + 1

        def last_gap(o: str) -> int:  # up to this gap, o certainly runs after c_gap
            return self.pos[o] if o in self.pos else self.gap[o][0] - 1

        span = {}
        for t, tt in g.tensors.items():
            if t in size and tt.consumers:
                starts = [tt.producer] if tt.producer else list(tt.consumers)
                span[t] = (starts, min(first_gap(s) for s in starts), max(last_gap(b) for b in tt.consumers))
        for k, (lo, hi) in self.gap.items():
            mine = set(self.problem.tensors_of(g.op(k)))
            need = sum(align_up(size[t], al) for t in mine)
            forced = {t for t, (starts, _, _) in span.items() if t not in mine
                      and any(anc[k] >> index[s] & 1 for s in starts)
                      and any(anc[b] >> index[k] & 1 for b in g.tensors[t].consumers)}
            for gp in range(lo, hi + 1):
                live = forced | {t for t, (_, b0, b1) in span.items() if b0 <= gp <= b1 and t not in mine}
                pad = {t: align_up(size[t], al) for t in live}
                big = need + sum(pad.values()) - cap
                if big <= 0:
                    continue
                (t1, c1), (t0, c0) = self.before(k, gp), self.before(k, gp - 1)
                terms = _lin((big, t1), (-big, t0))
                for t in live:
                    terms[self._load(t, gp - 1)] = terms.get(self._load(t, gp - 1), 0) - pad[t]
                    if gp in self.absent.get(t, {}):
                        terms[self.absent[t][gp]] = -pad[t]
                # big * [k in gap gp] <= bytes of certainly-live tensors that are away from k
                self.model.row(f"capacity_{k}_{gp}", terms, hi=-big * (c1 - c0))

    def order_of(self, x: list[int], tie: list[str]) -> list[str]:
        """A topological order that respects the solution's gaps; `tie` orders each gap."""
        rank = {o: i for i, o in enumerate(tie)}
        key: dict[str, tuple[int, int, int]] = {}
        for j, c in enumerate(self.chain):
            key[c] = (j, 1, rank[c])
        for o, (lo, hi) in self.gap.items():
            k = next((j for j in range(lo, hi) if x[self.d[o, j]] > 0), hi)
            key[o] = (k, 0, rank[o])
        return _topological(self.problem, key)


def _topological(problem: Problem, key: dict) -> list[str]:
    """Kahn's algorithm, always taking the ready op of least key."""
    import heapq

    g = problem.graph
    preds = {o.name: {g.tensors[t].producer for t in o.inputs} - {None} for o in g.ops}
    succ: dict[str, list[str]] = {o.name: [] for o in g.ops}
    for o, ps in preds.items():
        for p in ps:
            succ[p].append(o)
    left = {o: len(ps) for o, ps in preds.items()}
    ready = [(key[o], o) for o, n in left.items() if n == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        _, o = heapq.heappop(ready)
        out.append(o)
        for v in succ[o]:
            left[v] -= 1
            if left[v] == 0:
                heapq.heappush(ready, (key[v], v))
    return out
