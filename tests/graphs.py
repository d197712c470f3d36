"""Small graphs for tests, built inline: `build` from (op, inputs, outputs) rows, and a
Hypothesis strategy for random DAGs. Sizes are bytes at uint8, so nbytes == numel."""
from __future__ import annotations

import itertools

import networkx as nx
from hypothesis import strategies as st

from planner.ir import Graph, Op, Tensor
from planner.problem import Problem


def build(rows: list[tuple[str, list[str], list[str]]], sizes: dict[str, int], *, weights: tuple[str, ...] = (),
          outputs: list[str] | None = None, name: str = "g") -> Graph:
    """A linted graph. Tensors never produced are inputs (or weights if listed); outputs
    default to the tensors nobody reads."""
    produced = {t: op for op, _, outs in rows for t in outs}
    read = {t for _, ins, _ in rows for t in ins}
    outputs = outputs if outputs is not None else [t for t in produced if t not in read]
    tensors: dict[str, Tensor] = {}
    for op, ins, outs in rows:
        for t in ins + outs:
            if t not in tensors:
                kind = "weight" if t in weights else "input" if t not in produced else (
                    "output" if t in outputs else "activation")
                tensors[t] = Tensor(t, (sizes[t],), "uint8", sizes[t], kind, produced.get(t))
        for t in ins:
            tensors[t].consumers.append(op)
    ops = [Op(op, "Test", list(ins), list(outs), flops=100 * sum(sizes[t] for t in outs)) for op, ins, outs in rows]
    inputs = [t for t, v in tensors.items() if v.kind == "input"]
    return Graph(name, tensors, ops, inputs, outputs).lint()


def chain(sizes: list[int]) -> Graph:
    """x0 -op1-> x1 -op2-> ... with x_i of sizes[i] bytes."""
    rows = [(f"op{i}", [f"x{i - 1}"], [f"x{i}"]) for i in range(1, len(sizes))]
    return build(rows, {f"x{i}": s for i, s in enumerate(sizes)})


@st.composite
def random_dags(draw, max_ops: int = 12, max_size: int = 512, alignment: int = 1) -> Graph:
    """Random DAGs: each op reads 1-3 earlier tensors (or a fresh input), writes 1-2."""
    n = draw(st.integers(1, max_ops))
    sizes: dict[str, int] = {}
    rows = []
    available: list[str] = []
    size = st.integers(1, max_size // alignment).map(lambda k: k * alignment)
    for i in range(n):
        k = draw(st.integers(1, 3))
        ins: list[str] = []
        for j in range(k):
            if available and draw(st.booleans()):
                t = draw(st.sampled_from(available))
            else:
                t = f"in{i}_{j}"
                sizes[t] = draw(size)
            if t not in ins:
                ins.append(t)
        outs = [f"t{i}_{j}" for j in range(draw(st.integers(1, 2)))]
        for t in outs:
            sizes[t] = draw(size)
        available += outs
        rows.append((f"op{i}", ins, outs))
    return build(rows, sizes)


def brute_force_m_p(p: Problem) -> int:
    """The least peak over (up to 50,000) topological orders, by enumeration: the oracle for
    the min-peak DP and scheduler."""
    from planner.bounds import peak_bytes

    dag = nx.DiGraph()
    dag.add_nodes_from(o.name for o in p.graph.ops)
    for o in p.graph.ops:
        for t in o.inputs:
            if p.graph.tensors[t].producer:
                dag.add_edge(p.graph.tensors[t].producer, o.name)
    return min(peak_bytes(p, list(order)) for order in itertools.islice(nx.all_topological_sorts(dag), 50_000))
