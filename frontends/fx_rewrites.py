"""The rewrites the torch.fx frontend makes to its private copy of an fx graph before it
classifies nodes (steps 1-4 of `frontends.fx`'s docstring):

1. call_module nodes become calls whose parameters are explicit weight tensors.
2. In-place ops run out of place; later readers of the mutated tensor read the result.
3. Eval-mode batch norm folds into the weights of the conv or 2-D linear before it.
4. With `decompose_attention`, scaled_dot_product_attention becomes the ops the ONNX
   exporter writes for it, so both routes hold the same tensors.

`Rewrites` keeps the state they share: the graph, every node's Meta, the constant values.
`frontends.fx._Lowering` extends it with classification, fusion and the planner graph.
"""
from __future__ import annotations

import copy
import functools
import math
import operator
from typing import Any, Callable

import torch
from torch.fx import Graph as FxGraph
from torch.fx import Node
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from planner.frontends.fx_rules import (ALIASING, BATCH_NORMS, FOLDS_BN, IN_PLACE_OPERATORS, CloneFirst, Meta, Method,
                                ModuleCall, arg_of, canon, is_transposed, meta_of, type_name)
from planner.errors import UnsupportedModel


class Rewrites:
    """An fx graph (a private copy) and what is known of its nodes, rewritten in place.

    `meta` holds every node's Meta (or tuple of them, or plain value); `values` the value of
    every constant node, weights included; `label` op types other than `type_name(node)`.
    """

    def __init__(self, g: FxGraph, owner: torch.nn.Module, name: str):
        self.g, self.owner, self.name = g, owner, name
        self.meta: dict[Node, Any] = {}
        self.values: dict[Node, Any] = {}
        self.label: dict[Node, str] = {}  # a conv with a folded batch norm: "aten.conv2d+aten.batch_norm"

    # 1. attributes and submodules ---------------------------------------------------------
    def inline_modules(self) -> None:
        """Reads get_attr values; call_module -> a ModuleCall whose parameters are get_attr nodes."""
        for n in list(self.g.nodes):
            if n.op == "get_attr" and n not in self.values:
                self.values[n] = functools.reduce(getattr, n.target.split("."), self.owner)  # type: ignore[union-attr]
                self.meta[n] = meta_of(self.values[n], n.name)
            elif n.op == "call_module":
                n.op = "call_function"
                self._call_module(n, self.owner.get_submodule(n.target))  # type: ignore[arg-type]

    def _call_module(self, n: Node, module: torch.nn.Module) -> None:
        """Makes `n` call `module` with its parameters and buffers as get_attr nodes (weights)."""
        old = n.kwargs.get("_params", ())
        n.target = call = ModuleCall(module)
        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        with self.g.inserting_before(n):
            params = tuple(self.g.create_node("get_attr", f"{n.name}.{k}") for k in call.names)
        for p, k in zip(params, call.names):
            self.values[p], self.meta[p] = state[k], meta_of(state[k], p.name)
        n.kwargs = {**n.kwargs, "_params": params}
        for p in old:
            self.g.erase_node(p)

    # 2. in-place ops ----------------------------------------------------------------------
    def functionalize(self, outputs: list[Node | None]) -> list[Node | None]:
        """Runs each in-place op out of place and points later readers of what it wrote at its result.

        Raises when the written tensor is a view whose base is read later: that reader
        would see the write in eager PyTorch and not here.
        """
        order = {n: k for k, n in enumerate(self.g.nodes)}
        for n in list(self.g.nodes):
            written = written_by(n)
            if written is None:
                continue
            alias = written
            while alias.op in ("call_function", "call_method") and canon(alias) in ALIASING and alias.args \
                    and isinstance(alias.args[0], Node):
                alias = alias.args[0]
                if any(order.get(u, -1) > order[n] for u in alias.users):
                    raise UnsupportedModel(f"{self.name}: in-place op {n.name!r} writes through the view"
                                           f" {written.name!r} of {alias.name!r}, which is read later")
            self._out_of_place(n)
            for user in list(written.users):
                if user is not n and order.get(user, -1) > order[n]:
                    user.replace_input_with(written, n)
            outputs = [n if o is written else o for o in outputs]
        return outputs

    def _out_of_place(self, n: Node) -> None:
        """Retargets an in-place node to its out-of-place twin, or runs it on a copy."""
        t = n.target
        if isinstance(t, ModuleCall):
            return  # ModuleCall copies the argument of an in-place module
        if n.kwargs.get("inplace") is True:
            n.update_kwarg("inplace", False)
        elif t in IN_PLACE_OPERATORS:
            n.target = IN_PLACE_OPERATORS[t]  # type: ignore[index]
        elif t is operator.setitem:  # x[i] = v returns None; its twin returns the written copy
            n.target, self.meta[n] = CloneFirst(_set_item, "operator.setitem"), self.meta[n.args[0]]
        elif n.op == "call_method":
            if hasattr(torch.Tensor, t[:-1]):  # type: ignore[index]
                n.target = t[:-1]  # type: ignore[index]
            else:
                n.op, n.target = "call_function", CloneFirst(Method(t), f"Tensor.{t}")  # type: ignore[arg-type]
        else:
            if isinstance(t, torch._ops.OpOverload):
                packet = getattr(getattr(torch.ops, t.namespace), t.overloadpacket.__name__[:-1], None)
                twin = getattr(packet, t._overloadname, None)
            else:
                twin = _torch_in_place(t)
            n.target = twin if twin is not None else CloneFirst(t, type_name(n))  # type: ignore[assignment]

    # 3. batch norm ------------------------------------------------------------------------
    def fold_batch_norm(self) -> None:
        """Folds eval-mode batch norm into the weights of the conv or 2-D linear that feeds it.

        The conditions of the onnxscript rewrite torch.onnx.export runs: the conv's output is
        read only by the batch norm, the conv's weight and bias by nothing else, and they and
        the batch norm's statistics and affine parameters are weights.
        """
        for b in list(self.g.nodes):
            c = b.args[0] if b.op == "call_function" and canon(b) in BATCH_NORMS and b.args else None
            if not isinstance(c, Node) or len(c.users) != 1 or c.op != "call_function" or canon(c) not in FOLDS_BN:
                continue
            bn, conv = self._bn_state(b), self._conv_state(c)
            picks = list(b.users) if not isinstance(self.meta[b], Meta) else []  # getitems of a tuple result
            if bn is None or conv is None or any(u.target is not operator.getitem or (u.args[1] != 0 and u.users)
                                                 for u in picks):
                continue
            w, cb, transposed = conv
            if canon(c) == "linear":
                ones, zeros = torch.ones_like(bn["running_mean"]), torch.zeros_like(bn["running_mean"])
                fw, fb = fuse_linear_bn_weights(w, cb, bn["running_mean"], bn["running_var"], bn["eps"],
                                                ones if bn["weight"] is None else bn["weight"],
                                                zeros if bn["bias"] is None else bn["bias"])
            else:
                fw, fb = fuse_conv_bn_weights(w, cb, bn["running_mean"], bn["running_var"], bn["eps"], bn["weight"],
                                              bn["bias"], transpose=transposed)
            if isinstance(c.target, ModuleCall):
                module = copy.copy(c.target.module)
                module._parameters = {**module._parameters, "weight": fw, "bias": fb}
                self._call_module(c, module)
            else:
                with self.g.inserting_before(c):
                    nw, nb = (self.g.create_node("get_attr", f"{c.name}_{k}") for k in ("weight", "bias"))
                for node, value in ((nw, fw.detach()), (nb, fb.detach())):
                    self.values[node], self.meta[node] = value, meta_of(value, node.name)
                _set_arg(c, 1, "weight", nw)
                _set_arg(c, 2, "bias", nb)
            self.label[c] = f"{self.label.get(c, type_name(c))}+{type_name(b)}"
            for u in picks:
                if u.args[1] == 0:
                    u.replace_all_uses_with(c)
                self.g.erase_node(u)
            b.replace_all_uses_with(c)
            self.g.erase_node(b)

    def _bn_state(self, b: Node) -> dict[str, Any] | None:
        """An eval-mode batch norm's running_mean, running_var, weight, bias (values) and eps; None
        when it is training or any of them is not a weight."""
        if isinstance(b.target, ModuleCall):
            m = b.target.module
            names = ("running_mean", "running_var", "weight", "bias", "eps")
            return None if m.training or m.running_mean is None else {k: getattr(m, k) for k in names}
        args = b.normalized_arguments(self.owner, normalize_to_only_use_kwargs=True)
        bn = {} if args is None else dict(args.kwargs)
        if not bn or bn.get("training", bn.get("train")):
            return None
        nodes = [bn["running_mean"], bn["running_var"], bn.get("weight"), bn.get("bias")]
        if None in nodes[:2] or not all(v is None or self._is_weight(v) for v in nodes):
            return None
        return {**bn, **{k: None if v is None else self.values[v]
                         for k, v in zip(("running_mean", "running_var", "weight", "bias"), nodes)}}

    def _conv_state(self, c: Node) -> tuple[torch.Tensor, torch.Tensor | None, bool] | None:
        """(weight, bias, transposed) of a conv or linear a batch norm may fold into, else None."""
        if isinstance(c.target, ModuleCall):
            m = c.target.module
            transposed, groups = isinstance(m, torch.nn.modules.conv._ConvTransposeNd), getattr(m, "groups", 1)
            w, b = m.weight, m.bias
        else:
            transposed = is_transposed(c)
            groups = arg_of(c, 6, "groups", 1) if "transpose" in canon(c) else arg_of(c, 8, "groups", 1)
            wn, bn = arg_of(c, 1, "weight"), arg_of(c, 2, "bias")
            if not self._is_weight(wn) or not (bn is None or self._is_weight(bn)) or \
                    any(v is not None and len(v.users) != 1 for v in (wn, bn)):
                return None
            w, b = self.values[wn], None if bn is None else self.values[bn]
        if (transposed and groups != 1) or (canon(c) == "linear" and len(self.meta[c].shape) != 2):
            return None
        return w, b, transposed

    def _is_weight(self, v: Any) -> bool:
        return isinstance(v, Node) and isinstance(self.values.get(v), torch.Tensor)

    # 4. attention -------------------------------------------------------------------------
    def decompose_attention(self) -> None:
        """Rewrites each scaled_dot_product_attention (SDPA) as ATen ops matching, tensor for
        tensor, the ONNX ops torch.onnx.export writes for it (onnxscript's torchlib):

            kt = transpose(k, -2, -1)        Transpose (the Reshapes around it fold)
            qs = q * sqrt(scale)             Mul
            kts = kt * sqrt(scale)           Mul
            s = qs @ kts                     MatMul
            s = s + mask                     Add, for a float mask; is_causal makes a constant
                                             one, a bool mask becomes where(mask, 0, lowest)
            a = softmax(s, -1)               Softmax
            a = where(isnan(a), 0, a)        IsNaN, Where: bool masks only
            a = dropout(a, p)                dropout_p > 0 only (training)
            out = a @ v                      MatMul, named as the SDPA node was

        sqrt(scale), the causal mask and the constants of where are new weights. With
        enable_gqa and fewer key than query heads, k and v are first repeated per head group
        (unsqueeze, expand, reshape), as the exporter does. On an accelerator these
        intermediates exist; a GPU's fused SDPA kernel never holds them, hence the option.
        An SDPA whose flags or scale are not constants, or whose scale is negative (the
        exporter's sqrt(scale) is NaN), stays one op.
        """
        for n in list(self.g.nodes):
            if n.op == "call_function" and canon(n) == "scaled_dot_product_attention":
                self._decompose_sdpa(n)

    def _decompose_sdpa(self, n: Node) -> None:
        q, k, v, mask = (arg_of(n, i, key) for i, key in enumerate(("query", "key", "value", "attn_mask")))
        p, causal = arg_of(n, 4, "dropout_p", 0.0), arg_of(n, 5, "is_causal", False)
        scale, gqa = n.kwargs.get("scale"), n.kwargs.get("enable_gqa", False)
        if any(isinstance(a, Node) for a in (p, causal, scale, gqa)) or (scale is not None and scale < 0):
            return
        aten, shape, dtype = torch.ops.aten, self.meta[q].shape, self.meta[q].dtype
        lowest = torch.finfo(dtype).min  # the exporter's stand-in for -inf

        def call(suffix: str, target: Callable[..., Any], *args: Any) -> Node:
            node = self.g.create_node("call_function", target, args, name=f"{n.name}_{suffix}")
            fake = [torch.empty(self.meta[a].shape, dtype=self.meta[a].dtype, device="meta")
                    if isinstance(a, Node) else a for a in args]
            self.meta[node] = meta_of(target(*fake), node.name)
            return node

        def const(suffix: str, value: torch.Tensor) -> Node:
            node = self.g.create_node("get_attr", f"{n.name}_{suffix}")
            self.values[node], self.meta[node] = value, meta_of(value, node.name)
            return node

        def repeat_heads(t: Node, suffix: str) -> Node:  # [B, Hk, S, E] -> [B, Hq, S, E], as repeat_interleave
            b, hk, s, e = self.meta[t].shape
            one = call(f"{suffix}_unsqueeze", aten.unsqueeze.default, t, 2)
            wide = call(f"{suffix}_expand", aten.expand.default, one, [b, hk, shape[-3] // hk, s, e])
            return call(f"{suffix}_repeat", aten.reshape.default, wide, [b, shape[-3], s, e])

        with self.g.inserting_before(n):
            if gqa and shape[-3] != self.meta[k].shape[-3]:
                k, v = repeat_heads(k, "k"), repeat_heads(v, "v")
            factor = math.sqrt(1 / math.sqrt(shape[-1]) if scale is None else scale)
            sqrt_scale = const("sqrt_scale", torch.tensor(factor, dtype=dtype))
            kt = call("kt", aten.transpose.int, k, -2, -1)
            qs, kts = call("q", aten.mul.Tensor, q, sqrt_scale), call("k", aten.mul.Tensor, kt, sqrt_scale)
            if causal:
                lower = torch.ones(shape[-2], self.meta[k].shape[-2], dtype=torch.bool).tril()
                mask = const("causal", torch.zeros(lower.shape, dtype=dtype).masked_fill(~lower, lowest))
            is_bool = mask is not None and self.meta[mask].dtype == torch.bool
            if is_bool:
                zero = const("zero", torch.tensor(0.0, dtype=dtype))
                mask = call("mask", aten.where.self, mask, zero, const("lowest", torch.tensor(lowest, dtype=dtype)))
            s = call("scores", aten.matmul.default, qs, kts)
            if mask is not None:
                s = call("masked", aten.add.Tensor, s, mask)
            a = call("softmax", aten.softmax.int, s, -1)
            if is_bool:
                a = call("weights", aten.where.self, call("isnan", aten.isnan.default, a), zero, a)
            if p:
                a = call("dropout", aten.dropout.default, a, p, True)
            out = call("out", aten.matmul.default, a, v)
        n.replace_all_uses_with(out)
        self.g.erase_node(n)
        out.name = n.name  # fx keeps the name reserved, so no later node takes it


def _set_item(x: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    x[index] = value
    return x


def _set_arg(n: Node, index: int, key: str, value: Any) -> None:
    if index < len(n.args):
        n.update_arg(index, value)
    elif index == len(n.args) and key not in n.kwargs:
        n.args = (*n.args, value)
    else:
        n.update_kwarg(key, value)


def written_by(n: Node) -> Node | None:
    """The node an in-place op writes (its first argument), else None. `frontends.dynamo` uses
    it too: an in-place write whose target is a graph input must be seen by the caller."""
    t, first = n.target, n.args[0] if n.args and isinstance(n.args[0], Node) else None
    if n.op == "call_method":
        inplace = t.endswith("_") and not t.endswith("__")  # type: ignore[union-attr]
    elif isinstance(t, torch._ops.OpOverload):
        args = t._schema.arguments
        inplace = bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write
    elif isinstance(t, ModuleCall):
        inplace = bool(getattr(t.module, "inplace", False))
    elif n.op == "call_function":
        inplace = t in IN_PLACE_OPERATORS or t is operator.setitem or n.kwargs.get("inplace") is True or \
            _torch_in_place(t) is not None
    else:
        inplace = False
    return first if inplace else None


def _torch_in_place(t: Any) -> Callable[..., Any] | None:
    """The out-of-place twin of an in-place torch function (torch.relu_ -> torch.relu), else None."""
    name = getattr(t, "__name__", "")
    if not name.endswith("_") or name.endswith("__"):
        return None
    for module in (torch, torch.nn.functional):
        if getattr(module, name, None) is t:
            return getattr(module, name[:-1], None)
    return None
