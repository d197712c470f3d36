"""Faults for tests/test_sweep.py, run inside the sweep's worker processes, which import
this module by name (the test puts `point` in place of `planner.sweep.solve_point`). Kept
apart from the test file so a worker imports planner.sweep alone, not pytest and onnx."""
from __future__ import annotations

import importlib
import os
import signal
import time

REAL_SOLVE = importlib.import_module("planner.sweep").solve_point


def point(task, shipped):
    """At M_H the worker is killed, at M_P it hangs past any task time, at 321 B its solver
    raises; elsewhere it plans."""
    if task.budget_names == ("M_H",):
        os.kill(os.getpid(), signal.SIGKILL)
    if task.budget_names == ("M_P",):
        time.sleep(600)
    if task.budget_bytes == 321:
        raise RuntimeError("solver bug")
    return REAL_SOLVE(task, shipped)
