"""torch.fx -> planner IR: a linted `Graph`, plus the weight values an executor needs.

Two ways in. `lower_module` exports an nn.Module with `torch.export` (ATen ops such as
aten.conv2d, aten.linear, aten.batch_norm); `lower_graph_module` takes the torch-level
GraphModule that torch.compile hands a backend (or one from symbolic_trace) and sizes it
with ShapeProp on the example inputs. Both return a `Lowered`; `load_module` and
`load_graph_module` return its graph alone. `run_graph` runs a lowered graph op by op.

What happens to the fx nodes, in the order `_Lowering.run` takes them (steps 1-4 rewrite
the fx graph, in `frontends.fx_rewrites`; the node-level rules and tables are in
`frontends.fx_rules`):

1. call_module nodes become calls whose parameters are explicit weight tensors.
2. In-place ops (relu_, add_, x += y, F.relu(inplace=True)) run out of place and later
   readers of the mutated tensor read the result: the planner reorders ops, so a mutation
   must be a new tensor. A mutated graph input or buffer is not written back.
3. fold_bn: eval-mode batch norm right after a conv or a 2-D linear is folded into that
   op's weights (torch.nn.utils.fusion), as torch.onnx.export does, when the conv feeds
   only the batch norm and its weights and the batch norm's statistics are all weights.
4. decompose_attention: scaled_dot_product_attention becomes the transpose, scalings,
   matmuls and softmax the ONNX exporter writes for it (`Rewrites.decompose_attention`);
   otherwise it is one op, as torch's fused kernel runs it.
5. Each node becomes one of
   - a duplicate: it computes what an earlier node does (same target and arguments, small
     constants compared by value), so it is merged into that node, as the ONNX exporter's
     optimizer does (DARTS-like cells apply relu(s) once per reader of s);
   - an input (a user placeholder) or a weight (parameter, buffer, lifted constant, get_attr);
   - a constant: a node reading only weights and constants is evaluated now, giving a
     new weight (a tensor) or a value substituted into its readers (an int, a shape);
   - a folded view (DESIGN §3): view, reshape, flatten, unflatten, squeeze, unsqueeze,
     alias, detach, clone, contiguous, dtype-preserving to(), eval-mode dropout, and a
     slice, expand or cat that keeps the shape. It enters `Graph.views` aliasing its base
     and ops read the base. Every folded view keeps its base's elements in row-major
     order, so its value is `base.reshape(view.shape)`; executors need nothing else.
     Transpose, permute, t, expand, select and slice stay ops, as their ONNX twins do, so
     both frontends count the same bytes;
   - one output of a multi-output op (getitem of its tuple), or an op.
6. Ops with no path to a graph output are dropped; so are weights nothing reads.
7. fuse: epilogues fold into the conv/linear/matmul before them (`_Lowering.fuse`), with
   the ONNX frontend's rule, so both routes give the same bytes and M_R.

Each Op keeps a callable in `Op.fn`: called with the values of `Op.inputs`, it returns the
values of `Op.outputs` as a tuple, rebuilding folded views and running fused chains inside
(activations in place on the anchor's output, so a fused op holds no tensor the plan does
not count). Unused outputs of multi-output ops are not tensors.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from dataclasses import dataclass
from typing import Any, Callable, Collection

import torch
from torch.fx import Graph as FxGraph
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate, map_arg
from torch.fx.passes.shape_prop import ShapeProp

from planner.frontends.fx_rewrites import Rewrites
from planner.frontends.fx_rules import (ACTIVATIONS, AFFINE, ANCHORS, BATCH_NORMS, DATA_DEPENDENT, DROPOUTS, NO_OP_MOVES,
                                SMALL, VIEWS, Meta, ModuleCall, Ref, arg_of, callable_of, canon, data_arg, flops,
                                in_place, is_random, meta_of, run_steps, type_name)
from planner.errors import BadInput, UnsupportedModel
from planner.ir import Graph, GraphError, Op, Tensor

__all__ = ["Lowered", "lower_module", "load_module", "lower_graph_module", "load_graph_module", "run_graph"]


@dataclass
class Lowered:
    """A lowered model: the planner's graph and what running it needs beyond the inputs."""

    graph: Graph
    weights: dict[str, torch.Tensor]  # every weight tensor of `graph`, by name; shares storage with the
    # module's parameters and buffers except for folded weights (batch norm, constants), computed once
    outputs: list[str]  # one name per flattened model output, in order, repeats kept (graph.outputs: each once)


def lower_module(module: torch.nn.Module, example_inputs: tuple, *, fuse: bool = False, fold_bn: bool = True,
                 decompose_attention: bool = False, name: str | None = None) -> Lowered:
    """Exports `module` with torch.export and lowers the ATen graph.

    The module runs in whatever train/eval mode the caller left it in; call `module.eval()`
    first for inference (eval-mode dropout is a view and batch norm can fold; in train mode
    both are ops, and batch norm's running statistics are not written back).

    Parameters
    ----------
    module : the model; not modified.
    example_inputs : positional tensors; their shapes are the shapes planned (no dynamic dims).
    fuse : fold batch norm and activations into the conv/linear/matmul before them.
    fold_bn : fold eval-mode batch norm into the weights of the conv or linear before it,
        as torch.onnx.export does; False keeps it an op (what eager PyTorch runs).
    decompose_attention : lower scaled_dot_product_attention as the ops torch.onnx.export
        writes for it (K transposed, q and k scaled, scores, softmax, matmul with v), whose
        intermediates an accelerator holds; False keeps it one op, as a GPU's fused kernel.
    name : Graph.name; default the module's class name.

    Returns
    -------
    Lowered : the linted graph, the weight values by tensor name, the output names.

    Raises
    ------
    UnsupportedModel : torch.export cannot capture the model (data-dependent control flow,
        ...), or an output is an input or a constant, or an op reads a whole tuple.
    BadInput : a dynamic shape, an empty input (empty results are constants).

    Examples
    --------
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
    >>> low = lower_module(m, (torch.randn(2, 4),), fuse=True)
    >>> [(op.type, op.inputs, op.outputs, op.flops) for op in low.graph.ops]
    [('aten.linear+aten.relu', ['input', 'p_0_weight', 'p_0_bias'], ['relu'], 144)]
    >>> sorted(low.weights), low.graph.tensors["relu"].nbytes
    (['p_0_bias', 'p_0_weight'], 64)
    """
    name = name or type(module).__name__
    try:
        ep = torch.export.export(module, tuple(example_inputs))
    except Exception as e:
        raise UnsupportedModel(f"torch.export cannot capture {name}: {_first_line(e)}") from e
    g = _copy(ep.graph_module.graph)
    sig, kinds = ep.graph_signature, torch.export.graph_signature
    low = _Lowering(g, ep.graph_module, name)
    specs = {s.arg.name: s for s in sig.input_specs if isinstance(s.arg, kinds.TensorArgument)}
    weights = (kinds.InputKind.PARAMETER, kinds.InputKind.BUFFER, kinds.InputKind.CONSTANT_TENSOR)
    for node in g.nodes:
        if node.op == "output":
            continue
        low.meta[node] = meta_of(node.meta.get("val"), f"{_role(node)} {node.name!r}")
        spec = specs.get(node.name) if node.op == "placeholder" else None
        if spec is not None and spec.kind in weights:
            low.values[node] = (ep.constants if spec.target in ep.constants else ep.state_dict)[spec.target]
        elif spec is not None and spec.kind != kinds.InputKind.USER_INPUT:
            raise UnsupportedModel(f"{name}: input {node.name!r} is a {spec.kind.name.lower()}, which the planner"
                                   " cannot lower")
        elif node.op == "placeholder" and isinstance(low.meta[node], Meta):
            low.inputs.append(node)
        elif node.op == "placeholder":
            low.values[node] = low.meta[node]  # an int or a flag export specialised on
    outputs = []
    for spec in sig.output_specs:
        if spec.kind == kinds.OutputKind.USER_INPUT_MUTATION:
            raise UnsupportedModel(f"{name} writes into its input {spec.target!r}; the planner cannot keep that")
        if spec.kind in (kinds.OutputKind.USER_OUTPUT, kinds.OutputKind.LOSS_OUTPUT):
            outputs.append(spec.arg.name if isinstance(spec.arg, kinds.TensorArgument) else None)
    by_name = {n.name: n for n in g.nodes}
    return low.run([by_name.get(o) if o else None for o in outputs], fuse=fuse, fold_bn=fold_bn,
                   decompose_attention=decompose_attention)


def load_module(module: torch.nn.Module, example_inputs: tuple, *, fuse: bool = False, fold_bn: bool = True,
                decompose_attention: bool = False, name: str | None = None) -> Graph:
    """`lower_module(...).graph`: the linted planner Graph of `module`."""
    return lower_module(module, example_inputs, fuse=fuse, fold_bn=fold_bn, decompose_attention=decompose_attention,
                        name=name).graph


def lower_graph_module(gm: GraphModule, example_inputs: list | tuple, *, fuse: bool = False, fold_bn: bool = True,
                       decompose_attention: bool = False, weight_inputs: Collection[int] = (),
                       name: str | None = None, specialize: bool = False) -> Lowered:
    """Lowers a GraphModule as torch.compile hands it to a backend (torch-level call_function,
    call_method, call_module and get_attr nodes) or as symbolic_trace makes it.

    Shapes come from ShapeProp on `example_inputs` (FakeTensors work too). Placeholders are
    inputs, including the parameters and buffers dynamo lifts to placeholders, unless listed
    in `weight_inputs`; get_attr tensors and the parameters of called submodules are weights.
    `gm` is not modified.

    Parameters
    ----------
    gm, example_inputs : the graph and one value per placeholder.
    fuse, fold_bn, decompose_attention : as for `lower_module`.
    weight_inputs : positions in `example_inputs` holding parameters or buffers (dynamo's
        placeholder meta "grapharg" names their source). They become weights, their current
        values constants: batch norm can fold and epilogues fuse, but later updates to them
        (training) are not seen; leave this empty when the values will change.
    name : Graph.name; default "graph_module".
    specialize : take every size from `example_inputs` (real tensors and ints), ignoring the
        symbolic sizes dynamo declared on the placeholders: a graph captured with dynamic
        shapes, lowered for one concrete shape (frontends.dynamo plans each shape it sees).

    Returns
    -------
    Lowered : as for `lower_module`.

    Raises
    ------
    BadInput : a dynamic shape (compile with dynamic=False), wrong example inputs.
        Empty tensors (inputs or results) are constants, made from their shape alone.
    UnsupportedModel : an output that is an input or a constant, a non-tensor output,
        an in-place op writing through a view, an op reading a whole tuple.
    """
    name = name or "graph_module"
    g = _copy(gm.graph)
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise BadInput(f"{name} has {len(placeholders)} placeholders but {len(example_inputs)} example inputs")
    declared = [None if specialize else n.meta.get("example_value", n.meta.get("val")) for n in placeholders]
    for node, d in zip(placeholders, declared):
        if isinstance(d, torch.Tensor):
            meta_of(d, f"input {node.name!r}")  # raises on a dynamic dim, naming the input
    for node, d, x in zip(placeholders, declared, example_inputs):
        if isinstance(x, torch.SymInt) or isinstance(d, torch.SymInt):
            raise BadInput(f"input {node.name!r} is a symbolic size: the graph has dynamic shapes;"
                           " compile with dynamic=False")
    owner = GraphModule(gm, g)
    prop = _ShapeProp(owner, fake_mode=torch._guards.detect_fake_mode(list(example_inputs)))
    try:
        prop.propagate(*example_inputs)
    except Exception as e:
        raise BadInput(f"{name} does not run on its example inputs: {_first_line(e.__cause__ or e)}") from e
    device = next((x.device for x in example_inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
    low = _Lowering(g, owner, name, device)
    for node in g.nodes:
        if node.op == "output":
            continue
        low.meta[node] = meta_of(node.meta["tensor_meta"] if "tensor_meta" in node.meta
                                  else prop.values.get(node), f"{_role(node)} {node.name!r}")
    for k, node in enumerate(placeholders):
        m = low.meta[node]
        if isinstance(m, Meta) and m.numel == 0:  # no bytes to plan: every empty value of this shape is the same
            low.values[node] = torch.empty(m.shape, dtype=m.dtype, device=example_inputs[k].device)
        elif isinstance(m, Meta) and k not in weight_inputs:
            low.inputs.append(node)
        else:
            low.values[node] = example_inputs[k]
    out = next(n for n in g.nodes if n.op == "output")
    flat: list[Any] = []
    map_aggregate(out.args[0], flat.append)
    return low.run([a if isinstance(a, Node) else None for a in flat], fuse=fuse, fold_bn=fold_bn,
                   decompose_attention=decompose_attention)


def load_graph_module(gm: GraphModule, example_inputs: list | tuple, *, fuse: bool = False, fold_bn: bool = True,
                      decompose_attention: bool = False, weight_inputs: Collection[int] = (),
                      name: str | None = None) -> Graph:
    """`lower_graph_module(...).graph`: the linted planner Graph of `gm`."""
    return lower_graph_module(gm, example_inputs, fuse=fuse, fold_bn=fold_bn, decompose_attention=decompose_attention,
                              weight_inputs=weight_inputs, name=name).graph


def run_graph(graph: Graph, inputs: dict[str, torch.Tensor],
              weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs the ops of `graph` in order and returns the value of each graph output.

    A reference executor: one loop over `graph.ops` calling `Op.fn`, each value dropped
    after its last reader, and output views rebuilt as `base.reshape(view.shape)`.

    Parameters
    ----------
    graph : a graph from this frontend (every op has `fn`).
    inputs : graph input name -> value.
    weights : weight name -> value, e.g. `Lowered.weights`.
    """
    env = {**weights, **inputs}
    keep = {graph.base(o) for o in graph.outputs}
    last = {t: k for k, op in enumerate(graph.ops) for t in op.inputs}
    for k, op in enumerate(graph.ops):
        env.update(zip(op.outputs, op.fn(*(env[t] for t in op.inputs))))
        for t in op.inputs:
            if last[t] == k and t not in keep:
                del env[t]
    return {o: env[o] if o not in graph.views else env[graph.base(o)].reshape(graph.views[o].shape)
            for o in graph.outputs}


def _role(n: Node) -> str:
    return "input" if n.op == "placeholder" else "tensor"


def _has_tensor(meta: Any) -> bool:
    if isinstance(meta, (tuple, list)):
        return any(_has_tensor(m) for m in meta)
    return isinstance(meta, Meta)


def _copy(graph: FxGraph) -> FxGraph:
    """A private copy of `graph` (nodes, names, meta dicts), so rewrites never touch the caller's."""
    g: FxGraph = FxGraph()
    copies: dict[Node, Node] = {}
    g.output(g.graph_copy(graph, copies))
    for old, new in copies.items():
        new.name = old.name  # the copy renames builtins ("input" -> "input_1"), which fx never generates itself
    return g


class _ShapeProp(ShapeProp):
    """ShapeProp that also keeps the values of non-tensor nodes (sizes, dtypes), which readers need."""

    def __init__(self, gm: GraphModule, fake_mode: Any = None):
        super().__init__(gm, fake_mode)
        self.values: dict[Node, Any] = {}

    def run_node(self, n: Node) -> Any:
        n.meta.pop("tensor_meta", None)
        result = super().run_node(n)
        if "tensor_meta" not in n.meta:
            self.values[n] = result
        return result


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


class _Lowering(Rewrites):
    """One fx graph (a private copy) on its way to a planner Graph: the rewrites of `Rewrites`
    (meta, values, label), then `kind`, what `classify` made of each node, and the rest.
    """

    def __init__(self, g: FxGraph, owner: torch.nn.Module, name: str, device: torch.device | None = None):
        super().__init__(g, owner, name)
        self.device = device or torch.device("cpu")  # where empty results (constants) are made
        self.inputs: list[Node] = []
        self.kind: dict[Node, str] = {}  # "input", "const", "view", "item" (of a multi-output op), "op"
        self.root: dict[Node, Node] = {}  # folded view -> the node holding its bytes
        self.alive: set[Node] = set()

    def run(self, outputs: list[Node | None], *, fuse: bool, fold_bn: bool, decompose_attention: bool) -> Lowered:
        for k, o in enumerate(outputs):
            if o is None or not isinstance(self.meta.get(o), Meta):
                raise UnsupportedModel(f"{self.name}: output {k} is not a tensor; return tensors only")
        self.inline_modules()
        outputs = self.functionalize(outputs)
        if fold_bn:
            self.fold_batch_norm()
        if decompose_attention:
            self.decompose_attention()
        outputs = self.classify(outputs)
        groups = self.group(self.live(outputs))
        if fuse:
            groups = self.fuse(groups, outputs)
        return self.emit(groups, outputs)  # type: ignore[arg-type]

    # 5. what each node becomes ------------------------------------------------------------
    def classify(self, outputs: list[Node]) -> list[Node]:
        """Sets kind (and root, values) for every node by the rules of the module docstring, step 5,
        merging each node that computes what an earlier one does into it; returns `outputs` merged."""
        inputs, seen, same = set(self.inputs), {}, {}
        for n in list(self.g.nodes):
            if n.op in ("placeholder", "get_attr"):
                self.kind[n] = "input" if n in inputs else "const"
            if n.op in ("output", "placeholder", "get_attr"):
                continue
            key = None if is_random(n) else self._key(n)
            if key is not None and key in seen:
                same[n] = seen[key]
                n.replace_all_uses_with(seen[key])
                self.kind[n] = "merged"
            elif canon(n) in DATA_DEPENDENT:
                raise UnsupportedModel(f"{self.name}: {n.name!r} ({type_name(n)}) has a data-dependent result;"
                                       " the planner needs static shapes")
            elif not _has_tensor(self.meta.get(n)):
                self.kind[n], self.values[n] = "const", self.meta.get(n)  # sizes, dtypes, None
            elif self._is_empty(n):  # its value is its shape alone: a constant (HF caches start as tensor([]))
                m = self.meta[n]
                self.kind[n], self.values[n] = "const", torch.empty(m.shape, dtype=m.dtype, device=self.device)
            elif self._is_view(n):
                src = data_arg(n)
                self.kind[n], self.root[n] = "view", self.root.get(src, src)  # type: ignore[arg-type]
            elif all(self.kind[self.root.get(a, a)] == "const" for a in n.all_input_nodes) and not is_random(n):
                self.kind[n], self.values[n] = "const", self._evaluate(n)
            elif n.target is operator.getitem and not isinstance(self.meta[n.args[0]], Meta):  # type: ignore[index]
                self.kind[n] = "item"
            else:
                self.kind[n] = "op"
            if key is not None and n not in same:
                seen[key] = n
        return [same.get(o, o) for o in outputs]

    def _is_empty(self, n: Node) -> bool:
        """A tensor with no elements, made by an op with no side effect (in-place ops were
        made out of place by `functionalize`; random ops are left alone)."""
        m = self.meta.get(n)
        return isinstance(m, Meta) and m.numel == 0 and not is_random(n)

    def _key(self, n: Node) -> Any:
        """What `n` computes, as a hashable key (None when unhashable): its target and arguments,
        small constant tensors by value, as the ONNX exporter's optimizer compares them."""
        def arg(a: Any) -> Any:
            if isinstance(a, Node):
                v = self.values.get(a) if self.kind.get(a) == "const" else None
                if isinstance(v, torch.Tensor) and v.numel() <= SMALL:
                    return ("value", v.dtype, tuple(v.shape), tuple(v.flatten().tolist()))
                return a
            if isinstance(a, (list, tuple)):
                return (type(a).__name__, *map(arg, a))
            if isinstance(a, dict):
                return tuple(sorted((k, arg(v)) for k, v in a.items()))
            if isinstance(a, slice):
                return ("slice", arg(a.start), arg(a.stop), arg(a.step))
            return a
        key = (n.op, n.target, arg(n.args), arg(n.kwargs))
        try:
            hash(key)
        except TypeError:
            return None
        return key

    def _is_view(self, n: Node) -> bool:
        """Folded views (DESIGN §3): a copy or reshape of its first argument, same dtype, same
        elements in row-major order, reading no other tensor (but the shape of view_as's)."""
        name, src = canon(n), data_arg(n)
        if name not in VIEWS | DROPOUTS | NO_OP_MOVES or src is None:
            return False
        out = self.meta.get(n)
        into = self.meta.get(src)
        if not isinstance(out, Meta) or not isinstance(into, Meta) or \
                (out.dtype, out.numel) != (into.dtype, into.numel):
            return False
        others = [a for a in n.all_input_nodes if a is not src and isinstance(self.meta.get(a), Meta)]
        if others and not name.endswith("_as"):  # view_as and friends read the other only for its shape
            return False
        if any(isinstance(v, (torch.device, str)) for v in (*n.args, *n.kwargs.values())):
            return False  # a device move, or a type given by name
        if name in DROPOUTS:
            train = n.target.module.training if isinstance(n.target, ModuleCall) else \
                arg_of(n, 2, "training", n.kwargs.get("train", True))
            return not train or arg_of(n, 1, "p") == 0
        return name not in NO_OP_MOVES or out.shape == into.shape

    def _evaluate(self, n: Node) -> Any:
        """Runs a node all of whose inputs are constants."""
        def value(a: Node) -> Any:
            return self.values[self.root[a]].reshape(self.meta[a].shape) if a in self.root else self.values[a]
        args, kwargs = map_arg((n.args, n.kwargs), value)
        try:
            with torch.no_grad():
                return callable_of(n)(*args, **kwargs)
        except Exception as e:
            raise UnsupportedModel(f"{self.name}: cannot fold constant {n.name!r} ({type_name(n)}):"
                                   f" {_first_line(e)}") from e

    # 6. live ops --------------------------------------------------------------------------
    def live(self, outputs: list[Node]) -> list[Node]:
        """The nodes some output depends on, in graph order; raises for an output no op computes."""
        for o in outputs:
            root = self.root.get(o, o)
            if self.kind[root] in ("input", "const"):
                what = "the graph input" if self.kind[root] == "input" else "the weight or constant"
                raise UnsupportedModel(f"{self.name}: output {o.name!r} is {what} {root.name!r} (or a view of it);"
                                       " no op computes it, so there is nothing to plan")
        stack = list(outputs)
        while stack:
            n = stack.pop()
            if n not in self.alive:
                self.alive.add(n)
                if self.kind[n] != "const":
                    stack.extend(n.all_input_nodes)
        return [n for n in self.g.nodes if n in self.alive]

    def group(self, live: list[Node]) -> list[_Group]:
        """One group per live op: the op node, then the getitem nodes that pick its outputs."""
        groups: dict[Node, _Group] = {}
        for n in live:
            if self.kind[n] == "op":
                if not isinstance(self.meta[n], Meta):
                    whole = [u for u in n.users if u in self.alive and u.target is not operator.getitem]
                    if whole:
                        raise UnsupportedModel(f"{self.name}: {whole[0].name!r} reads the whole tuple {n.name!r};"
                                               " only getitem of a multi-output op can be lowered")
                groups[n] = _Group([n], [n] if isinstance(self.meta[n], Meta) else [], self.label.get(n, type_name(n)))
            elif self.kind[n] == "item":
                groups[n.args[0]].nodes.append(n)  # type: ignore[index]
                groups[n.args[0]].outputs.append(n)  # type: ignore[index]
        return list(groups.values())

    # 7. fusion ----------------------------------------------------------------------------
    def fuse(self, groups: list[_Group], outputs: list[Node]) -> list[_Group]:
        """Folds epilogues into the conv/linear/matmul that feeds them: the ONNX frontend's rule.

        Group E fuses into group P when
          - E is an eval-mode batch norm, an activation in ACTIVATIONS, or add/sub/mul/div by a
            weight or a number that keeps x's shape (x first for sub and div);
          - E has one output and reads exactly one tensor x that is not a weight;
          - P wrote x, P's first node is in ANCHORS, and x has no other reader, is not (the base
            of) a graph output, and its only views are same-shape ones E reads.
        P keeps its name and place; its type becomes e.g. "aten.conv2d+aten.relu" and it writes
        E's output. Walking the groups in order fuses chains (conv -> batch norm -> relu).
        """
        pinned = {self.root.get(o, o) for o in outputs}
        producer = {o: grp for grp in groups for o in grp.outputs}
        readers: dict[Node, list[_Group]] = {}
        for grp in groups:
            for x in self._reads(grp):
                readers.setdefault(x, []).append(grp)
        views: dict[Node, list[Node]] = {}
        for v, r in self.root.items():
            if v in self.alive:
                views.setdefault(r, []).append(v)
        kept = []
        for e in groups:
            x = self._epilogue_of(e)
            p = producer.get(x) if x is not None else None
            if p is None or canon(p.nodes[0]) not in ANCHORS or readers.get(x) != [e] or x in pinned or \
                    not all(self.meta[v].shape == self.meta[x].shape and
                            all(u in e.nodes or u in views[x] for u in v.users if u in self.alive)
                            for v in views.get(x, [])):
                kept.append(e)
                continue
            p.nodes += e.nodes
            p.outputs = [e.outputs[0] if o is x else o for o in p.outputs]
            p.type += "+" + e.type
            producer[e.outputs[0]] = p
            for y in self._reads(e):
                readers[y] = [p if r is e else r for r in readers[y]]
        return kept

    def _reads(self, grp: _Group) -> list[Node]:
        """The nodes holding the tensors `grp` reads from outside itself (views resolved), in order."""
        inside, found = set(grp.nodes), []
        for n in grp.nodes:
            for a in n.all_input_nodes:
                r = self.root.get(a, a)
                m = self.meta.get(r)
                if r not in inside and isinstance(m, Meta) and m.numel:  # an empty tensor is a constant argument
                    found.append(r)
        return list(dict.fromkeys(found))

    def _epilogue_of(self, e: _Group) -> Node | None:
        """x when group `e` is an epilogue of x (see `fuse`), else None."""
        n, name = e.nodes[0], canon(e.nodes[0])
        main = [r for r in self._reads(e) if self.kind[r] != "const"]
        if len(e.outputs) != 1 or len(main) != 1 or not n.args:
            return None
        x, first = main[0], n.args[0]
        first_is_x = isinstance(first, Node) and self.root.get(first, first) is x
        if name in ACTIVATIONS or name in BATCH_NORMS and not self._training_bn(n):
            return x if first_is_x else None
        if name in AFFINE and len(n.args) >= 2 and self.meta[e.outputs[0]].shape == self.meta[x].shape:
            other = [a for a in n.args[:2] if not (isinstance(a, Node) and self.root.get(a, a) is x)]
            if len(other) == 1 and (name in ("add", "mul") or first_is_x):
                return x
        return None

    def _training_bn(self, n: Node) -> bool:
        if isinstance(n.target, ModuleCall):
            return n.target.module.training
        args = n.normalized_arguments(self.owner, normalize_to_only_use_kwargs=True)
        return args is None or bool(args.kwargs.get("training", args.kwargs.get("train", False)))

    # 8. the planner graph -----------------------------------------------------------------
    def emit(self, groups: list[_Group], outputs: list[Node]) -> Lowered:
        """Builds tensors, ops (with fn and flops), views and weights, then lints."""
        tensors = {n.name: self._tensor(n, "input", None) for n in self.inputs}
        weights: dict[str, torch.Tensor] = {}
        ops, view_readers = [], {}
        for grp in groups:
            ins = self._reads(grp)
            op = Op(grp.nodes[0].name, grp.type, [r.name for r in ins], [o.name for o in grp.outputs],
                    sum(flops(n, self.meta) for n in grp.nodes), self._fn(grp, ins))
            for r in ins:
                if r.name not in tensors:
                    tensors[r.name], weights[r.name] = self._tensor(r, "weight", None), self.values[r]
                tensors[r.name].consumers.append(op.name)
            for o in grp.outputs:
                tensors[o.name] = self._tensor(o, "activation", op.name)
            for a in dict.fromkeys(a for n in grp.nodes for a in n.all_input_nodes if a in self.root):
                view_readers.setdefault(a, []).append(op.name)
            ops.append(op)
        for o in outputs:
            tensors[self.root.get(o, o).name].kind = "output"
        views = {}
        for v, r in self.root.items():
            if r.name in tensors and (v in view_readers or v in outputs):
                base = tensors[r.name]
                views[v.name] = dataclasses.replace(self._tensor(v, base.kind, base.producer), alias=r.name,
                                                    consumers=view_readers.get(v, []))
        out_names = [o.name for o in outputs]
        graph = Graph(self.name, tensors, ops, [n.name for n in self.inputs], list(dict.fromkeys(out_names)), views)
        try:
            graph.lint()
        except GraphError as e:
            raise UnsupportedModel(f"{self.name} lowers to an invalid graph: {e}") from e
        return Lowered(graph, weights, out_names)

    def _tensor(self, n: Node, kind: str, producer: str | None) -> Tensor:
        m = self.meta[n]
        if m.numel == 0:
            raise BadInput(f"{self.name}: tensor {n.name!r} is empty (shape {m.shape}); the planner needs"
                           " non-empty tensors")
        return Tensor(n.name, m.shape, str(m.dtype).removeprefix("torch."), m.numel * m.dtype.itemsize, kind,
                      producer)

    def _fn(self, grp: _Group, ins: list[Node]) -> Callable[..., tuple]:
        """The op's callable: runs the group's nodes in order on the op's input values."""
        slot = {r: k for k, r in enumerate(ins)}
        step = {n: k for k, n in enumerate(grp.nodes)}

        def ref(a: Node) -> Any:
            r = self.root.get(a, a)
            shape = self.meta[a].shape if a in self.root else None
            if r in step:
                return Ref(step[r], True, shape)
            if r in slot:
                return Ref(slot[r], False, shape)
            value = self.values[r]  # a constant: a number, a size, an empty tensor
            return value.reshape(shape) if shape is not None and isinstance(value, torch.Tensor) else value
        steps = []
        for k, n in enumerate(grp.nodes):
            args, kwargs = map_arg((n.args, n.kwargs), ref)
            twin = in_place(n, args, kwargs, self.meta) if k else None  # memory only: a fused epilogue writes
            steps.append(twin if twin is not None else (callable_of(n), (args, kwargs)))  # over its intermediate
        return functools.partial(run_steps, steps, [step[o] for o in grp.outputs])


@dataclass
class _Group:
    """The fx nodes one planner Op stands for, in execution order, and the ones it outputs."""

    nodes: list[Node]
    outputs: list[Node]
    type: str
