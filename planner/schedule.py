"""Min-peak operator schedules (M_P) for large irregular graphs.

Preconditions: a linted graph, views folded; sizes are the problem's. Live bytes of an
order are `planner.bounds.live_bytes`'s: a tensor is resident from its first use to its
last, and the peak is the largest "during" value of any op.

The method is hierarchical, in the Serenity (arXiv 2003.02369) / HMCOS (DAC'22) line:

1. **Forced cuts.** An op that is an ancestor or a descendant of every other op runs at
   the same position in every order, so it splits the graph into segments that can be
   ordered independently; the peak is the largest segment peak.
2. **Exact DP per segment.** Serenity's dynamic programme over the sets of ops already
   scheduled (the live bytes after a set do not depend on the order inside it). It is
   exact unless a level outgrows `beam`.
3. **Windows, where the DP explodes.** Start from the best heuristic order on the
   segment (file order, reverse post-order, a memory-aware greedy list scheduler) and
   re-order windows of consecutive ops exactly with the same DP. The ops before a window
   form a fixed set, so the live bytes at its two ends do not depend on its inner order:
   each window's peak is independent of the others, and windows are slid and regrown
   while the critical one improves. The result never exceeds the starting orders' peaks.

         order  a b c | d e f g | h i       window [d, g): prefix {a, b, c} fixed,
         live   . . . | ? ? ? ? | . .       so only d..g's own peak can change

The peak is labelled exact when every segment's DP finished within its beam, or when it
equals the simple lower bound (the most bytes one op touches); otherwise it is an upper
bound on M_P.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from planner.ir import Bytes
from planner.problem import Problem


@dataclass
class Result:
    peak: Bytes  # the best no-spill peak found
    order: list[str]  # a schedule reaching it
    exact: bool  # True: peak is M_P; False: an upper bound on M_P
    states: int  # sets of ops explored by the DPs
    seconds: float
    method: str  # how the peak was reached: "dp", "segments", "windows"


class _Dag:
    """Index form of a problem's graph: ops by index, tensors by index, their links."""

    def __init__(self, problem: Problem):
        g = problem.graph
        self.names = [o.name for o in g.ops]
        index = {n: i for i, n in enumerate(self.names)}
        tensors = list(problem.sizes)
        tindex = {t: k for k, t in enumerate(tensors)}
        self.size = [problem.sizes[t] for t in tensors]
        self.producer = [index[g.tensors[t].producer] if g.tensors[t].producer else -1 for t in tensors]
        self.consumers = [[index[c] for c in g.tensors[t].consumers] for t in tensors]
        self.ins = [[tindex[t] for t in o.inputs if t in tindex] for o in g.ops]
        self.outs = [[tindex[t] for t in o.outputs if t in tindex] for o in g.ops]
        self.preds = [sorted({index[g.tensors[t].producer] for t in o.inputs if g.tensors[t].producer}) for o in g.ops]
        self.succs: list[list[int]] = [[] for _ in g.ops]
        for i, ps in enumerate(self.preds):
            for p in ps:
                self.succs[p].append(i)

    def __len__(self) -> int:
        return len(self.names)

    def live(self, order: list[int]) -> list[Bytes]:
        """Live bytes during each op of `order` (a full topological order)."""
        pos = [0] * len(self)
        for k, i in enumerate(order):
            pos[i] = k
        delta = [0] * (len(order) + 1)
        for t, s in enumerate(self.size):
            uses = [pos[c] for c in self.consumers[t]] + ([pos[self.producer[t]]] if self.producer[t] >= 0 else [])
            if uses:
                delta[min(uses)] += s
                delta[max(uses) + 1] -= s
        out, run = [], 0
        for d in delta[:-1]:
            run += d
            out.append(run)
        return out

    def lower_bound(self) -> Bytes:
        """The most bytes one op touches (unpadded): no order has a lower peak."""
        return max((sum(self.size[t] for t in set(self.ins[i] + self.outs[i])) for i in range(len(self))), default=0)


def min_peak(problem: Problem, beam: int = 20_000, time_limit: float | None = 60.0, window: int = 32,
             prove_max_ops: int = 1000) -> Result:
    """The least no-spill peak found and an order reaching it (see the module docstring).

    Parameters
    ----------
    problem : graph and target (the capacity is not used).
    beam : most sets kept per DP level; past it the DP keeps the best and is inexact
        (a tenth of it in the windows, which are a heuristic anyway).
    time_limit : seconds; the windows stop improving when it runs out.
    window : ops per window in step 3 (doubled once while time remains).
    prove_max_ops : largest segment the full DP tries to prove optimal after the windows
        (past a thousand ops it only ever runs out of beam).

    Returns
    -------
    Result, `exact` telling whether `peak` is M_P or an upper bound.

    Examples
    --------
    >>> from tests.graphs import build
    >>> from planner.ir import Target
    >>> g = build([("a", ["x"], ["y"]), ("b", ["y"], ["big"]), ("c", ["y"], ["small"]),
    ...            ("e", ["big"], ["big2"]), ("d", ["big2", "small"], ["z"])],
    ...           {"x": 1, "y": 10, "big": 100, "small": 5, "big2": 1, "z": 1})
    >>> r = min_peak(Problem(g, Target("t", 10**6, alignment=1)))
    >>> r.peak, r.order, r.exact
    (111, ['a', 'b', 'e', 'c', 'd'], True)
    """
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    dag = _Dag(problem)
    n = len(dag)
    if n == 0:
        return Result(0, [], True, 0, 0.0, "dp")
    starts = [list(range(n)), reverse_post_order(dag), greedy_order(dag)]
    # per segment, the heuristic order of least peak, then windows where it is large
    parts: list[list[int]] = []
    states, windows_used = 0, False
    segments = forced_segments(dag, starts[0])
    for seg in segments:
        prefix = [i for p in parts for i in p]
        members = set(seg)
        sub = min(([i for i in s if i in members] for s in starts), key=lambda c: _peak_of(dag, prefix, c))
        if len(seg) > window:
            windows_used = True
            sub, k = _improve_windows(dag, prefix, sub, max(1, beam // 10), window, deadline)
            states += k
        parts.append(sub)
    # M_P is the largest segment optimum: proving the critical segments optimal suffices,
    # since every other segment already runs below their peak.
    peaks = [_peak_of(dag, [i for p in parts[:j] for i in p], part) for j, part in enumerate(parts)]
    exact = True
    for j, part in enumerate(parts):
        if peaks[j] < max(peaks) or len(part) == 1:
            continue
        if len(part) > prove_max_ops:
            exact = False
            continue
        prefix = [i for p in parts[:j] for i in p]
        sub, ok, k = _dp(dag, prefix, part, beam, deadline, give_up=len(part) > window)
        states += k
        exact = exact and ok
        parts[j] = sub
    order = [i for p in parts for i in p]
    peak = max(dag.live(order))
    if not exact and peak <= dag.lower_bound():
        exact = True
    method = "windows" if windows_used else ("segments" if len(segments) > 1 else "dp")
    return Result(peak, [dag.names[i] for i in order], exact, states, time.perf_counter() - t0, method)


def _rest(n: int, prefix: list[int], part: list[int]) -> list[int]:
    """The ops in neither list, in index order: completes an order for scoring a part."""
    seen = set(prefix) | set(part)
    return [i for i in range(n) if i not in seen]


def reverse_post_order(dag: _Dag) -> list[int]:
    """Reverse post-order of a depth-first search from the sources, children in file
    order: the usual compiler order, and the reference HMCOS compares against."""
    seen = [False] * len(dag)
    post: list[int] = []
    for root in reversed(range(len(dag))):
        if seen[root] or dag.preds[root]:
            continue
        seen[root] = True
        stack = [(root, iter(reversed(dag.succs[root])))]
        while stack:
            v, it = stack[-1]
            child = next((c for c in it if not seen[c]), None)
            if child is None:
                post.append(v)
                stack.pop()
            else:
                seen[child] = True
                stack.append((child, iter(reversed(dag.succs[child]))))
    return post[::-1]


def greedy_order(dag: _Dag) -> list[int]:
    """Memory-aware list scheduling: among the ready ops, run the one whose step needs
    the fewest live bytes, ties to the one that frees the most, then file order."""
    n = len(dag)
    waiting = [len(p) for p in dag.preds]
    left = [len(c) for c in dag.consumers]  # consumers of each tensor not yet run
    started = [False] * len(dag.size)
    ready = {i for i in range(n) if waiting[i] == 0}
    live, order = 0, []
    while ready:
        def cost(i: int) -> tuple[int, int, int]:
            new = sum(dag.size[t] for t in dag.ins[i] if not started[t]) + sum(dag.size[t] for t in dag.outs[i])
            freed = sum(dag.size[t] for t in dag.ins[i] if left[t] == 1) + sum(
                dag.size[t] for t in dag.outs[i] if not dag.consumers[t])
            return (live + new, -(freed - new), i)

        i = min(ready, key=cost)
        ready.remove(i)
        order.append(i)
        for t in dag.ins[i] + dag.outs[i]:
            if not started[t]:
                started[t] = True
                live += dag.size[t]
        for t in dag.ins[i]:
            left[t] -= 1
            if left[t] == 0:
                live -= dag.size[t]
        for t in dag.outs[i]:
            if not dag.consumers[t]:
                live -= dag.size[t]
        for s in dag.succs[i]:
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.add(s)
    return order


def forced_segments(dag: _Dag, topo: list[int]) -> list[list[int]]:
    """Splits `topo` at forced cuts: ops that are ancestors or descendants of all others.

    With `topo` a topological order, the op at position p is a forced cut exactly when
    it has p ancestors and n - 1 - p descendants. Returns the runs between cuts and each
    cut on its own, in order.
    """
    n = len(dag)
    anc = [0] * n
    for i in topo:
        a = 0
        for p in dag.preds[i]:
            a |= anc[p] | (1 << p)
        anc[i] = a
    desc = [0] * n
    for i in reversed(topo):
        d = 0
        for s in dag.succs[i]:
            d |= desc[s] | (1 << s)
        desc[i] = d
    out: list[list[int]] = []
    run: list[int] = []
    for p, i in enumerate(topo):
        if anc[i].bit_count() == p and desc[i].bit_count() == n - 1 - p:
            if run:
                out.append(run)
            out.append([i])
            run = []
        else:
            run.append(i)
    if run:
        out.append(run)
    return out


def _dp(dag: _Dag, prefix: list[int], part: list[int], beam: int, deadline: float | None,
        give_up: bool = False) -> tuple[list[int], bool, int]:
    """The order of `part` (ops that follow `prefix` in some topological order) of least
    peak, by Serenity's DP over scheduled subsets. `part` itself is the incumbent: sets
    whose peak reaches its peak are pruned. When a level outgrows `beam` (or time runs
    out) the best sets are kept and the result is inexact; with `give_up` the incumbent
    is returned at once instead (a proof attempt). Returns (order, exact, states)."""
    m = len(part)
    pred, succ, fresh, outs, touch, base = _prepare(dag, prefix, part)
    incumbent = _part_peak(base, fresh, outs, touch)
    level: dict[int, tuple[int, int, tuple[int, ...]]] = {0: (0, base, tuple(k for k in range(m) if pred[k] == 0))}
    parents: list[dict[int, tuple[int, int]]] = []
    exact, states = True, 0
    for _ in range(m):
        nxt: dict[int, tuple[int, int, tuple[int, ...]]] = {}
        back: dict[int, tuple[int, int]] = {}
        for mask, (pk, live, ready) in level.items():
            for k in ready:
                done = mask | (1 << k)
                during = live + outs[k] + sum(s for s, c in fresh[k] if not c & mask)
                p = pk if pk > during else during
                if p >= incumbent:
                    continue
                old = nxt.get(done)
                if old is not None and old[0] <= p:
                    continue
                dead = sum(s for s, c in touch[k] if not c & ~done)
                rdy = tuple(j for j in ready if j != k) + tuple(j for j in succ[k] if not pred[j] & ~done)
                nxt[done] = (p, during - dead, rdy)
                back[done] = (mask, k)
        states += len(nxt)
        if len(nxt) > beam or (deadline is not None and time.perf_counter() > deadline):
            exact = False
            if give_up:
                return part, False, states
            keep = sorted(nxt, key=lambda s: (nxt[s][0], nxt[s][1]))[:beam if len(nxt) > beam else 1]
            nxt = {s: nxt[s] for s in keep}
        parents.append(back)
        level = nxt
        if not level:
            return part, exact, states  # nothing beats the incumbent (proven when exact)
    (mask, _), = level.items()
    out = []
    for back in reversed(parents):
        mask, k = back[mask]
        out.append(part[k])
    return out[::-1], exact, states


def _prepare(dag: _Dag, prefix: list[int], part: list[int]):
    """What the DP needs about `part`, by local index k (bit k of a mask):
    pred[k] / succ[k]  predecessors (mask) and successors (list) inside the part;
    fresh[k]   (size, consumers-in-part mask) of graph inputs op k may be first to use;
    outs[k]    bytes op k writes;
    touch[k]   (size, consumers-in-part mask) of op k's tensors that die inside the part
               once every consumer in it has run (none reads them after the part);
    base       bytes live between the prefix and the part."""
    local = {v: k for k, v in enumerate(part)}
    before, inside = set(prefix), set(part)

    def mask(t: int) -> int:
        return sum(1 << local[c] for c in dag.consumers[t] if c in inside)

    pred = [sum(1 << local[p] for p in dag.preds[v] if p in inside) for v in part]
    succ = [[local[s] for s in dag.succs[v] if s in inside] for v in part]
    fresh = [[(dag.size[t], mask(t)) for t in dag.ins[v]
              if dag.producer[t] < 0 and not any(c in before for c in dag.consumers[t])] for v in part]
    outs = [sum(dag.size[t] for t in dag.outs[v]) for v in part]
    touch = [[(dag.size[t], mask(t)) for t in set(dag.ins[v] + dag.outs[v])
              if all(c in inside or c in before for c in dag.consumers[t])] for v in part]
    return pred, succ, fresh, outs, touch, _crossing(dag, prefix)


def _peak_of(dag: _Dag, prefix: list[int], part: list[int]) -> Bytes:
    """The peak of `part` run in its given order right after `prefix`."""
    _, _, fresh, outs, touch, base = _prepare(dag, prefix, part)
    return _part_peak(base, fresh, outs, touch)


def _crossing(dag: _Dag, prefix: list[int]) -> Bytes:
    """Bytes live between `prefix` and the rest: started by the prefix, used after it."""
    before = set(prefix)
    total = 0
    seen: set[int] = set()
    for v in prefix:
        for t in dag.ins[v] + dag.outs[v]:
            if t not in seen:
                seen.add(t)
                if any(c not in before for c in dag.consumers[t]):
                    total += dag.size[t]
    return total


def _part_peak(base: int, fresh, outs, touch) -> int:
    """The peak of a prepared part in its given order, with the DP's accounting."""
    live, peak, mask = base, 0, 0
    for k in range(len(outs)):
        during = live + outs[k] + sum(s for s, c in fresh[k] if not c & mask)
        mask |= 1 << k
        peak = max(peak, during)
        live = during - sum(s for s, c in touch[k] if not c & ~mask)
    return peak


def _improve_windows(dag: _Dag, prefix: list[int], part: list[int], beam: int, window: int,
                     deadline: float | None) -> tuple[list[int], int]:
    """Re-orders windows of `part` exactly (see step 3 of the module docstring), the
    critical windows first, sliding the cut points and doubling the window once, until
    the peak stops improving or time runs out. Returns the order and the DP states."""
    order = list(part)
    states = 0
    pre = len(prefix)
    rest = _rest(len(dag), prefix, order)
    for w in (window, 2 * window):
        last = None
        while True:
            peak = max(dag.live(prefix + order + rest)[pre:pre + len(order)])
            if last is not None and peak >= last:
                break  # a whole round of shifts left the peak where it was
            last = peak
            for shift in (0, w // 2, w // 4, 3 * w // 4):
                if deadline is not None and time.perf_counter() > deadline:
                    return order, states
                live = dag.live(prefix + order + rest)[pre:pre + len(order)]
                peak = max(live)
                cuts = sorted({0, len(order)} | set(range(shift, len(order), w)))
                for lo, hi in zip(cuts, cuts[1:]):
                    if max(live[lo:hi]) < peak:
                        continue  # speed only: the peak lies elsewhere
                    sub, _, k = _dp(dag, prefix + order[:lo], order[lo:hi], beam, deadline)
                    states += k
                    order[lo:hi] = sub
    return order, states
