"""The planning problem a solver receives: a graph, a target whose capacity is the
budget, and the options of DESIGN §3. Precondition for every solver: the graph is linted,
views are folded, and sizes are taken after the target's dtype overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from planner.ir import Bytes, Graph, Op, Target


def align_up(n: Bytes, alignment: Bytes) -> Bytes:
    return -(-n // alignment) * alignment


@dataclass
class Problem:
    graph: Graph
    target: Target  # target.capacity is the budget
    fixed_order: bool = False  # keep the graph's op order
    allow_recompute: bool = False  # lost activations may come back by recomputing
    recompute_weight: float = 0.0  # objective bytes charged per recomputed FLOP
    sizes: dict[str, Bytes] = field(init=False)  # tracked tensors only, bytes in fast memory

    def __post_init__(self) -> None:
        self.sizes = {n: self.target.size(t) for n, t in self.graph.tensors.items() if self.target.tracks(t)}

    @property
    def capacity(self) -> Bytes:
        return self.target.capacity

    def portable(self) -> Problem:
        """The problem with ops stripped of their `fn` (torch callables do not pickle), to
        ship to another process."""
        ops = [Op(o.name, o.type, list(o.inputs), list(o.outputs), o.flops) for o in self.graph.ops]
        return Problem(dataclasses.replace(self.graph, ops=ops), self.target, self.fixed_order,
                       self.allow_recompute, self.recompute_weight)

    def tensors_of(self, op: Op) -> list[str]:
        """The tracked tensors `op` needs resident when it computes: inputs, then outputs."""
        return [t for t in op.inputs + op.outputs if t in self.sizes]

    def footprint(self, op: Op) -> Bytes:
        """Bytes `op` needs in fast memory, each tensor but the last padded to the
        alignment (the last one need not be): the capacity below which `op` cannot run."""
        sizes = [self.sizes[t] for t in self.tensors_of(op)]
        if not sizes:
            return 0
        a = self.target.alignment
        padded = [align_up(s, a) for s in sizes]
        return sum(padded) - max(p - s for p, s in zip(padded, sizes))

    def compulsory_bytes(self) -> Bytes:
        """First load of every used input/weight + one store of every output (DESIGN §3)."""
        total = 0
        for n, s in self.sizes.items():
            t = self.graph.tensors[n]
            if t.kind in ("input", "weight") and t.consumers:
                total += s
            elif t.kind == "output":
                total += s
        return total
