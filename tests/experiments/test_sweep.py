"""experiments.sweep.run_sweep: the one runner every sweep goes through."""
from __future__ import annotations

import pytest

from experiments.sweep import RowCache, run_sweep


def square(x: int) -> dict:
    if x < 0:
        raise ValueError(f"negative input {x}: pass a count")
    return {"x": x, "y": x * x}


def test_results_in_task_order_in_process_and_in_workers():
    tasks = [3, 1, 2, 0]
    want = [square(t) for t in tasks]
    assert run_sweep(tasks, square) == want
    # cost orders execution only (costly first), never the returned list
    assert run_sweep(tasks, square, workers=2, cost=lambda t: t) == want


def test_resume_runs_only_missing_tasks(tmp_path):
    ran = []

    def counting(x):
        ran.append(x)
        return square(x)

    store = RowCache(tmp_path, key=lambda t: f"t{t}")
    first = run_sweep([1, 2, 3], counting, store=store)
    (tmp_path / "t2.json").unlink()                 # as if interrupted before task 2
    seen = []
    again = run_sweep([1, 2, 3], counting, store=store,
                      progress=lambda row, done, total: seen.append((row["x"], done, total)))
    assert ran == [1, 2, 3, 2]
    assert again == first
    assert seen == [(2, 3, 3)]                      # stored tasks count as done


def test_check_runs_on_every_task_before_any_runs():
    ran = []

    def check(x):
        if x == 9:
            raise ValueError("task 9 is malformed")

    with pytest.raises(ValueError, match="task 9"):
        run_sweep([1, 9], lambda x: ran.append(x), check=check)
    assert ran == []


def test_worker_input_error_stays_an_input_error_naming_the_task():
    with pytest.raises(ValueError, match=r"sweep task cell -1 failed: negative input -1"):
        run_sweep([1, -1], square, workers=2, describe=lambda t: f"cell {t}")
    with pytest.raises(ZeroDivisionError):            # in this process: unchanged
        run_sweep([0], lambda x: 1 / x)
