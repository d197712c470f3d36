"""RandWire-WS (Xie et al., 2019, "Exploring Randomly Wired Neural Networks for Image
Recognition"), WS(K=4, P=0.75), small regime: C=78, N=32 nodes per random stage, 224x224.

Network (paper Table 1, small regime):

    conv1  3x3 conv stride 2, C/2, BN
    conv2  ReLU, 3x3 conv stride 2, C, BN
    conv3  random stage, N nodes, C        each stage halves H and W
    conv4  random stage, N nodes, 2C
    conv5  random stage, N nodes, 4C
    head   ReLU, 1x1 conv 1280, BN, ReLU, global average pool, fc 1000

A stage is an undirected Watts-Strogatz graph (`networkx.connected_watts_strogatz_graph(N, K,
P, seed=stage)`, stages seeded 0, 1, 2) made a DAG by pointing every edge from the lower to the
higher node index. A node sums its inputs weighted by sigmoid(w), one learnable w per in-edge
(a single input is taken as is), then applies ReLU, 3x3 separable conv, BN. Nodes without
in-edges read the stage input with stride 2; the stage output is the plain mean of the nodes
without out-edges.

The paper reports 5.6M (+-0.1M over its random graphs) parameters; this build has 5,651,922
(+0.9%). The paper's graphs are not published, so these seeds are one draw from the generator.
"""
from __future__ import annotations

import networkx as nx
import torch
from torch import nn

from planner.models import seeded
from planner.models.nas.ops import calibrate_bn, conv_bn, relu_conv_bn, relu_sep_bn


def ws_dag(n: int, k: int, p: float, seed: int) -> list[list[int]]:
    """Predecessors of each node of a connected WS(n, k, p) graph with edges lower -> higher."""
    g = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=seed)
    return [sorted(u for u in g.neighbors(v) if u < v) for v in range(n)]


class Node(nn.Module):
    def __init__(self, num_inputs: int, cin: int, cout: int, stride: int):
        super().__init__()
        # Random, not the paper's zero init: equal edge weights would let the ONNX exporter
        # merge the identical Mul(0.5, x) nodes, and the two frontends would disagree.
        self.weight = nn.Parameter(torch.randn(num_inputs)) if num_inputs > 1 else None
        self.op = relu_sep_bn(cin, cout, 3, stride)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.weight is None:
            return self.op(inputs[0])
        w = torch.sigmoid(self.weight)
        x = w[0] * inputs[0]
        for i in range(1, len(inputs)):
            x = x + w[i] * inputs[i]
        return self.op(x)


class Stage(nn.Module):
    def __init__(self, preds: list[list[int]], cin: int, cout: int):
        super().__init__()
        self.preds = preds
        self.nodes = nn.ModuleList(Node(len(ps), cout if ps else cin, cout, 1 if ps else 2) for ps in preds)
        has_succ = {u for ps in preds for u in ps}
        self.sinks = [v for v in range(len(preds)) if v not in has_succ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for node, ps in zip(self.nodes, self.preds):
            outs.append(node([outs[u] for u in ps] if ps else [x]))
        y = outs[self.sinks[0]]
        for v in self.sinks[1:]:
            y = y + outs[v]
        return y / len(self.sinks)


class RandWire(nn.Module):
    def __init__(self, c: int = 78, n: int = 32, k: int = 4, p: float = 0.75, num_classes: int = 1000):
        super().__init__()
        self.conv1 = conv_bn(3, c // 2, 3, 2, 1)
        self.conv2 = relu_conv_bn(c // 2, c, 3, 2, 1)
        self.conv3 = Stage(ws_dag(n, k, p, seed=0), c, c)
        self.conv4 = Stage(ws_dag(n, k, p, seed=1), c, 2 * c)
        self.conv5 = Stage(ws_dag(n, k, p, seed=2), 2 * c, 4 * c)
        self.head = nn.Sequential(*relu_conv_bn(4 * c, 1280), nn.ReLU())
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))
        return self.fc(self.head(x).mean((2, 3)))


@seeded
def randwire_ws() -> nn.Module:
    return calibrate_bn(RandWire())


def randwire_onnx(ops: int = 5000, *, stages: int = 3, channels: int = 16, resolution: int = 28, k: int = 4,
                  p: float = 0.75, seed: int = 0):
    """A large randomly wired network as an ONNX model, for planning at scale (issue 6).

    `stages` WS(N, k, p) stages in a row, N chosen so the lowered graph has about `ops`
    ops. A node sums its inputs (ONNX Sum, when it has several), then runs a 3x3
    depthwise conv and a 1x1 conv with ReLU (fused into the conv when lowered): 2-3 ops
    per node. Sources read the stage input, and the stage output is the Sum of the sinks.
    Every tensor is `channels` x `resolution` x `resolution` floats; weights are random.
    Built with onnx.helper, so thousands of nodes take a second, not a torch export.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n = max(k + 1, round(ops / stages / 2.6))
    c, r = channels, resolution
    nodes, inits = [], []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name))
        return name

    x = "input"
    for s in range(stages):
        outs: list[str] = []
        preds = ws_dag(n, k, p, seed=seed * 1000 + s)
        for v, ps in enumerate(preds):
            tag = f"s{s}n{v}"
            src = [outs[u] for u in ps] if ps else [x]
            if len(src) > 1:
                nodes.append(helper.make_node("Sum", src, [f"{tag}_sum"], name=f"{tag}_sum"))
                src = [f"{tag}_sum"]
            nodes.append(helper.make_node("Conv", [src[0], weight(f"{tag}_wdw", (c, 1, 3, 3))], [f"{tag}_dw"],
                                          name=f"{tag}_dw", group=c, pads=[1, 1, 1, 1]))
            nodes.append(helper.make_node("Conv", [f"{tag}_dw", weight(f"{tag}_wpw", (c, c, 1, 1))], [f"{tag}_pw"],
                                          name=f"{tag}_pw"))
            nodes.append(helper.make_node("Relu", [f"{tag}_pw"], [f"{tag}_out"], name=f"{tag}_relu"))
            outs.append(f"{tag}_out")
        sinks = [outs[v] for v in range(n) if not any(v in ps for ps in preds)]
        x = f"s{s}_out" if len(sinks) > 1 else sinks[0]
        if len(sinks) > 1:
            nodes.append(helper.make_node("Sum", sinks, [x], name=f"s{s}_sum"))
    graph = helper.make_graph(nodes, f"randwire_{ops}", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                      [1, c, r, r])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, r, r])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


if __name__ == "__main__":  # python -m models.nas.randwire --ops 5000 -o randwire5k.onnx
    import argparse

    import onnx

    ap = argparse.ArgumentParser(description="write a large random-wired network (WS graphs) as ONNX")
    ap.add_argument("--ops", type=int, default=5000, help="about this many ops once lowered (default 5000)")
    ap.add_argument("--seed", type=int, default=0, help="graph and weight seed (default 0)")
    ap.add_argument("-o", "--output", required=True, help="ONNX file to write")
    a = ap.parse_args()
    onnx.save(randwire_onnx(a.ops, seed=a.seed), a.output)
    print(f"wrote {a.output}")
