"""Offset allocation (issue 5): every packing goes through alloc_check.validate, which
shares no code with the search; a brute force decides small instances independently."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import BadInput
from planner.solvers.alloc import (Buffer, Params, aligned_load, best_fit, cpsat_solve, greedy, greedy_by_size, height, load,
                           minimize, read_csv, solve, write_csv)
from planner.solvers.alloc import add_arguments, run
from planner.solvers.alloc_check import InvalidPacking, validate
from planner.solvers.alloc_search import _library

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "minimalloc"
SWITCHES = ("canonical_only", "section_inference", "unallocated_floor", "monotonic_floor", "check_dominance",
            "dynamic_ordering", "decomposition", "symmetry_breaking", "hatless_pruning", "static_preordering")
ENGINES = [True, False] if _library() is not None else [False]


def brute_force(buffers, capacity) -> bool:
    """Tries every aligned offset of every movable buffer; independent of the search."""
    order = sorted(range(len(buffers)), key=lambda i: buffers[i].offset is None)
    offsets = [None] * len(buffers)

    def fits(i, o):
        b = buffers[i]
        return o + b.size <= capacity and all(
            offsets[j] is None or not (b.lower < c.upper and c.lower < b.upper)
            or o + b.size <= offsets[j] or offsets[j] + c.size <= o for j, c in enumerate(buffers))

    def place(k):
        if k == len(order):
            return True
        i = order[k]
        b = buffers[i]
        for o in ([b.offset] if b.offset is not None else range(0, capacity - b.size + 1, b.alignment)):
            if fits(i, o):
                offsets[i] = o
                if place(k + 1):
                    return True
                offsets[i] = None
        return False

    return place(0)


# Literal problems: (buffers, capacity, feasible).
CASES = [
    ([], 0, True),
    ([Buffer("a", 0, 1, 2)], 2, True),
    ([Buffer("a", 0, 1, 2)], 1, False),
    ([Buffer("a", 0, 2, 2), Buffer("b", 1, 3, 2)], 4, True),
    ([Buffer("a", 0, 2, 2), Buffer("b", 1, 3, 2)], 3, False),
    ([Buffer("a", 0, 2, 2), Buffer("b", 2, 4, 2)], 2, True),  # half-open: a frees as b starts
    # A staircase at LOAD, under a buffer alive throughout.
    ([Buffer("a", 0, 2, 2), Buffer("b", 1, 3, 2), Buffer("c", 2, 4, 2), Buffer("d", 3, 5, 2), Buffer("e", 0, 5, 1)],
     5, True),
    ([Buffer("a", 0, 3, 1), Buffer("b", 0, 1, 2), Buffer("c", 1, 2, 1), Buffer("d", 2, 3, 2),
      Buffer("e", 1, 3, 1)], 4, True),
    ([Buffer("a", 0, 3, 1), Buffer("b", 0, 1, 2), Buffer("c", 1, 2, 1), Buffer("d", 2, 3, 2),
      Buffer("e", 1, 3, 1)], 3, False),
    # Two blocks of 2 alive together in a capacity of 5 with an alignment of 4: the second
    # block must start at 4 and end at 6.
    ([Buffer("a", 0, 2, 2, alignment=4), Buffer("b", 1, 3, 2, alignment=4)], 5, False),
    ([Buffer("a", 0, 2, 2, alignment=4), Buffer("b", 1, 3, 2, alignment=4)], 6, True),
    # A fixed buffer in the middle leaves holes of 1 and 2: only the 2 fits b.
    ([Buffer("f", 0, 4, 1, offset=1), Buffer("b", 1, 2, 2)], 4, True),
    ([Buffer("f", 0, 4, 1, offset=1), Buffer("b", 1, 2, 3)], 4, False),
    ([Buffer("f", 0, 4, 1, offset=1), Buffer("g", 2, 3, 1, offset=1)], 4, False),
    # Identical buffers (symmetry breaking) around a tight middle.
    ([Buffer(str(i), 0, 2, 1) for i in range(3)] + [Buffer("m", 1, 3, 2)], 5, True),
    ([Buffer(str(i), 0, 2, 1) for i in range(3)] + [Buffer("m", 1, 3, 2)], 4, False),
]


@pytest.mark.parametrize("mask", range(2 ** len(SWITCHES)))
def test_every_switch_combination_agrees(mask):
    """All 1024 combinations on the C search; every 8th also on the Python one."""
    flags = {name: bool(mask >> k & 1) for k, name in enumerate(SWITCHES)}
    for buffers, capacity, feasible in CASES:
        for extension in ENGINES if mask % 8 == 0 else ENGINES[:1]:
            r = solve(buffers, capacity, Params(**flags, greedy_first=False, extension=extension))
            assert r.status == ("feasible" if feasible else "infeasible"), (buffers, capacity, flags)
            if feasible:
                validate(buffers, r.offsets, capacity)


def test_cases_agree_with_brute_force():
    for buffers, capacity, feasible in CASES:
        assert brute_force(buffers, capacity) == feasible


@st.composite
def instances(draw):
    n = draw(st.integers(1, 7))
    buffers = []
    for i in range(n):
        lower = draw(st.integers(0, 5))
        upper = draw(st.integers(lower + 1, 7))
        size = draw(st.integers(1, 4))
        alignment = draw(st.sampled_from([1, 1, 1, 2, 3]))
        buffers.append(Buffer(f"b{i}", lower, upper, size, alignment))
    if draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        buffers[i] = replace(buffers[i], offset=buffers[i].alignment * draw(st.integers(0, 3)))
    return buffers, draw(st.integers(1, 12))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_search_agrees_with_brute_force(case):
    buffers, capacity = case
    truth = brute_force(buffers, capacity)
    runs = [solve(buffers, capacity, Params(greedy_first=False, extension=e)) for e in ENGINES]
    for r in runs:
        assert r.status == ("feasible" if truth else "infeasible")
        if truth:
            validate(buffers, r.offsets, capacity)
    # The Python search mirrors the C one step for step.
    assert len({(r.nodes, r.backtracks, tuple(r.offsets or ())) for r in runs}) == 1


@settings(max_examples=60, deadline=None)
@given(instances())
def test_minimize_and_cpsat_agree(case):
    buffers, _ = case
    if any(b.offset is not None for b in buffers):
        return
    r = minimize(buffers)
    assert r.status == "optimal" and r.height == r.lower_bound
    validate(buffers, r.offsets, r.height)
    assert brute_force(buffers, r.height) and not brute_force(buffers, r.height - 1)
    c = cpsat_solve(buffers, time_limit=10)
    assert c.status == "optimal" and c.height == r.height


def test_alignment_not_dividing_the_sizes():
    # sizes 2, alignment 3: the packing 0, 3 has height 5, which a size-only grid (even
    # offsets) cannot represent; padding makes the bound 5 too (LOAD is 4)
    buffers = [Buffer("a", 0, 1, 2, 3), Buffer("b", 0, 1, 2, 3)]
    assert load(buffers) == 4 and aligned_load(buffers) == 5
    assert minimize(buffers).height == cpsat_solve(buffers, time_limit=10).height == 5
    assert solve(buffers, 4).status == "infeasible"


@pytest.mark.parametrize("buffers", [
    [Buffer("a", 0, 2, 100, 64), Buffer("b", 1, 3, 30, 64), Buffer("c", 0, 3, 7, 4)],
    [Buffer(str(i), i % 3, i % 3 + 2, 5 + 11 * i, 8 * (1 + i % 3)) for i in range(5)],
])
def test_aligned_load_is_a_lower_bound(buffers):
    r = minimize(buffers)
    assert r.status == "optimal" and load(buffers) <= aligned_load(buffers) <= r.height
    assert not brute_force(buffers, aligned_load(buffers) - 1)


def test_greedy_packings_are_valid():
    buffers = [Buffer(str(i), i % 5, i % 5 + 1 + i % 3, 1 + (7 * i) % 5, alignment=1 + i % 2) for i in range(30)]
    for offsets in (greedy_by_size(buffers), best_fit(buffers, "size"), best_fit(buffers, "lifetime"),
                    greedy(buffers)):
        validate(buffers, offsets, None)
        assert height(buffers, offsets) >= load(buffers)


def test_timeout_is_never_infeasible():
    # D has slack at 1000 KiB; ten milliseconds prove nothing either way.
    buffers = read_csv(DATA / "challenging" / "D.1048576.csv")
    r = solve(buffers, 1000 * 1024, Params(time_limit=0.01, greedy_first=False))
    assert r.status in ("timeout", "feasible")
    if r.status == "timeout":
        assert r.offsets is None and r.lower_bound == load(buffers)


@settings(max_examples=40, deadline=None)
@given(instances())
def test_cpsat_decides_when_the_search_runs_out_of_time(case):
    # The search is made to time out: solve's answer is then CP-SAT's, checked by brute force.
    import planner.solvers.alloc as alloc_module
    from planner.solvers.alloc_search import TIMEOUT

    buffers, capacity = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(alloc_module, "search", lambda *_: (TIMEOUT, None, 0, 0))
        r = solve(buffers, capacity, Params(time_limit=10, greedy_first=False))
    assert r.status == ("feasible" if brute_force(buffers, capacity) else "infeasible")
    assert r.solver in ("bound", "cpsat")  # "bound": LOAD or fixed buffers rule it out before any search
    if r.offsets is not None:
        validate(buffers, r.offsets, capacity)


@pytest.mark.parametrize("name", "ABCDEFGHIJK")
def test_challenging_instances_fit_one_mebibyte(name):
    buffers = read_csv(DATA / "challenging" / f"{name}.1048576.csv")
    r = solve(buffers, 1 << 20, Params(greedy_first=False))
    assert r.status == "feasible"
    validate(buffers, r.offsets, 1 << 20)


@pytest.mark.skipif(_library() is None, reason="needs the C search: a million backtracks")
def test_each_pruning_reduces_backtracks():
    """Each technique, switched on alone, backtracks less: on the first 40 buffers of G at
    their LOAD, over the canonical search with dynamic ordering (section inference under
    its two refinements). Symmetry breaking has no identical buffers to act on here."""
    buffers = read_csv(DATA / "challenging" / "G.1048576.csv")[:40]
    capacity = load(buffers)
    off = dict.fromkeys(SWITCHES + ("restarts",), False)
    base = Params(**{**off, "canonical_only": True, "dynamic_ordering": True}, greedy_first=False)
    bare = solve(buffers, capacity, base)
    assert bare.status == "feasible" and bare.backtracks > 100_000
    for flag in ("section_inference", "check_dominance", "hatless_pruning", "decomposition"):
        assert solve(buffers, capacity, replace(base, **{flag: True})).backtracks < bare.backtracks, flag
    inferred = solve(buffers, capacity, replace(base, section_inference=True))
    for flag in ("unallocated_floor", "monotonic_floor"):
        r = solve(buffers, capacity, replace(base, section_inference=True, **{flag: True}))
        assert r.backtracks < inferred.backtracks, flag


def test_validator_names_the_rule():
    b = [Buffer("a", 0, 2, 4, alignment=2), Buffer("b", 1, 3, 4), Buffer("f", 0, 1, 1, offset=8)]
    for offsets, cap, rule in [([0, 2, 8], 16, "overlap"), ([0, 4, 8], 7, "over capacity"),
                               ([1, 5, 8], 16, "misaligned"), ([0, 4, 9], 16, "moved fixed"),
                               ([0, None, 8], 16, "missing"), ([0, -4, 8], 16, "negative")]:
        with pytest.raises(InvalidPacking) as e:
            validate(b, offsets, cap)
        assert e.value.rule == rule
    validate(b, [0, 4, 8], 16)


def test_csv_round_trip(tmp_path):
    buffers = [Buffer("a", 0, 2, 4, alignment=2), Buffer("b", 1, 3, 8)]
    r = solve(buffers, 12)
    write_csv(tmp_path / "out.csv", buffers, r.offsets)
    back = read_csv(tmp_path / "out.csv")
    assert [(b.id, b.lower, b.upper, b.size, b.alignment) for b in back] == \
           [(b.id, b.lower, b.upper, b.size, b.alignment) for b in buffers]
    assert [b.offset for b in back] == r.offsets  # offsets read back as fixed
    assert solve(back, 12).offsets == r.offsets


@pytest.mark.parametrize("text, message", [
    ("", ":1: header lacks id"),
    ("id,lower,upper\n", ":1: header lacks size"),
    ("id,lower,upper,size,colour\n", ":1: unknown column 'colour'"),
    ("id,lower,upper,size\na,0,2\n", ":2: expected 4 fields"),
    ("id,lower,upper,size\na,0,2,4\nb,0,x,4\n", ":3: upper 'x' is not an integer"),
    ("id,lower,upper,size\na,2,2,4\n", ":2: lower 2 must be below upper 2"),
    ("id,lower,upper,size\na,0,2,0\n", ":2: size 0 must be positive"),
    ("id,lower,upper,size,alignment\na,0,2,4,0\n", ":2: alignment 0 must be at least 1"),
    ("id,lower,upper,size,alignment,offset\na,0,2,4,4,2\n", ":2: offset 2 must be >= 0 and a multiple"),
    ("id,lower,upper,size\na,0,2,4\na,1,3,4\n", ":3: id 'a' appears twice"),
])
def test_bad_csv_names_the_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(BadInput, match=message):
        read_csv(path)


def _cli(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([str(a) for a in argv]))


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "x.csv"
    path.write_text("id,lower,upper,size\na,0,2,4\nb,1,3,8\nc,2,4,4\n")
    assert _cli(path, "--capacity", "12", "-o", tmp_path / "out.csv") == 0
    assert "status=feasible" in capsys.readouterr().out
    validate(read_csv(path), [b.offset for b in read_csv(tmp_path / "out.csv")], 12)
    assert _cli(path, "--minimize") == 0
    assert "capacity=12 lower_bound=12 status=optimal" in capsys.readouterr().out
    assert _cli(path, "--capacity", "11B") == 2
    assert _cli(path, "--capacity", "12", "--solver", "cpsat") == 0
    assert _cli(path, "--capacity", "lots") == 1
    assert _cli(path, "--preorderings", "TXQ") == 1
    assert _cli(tmp_path / "missing.csv") == 1
    d = DATA / "challenging" / "D.1048576.csv"
    assert _cli(d, "--capacity", "1000KiB", "--time-limit", "0.01", "--no-greedy-first") in (0, 3)


def test_cli_issue13_messages(tmp_path, capsys):
    """Issue 13 item 17: a byte-order mark is not part of the header; greedy below the
    lower bound is proven infeasible (exit 2, the bound printed), and a greedy failure
    above it proves nothing (status unknown, exit 3, never 'timeout')."""
    bom = tmp_path / "bom.csv"
    bom.write_text("id,lower,upper,size\na,0,2,4\nb,1,3,8\nc,2,4,4\n", encoding="utf-8-sig")
    assert bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert [b.id for b in read_csv(bom)] == ["a", "b", "c"]
    assert _cli(bom, "--solver", "greedy", "--capacity", "12") == 0
    assert "status=feasible" in capsys.readouterr().out
    assert _cli(bom, "--solver", "greedy", "--capacity", "11") == 2
    out = capsys.readouterr().out
    assert "status=infeasible" in out and "lower_bound=12" in out
    # Found by a random search: the best greedy packing needs 9 B, LOAD and the optimum are 8.
    tricky = tmp_path / "tricky.csv"
    tricky.write_text("id,lower,upper,size\na,2,5,2\nb,0,3,2\nc,4,6,5\nd,0,1,6\n")
    buffers = read_csv(tricky)
    assert height(buffers, greedy(buffers)) > load(buffers) and solve(buffers, load(buffers)).status == "feasible"
    assert _cli(tricky, "--solver", "greedy", "--capacity", str(load(buffers))) == 3
    out = capsys.readouterr().out
    assert "status=unknown" in out and "timeout" not in out
