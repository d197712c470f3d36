"""What a training step really allocates: per-op workspaces, calibrated on the device, and the
measured peak of a step from the allocator's own events.

Why: `frontends.train.replay_peak` counts the storages of the fx graphs' values. The kernels
allocate more than their outputs: oneDNN's convolution computes into a second output-sized
buffer and reorders its weights, its backward holds input- and output-sized scratch, attention
and reductions keep temporaries. On ResNet-50 these transients were the step's peak, 18% above
the replayed one. They depend on the kernel library and the device, not on the graph, so they
are measured, not guessed: every distinct call (op, argument shapes, strides, dtypes, constants)
of a graph runs once on zero-filled tensors of its shapes, under the profiler's memory events,
and its workspace is the most bytes it held above what it returned (`annotate_workspaces`).
The replay and the 0-1 programme add that transient at its step.

`measured_peak` is the yardstick for all of this: the peak of the allocator's own allocation and
free events on one device (torch.profiler with `profile_memory`) over a callable, relative to its
start; on CPU it sees every allocation of the default CPU allocator (kernels' scratch
included), on CUDA the caching allocator's blocks as torch hands them out.
"""
from __future__ import annotations

import contextlib
import logging
import operator
import os
import sys
import tempfile
from typing import Any, Callable, Iterator

import torch
from torch import fx

from planner.ir import Bytes

__all__ = ["WORKSPACE", "annotate_workspaces", "measured_peak"]

log = logging.getLogger(__name__)
WORKSPACE = "planner_workspace"  # node.meta key: transient bytes the call holds above its outputs
_PREFIX = "planner_ws:"


@contextlib.contextmanager
def _profiling_quietly() -> Iterator[None]:
    """Drops the `USDT: ... profiler_start/stop` lines this torch build's Kineto writes to the
    process's stderr at every profiler start and stop (once per compiled graph would be noise);
    any other output is passed through when the block ends."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = [line for line in tmp.read().splitlines(keepends=True) if not line.startswith(b"USDT:")]
            if rest:
                os.write(2, b"".join(rest))


def measured_peak(fn: Callable[[], Any], device: str = "cpu") -> Bytes:
    """Peak bytes allocated on `device` ("cpu" or "cuda", all its indices) and not yet freed
    while `fn()` runs, counted from the allocator's events: what a user's allocation trace
    shows for the step, scratch buffers included. The device matters: on CUDA a step also
    allocates host memory (pinned offload buffers, CPU scalars), which is not device memory."""
    from torch.profiler import profile

    kind = torch.device(device).type
    with _profiling_quietly(), profile(activities=_activities(kind), profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, nbytes in _memory_events(prof.profiler.kineto_results.events(), kind):
        live += nbytes
        peak = max(peak, live)
    return peak


def _real(val: Any) -> Any:
    """A zero-filled tensor with the FakeTensor's shape, strides, dtype and device (zeros: valid
    indices for embeddings and gathers, and no value-dependent kernel paths)."""
    if isinstance(val, torch.Tensor):
        t = torch.empty_strided(tuple(int(s) for s in val.shape), tuple(int(s) for s in val.stride()),
                                dtype=val.dtype, device=val.device)
        return t.zero_() if t.numel() else t
    if isinstance(val, (list, tuple)):
        return type(val)(_real(v) for v in val)
    return val


def _signature(n: fx.Node) -> tuple | None:
    """What decides the call's allocations: the op and its arguments (tensors by shape, strides,
    dtype and device). None for what is not an aten op (getitem, custom Python callables)."""
    if not isinstance(n.target, torch._ops.OpOverload) or n.target is operator.getitem:
        return None

    def sig(a: Any) -> Any:
        if isinstance(a, fx.Node):
            v = a.meta.get("val")
            if isinstance(v, torch.Tensor):
                return ("T", tuple(v.shape), tuple(v.stride()), v.dtype, str(v.device))
            return ("V", repr(v))
        if isinstance(a, (list, tuple)):
            return tuple(sig(x) for x in a)
        return repr(a)
    try:
        return (str(n.target), sig(n.args), sig(tuple(sorted(n.kwargs.items()))))
    except Exception:  # a value whose repr fails: the call is not calibrated (workspace 0)
        return None


def annotate_workspaces(gm: fx.GraphModule, cache: dict[tuple, Bytes] | None = None) -> dict[tuple, Bytes]:
    """Sets `node.meta[WORKSPACE]` on every call of `gm`: the bytes it allocates above what it
    returns, measured by running each distinct call once on the device (see the module
    docstring). `cache` carries the measurements across graphs (the forward and the backward
    share most calls); returns it. The graph's RNG state and grad mode are left as they were."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.profiler import profile, record_function

    cache = {} if cache is None else cache
    calls = {n: _signature(n) for n in gm.graph.nodes if n.op == "call_function"}
    todo: dict[tuple, fx.Node] = {}
    for n, s in calls.items():
        if s is not None and s not in cache:
            todo.setdefault(s, n)
    if todo:
        devices = sorted({t.device.index or 0 for n in todo.values() for t in _vals(n) if t.device.type == "cuda"})
        sigs, failed = list(todo), set()
        kind = "cuda" if devices else "cpu"  # the graph's device: its scratch is what counts
        with unset_fake_temporarily(), torch.no_grad(), torch.random.fork_rng(devices=devices), \
                _profiling_quietly(), profile(activities=_activities(kind), profile_memory=True) as prof:
            for k, (s, n) in enumerate(todo.items()):
                args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: _real(a.meta.get("val")))
                try:
                    with record_function(f"{_PREFIX}{k}"):
                        out = n.target(*args, **kwargs)
                except Exception as e:  # a call that cannot run alone on zeros: no workspace known
                    log.debug("planner: workspace of %s not measured (%s)", n.target, e)
                    failed.add(s)
                    continue
                del out, args, kwargs
            if devices:
                torch.cuda.synchronize()
        cache.update(_workspaces(prof, sigs, kind))
        cache.update({s: 0 for s in failed})
    for n, s in calls.items():
        n.meta[WORKSPACE] = cache.get(s, 0) if s is not None else 0
    return cache


def _activities(kind: str) -> list:
    """What the profiler records to see `kind`'s ("cpu" or "cuda") allocations."""
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if kind == "cuda" else [])


def _memory_events(events: Any, kind: str) -> list[tuple[int, int]]:
    """(start ns, bytes: + allocated, - freed) of the allocator events on `kind`, in time order."""
    return sorted((e.start_ns(), e.nbytes()) for e in events
                  if e.name() == "[memory]" and str(e.device_type()).split(".")[-1].lower() == kind)


def _vals(n: fx.Node) -> list[torch.Tensor]:
    return [a.meta["val"] for a in n.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)]


def _workspaces(prof: Any, sigs: list[tuple], kind: str) -> dict[tuple, Bytes]:
    """Per calibrated call: the most bytes live on the device (`kind`) inside its range above
    the bytes live at its end (its outputs, freed only after the range closes)."""
    events = prof.profiler.kineto_results.events()
    ranges = sorted((e.start_ns(), e.end_ns(), int(e.name()[len(_PREFIX):])) for e in events
                    if e.name().startswith(_PREFIX))
    memory = _memory_events(events, kind)
    found: dict[tuple, Bytes] = {}
    i = 0
    for start, end, k in ranges:
        while i < len(memory) and memory[i][0] < start:
            i += 1
        live = peak = 0
        while i < len(memory) and memory[i][0] <= end:
            live += memory[i][1]
            peak = max(peak, live)
            i += 1
        found[sigs[k]] = max(0, peak - live)
    return found
