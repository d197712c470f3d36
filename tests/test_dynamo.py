"""The torch.compile backend: `backend="planner"` through the entry point, outputs equal to
eager with and without spills, options checked without being modified, plans cached,
unsupported graphs run eagerly after one warning (or raise with `strict`), and training
graphs handed to `frontends.train.compile_train`."""
from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch

from planner import models
from planner.frontends import dynamo
from planner.errors import BadInput, Infeasible, UnsupportedModel


@pytest.fixture(autouse=True)
def fresh() -> None:
    torch._dynamo.reset()
    dynamo.clear_cache()


def compile_and_run(model: torch.nn.Module, args: tuple, options: dict | None) -> tuple[list, list]:
    """Eager and compiled outputs, flattened, under no_grad (the inference path)."""
    with torch.no_grad():
        want = model(*args)
        got = torch.compile(model, backend="planner", options=options, dynamic=False)(*args)
    flat = (lambda v: list(v) if isinstance(v, (tuple, list)) else [v])
    return flat(got), flat(want)


def the_error(exc: BaseException, kind: type) -> BaseException:
    """The planner error inside dynamo's BackendCompilerFailed wrapper."""
    while exc is not None and not isinstance(exc, kind):
        exc = exc.__cause__ or getattr(exc, "inner_exception", None)
    assert exc is not None, f"no {kind.__name__} in the chain"
    return exc


def test_entry_point_registers_the_backend() -> None:
    assert "planner" in torch._dynamo.list_backends(exclude_tags=())


@pytest.mark.parametrize("name, budget", [(name, "M_H") for name in models.ZOO] + [
    ("resnet50", "M_P"), ("transformer", "M_P"), ("gpt2", "M_P")])
def test_zoo_through_torch_compile(name: str, budget: str) -> None:
    """Every zoo model (image, video, NAS cells, encoder-decoder with two inputs, token ids)
    gives eager's outputs at its small input, at M_H (where M_R < M_P the executed plan
    spills activations) and for three of them at M_P."""
    entry = models.get(name)
    model = entry.build()
    args = models.example_inputs(entry, shape=entry.small_shape)
    options = {"memory_budget": budget, "solver": "auto" if budget == "M_P" else "baseline", "time_limit": 10}
    got, want = compile_and_run(model, args, options)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    graphs = dynamo.compiled_graphs()
    assert len(graphs) == 1, "one captured graph (no graph break)"
    g = graphs[0]
    assert g.planning_seconds > 0 and not g.cached
    stats, plan = g.executor.stats, g.plan
    assert stats.arena_bytes == plan.metrics.arena_bytes <= plan.extra["budgets"][budget]
    if budget == "M_H" and plan.extra["budgets"]["M_R"] < plan.extra["budgets"]["M_P"]:
        assert stats.host_bytes > 0 and plan.metrics.noncompulsory_bytes > 0


def test_plans_are_cached_per_graph_and_shape() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)).eval()
    x = torch.randn(1, 3, 32, 32)
    compile_and_run(model, (x,), {"solver": "baseline"})
    first = dynamo.compiled_graphs()[-1]  # held here: dynamo.reset() drops its own reference
    torch._dynamo.reset()
    compile_and_run(model, (x,), {"solver": "baseline"})
    second = dynamo.compiled_graphs()[-1]
    assert not first.cached and second.cached and second.plan is first.plan
    torch._dynamo.reset()
    compile_and_run(model, (torch.randn(2, 3, 32, 32),), {"solver": "baseline"})
    assert not dynamo.compiled_graphs()[-1].cached  # a new shape is a new plan


def test_options_are_not_modified() -> None:
    options = {"memory_budget": "64MiB", "solver": "baseline", "strict": True}
    before = dict(options)
    got, want = compile_and_run(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval(),
                                (torch.randn(2, 8),), options)
    assert options == before
    torch.testing.assert_close(got[0], want[0])


class ReturnsAView(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1)  # no op computes the output: nothing to plan


def test_unsupported_graph_runs_eagerly_after_one_warning() -> None:
    model, x = ReturnsAView(), torch.randn(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend="planner", dynamic=False)
        outs = [compiled(x), compiled(x)]
        torch._dynamo.reset()
        outs.append(torch.compile(model, backend="planner", dynamic=False)(x))  # compiled again: no new warning
    mine = [w for w in caught if "planner backend" in str(w.message)]
    assert len(mine) == 1 and "running this graph eagerly" in str(mine[0].message)
    assert "no op computes it" in str(mine[0].message)
    for out in outs:
        torch.testing.assert_close(out, x.view(-1))


def test_strict_raises_on_an_unsupported_graph() -> None:
    with pytest.raises(Exception) as info:
        torch.compile(ReturnsAView(), backend="planner", options={"strict": True}, dynamic=False)(torch.randn(2, 3))
    assert "no op computes it" in str(the_error(info.value, UnsupportedModel))


@pytest.mark.parametrize("options, message", [
    ({"memory_budget": "2 GiX"}, "cannot read size"),
    ({"memory_budget": -5}, "must be positive"),
    ({"solver": "nope"}, "unknown solver"),
    ({"mode": "fast"}, "mode='fast'"),
    ({"time_limit": 0}, "time_limit"),
    ({"budget": "1GiB"}, "unknown option 'budget'"),
])
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with torch.no_grad(), pytest.raises(Exception) as info:  # no_grad: the inference path checks these
        torch.compile(torch.nn.Linear(4, 4).eval(), backend="planner", options=options)(torch.randn(1, 4))
    err = the_error(info.value, BadInput)
    assert message in str(err) and "\n" not in str(err)


def test_budget_below_m_r_names_the_op_and_the_minimum() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8)).eval()
    with torch.no_grad(), pytest.raises(Exception) as info:
        torch.compile(model, backend="planner", options={"memory_budget": "1KiB"})(torch.randn(4, 64))
    err = the_error(info.value, Infeasible)
    assert err.minimum is not None and err.minimum > 1024 and err.op in str(err) and str(err.minimum) in str(err)


def test_training_graphs_go_to_compile_train(monkeypatch) -> None:
    """mode auto with grad on and parameters requiring grad: the graph and a copy of the
    options go to frontends.train.compile_train (replaced here by a recorder)."""
    calls = []

    def compile_train(gm, example_inputs, options):
        calls.append(options)
        return gm.forward
    monkeypatch.setitem(sys.modules, "planner.frontends.train", types.SimpleNamespace(compile_train=compile_train))
    model, x = torch.nn.Linear(4, 2), torch.randn(3, 4)
    options = {"memory_budget": "1MiB", "recompute": True}  # a training-only key passes through
    out = torch.compile(model, backend="planner", options=options)(x)
    assert calls == [options] and calls[0] is not options
    out.sum().backward()
    assert model.weight.grad is not None
    torch._dynamo.reset()
    with torch.no_grad():  # the same model under no_grad is inference
        torch.compile(model, backend="planner", options={"memory_budget": "1MiB"})(x)
    assert len(calls) == 1 and len(dynamo.compiled_graphs()) >= 1
