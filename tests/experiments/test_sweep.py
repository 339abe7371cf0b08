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


def test_a_small_compare_sweep_on_a_local_ray_instance_matches_the_process_pool(tmp_path):
    """--launcher ray: the cells run as Ray tasks on a local instance and give the rows a
    process pool gives (the simulator is deterministic per seed)."""
    pytest.importorskip("ray")
    from experiments.compare.setup_grid import (CompareSetup, PolicySpec, base_workload,
                                                sim_config, workload_at)
    from experiments.compare.sweep import Job, run_jobs
    from experiments.launchers import make_executor

    setup = CompareSetup(duration_s=3.0, min_requests=8, max_requests=16, max_output_tokens=48)
    base, config = base_workload(setup), sim_config(setup)
    jobs = [Job(spec, load, workload_at(base, load, 12), config)
            for spec in (PolicySpec("none", "none"), PolicySpec("fixed_k3", "fixed", (("k", 3),)))
            for load in (2.0, 6.0)]
    with make_executor("ray", 2) as ray_pool:
        on_ray = run_jobs(jobs, executor=ray_pool, cache_dir=tmp_path / "cells")
    local = run_jobs(jobs, workers=2)
    keep = ["policy", "trace.rate", "goodput_req_s", "tpot_s_mean", "num_steps"]
    assert len(on_ray) == 4
    assert on_ray[keep].equals(local[keep])
    assert len(list((tmp_path / "cells").glob("*.json"))) == 4        # stored: resumable


def test_unknown_launcher_is_one_line_naming_the_choices():
    from experiments.launchers import make_executor
    with pytest.raises(ValueError, match="local, ray"):
        make_executor("slurm", 2)
