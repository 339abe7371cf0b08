"""Entry point: ``simulate(trace, policy, config) -> RunResult``."""
from __future__ import annotations

import dataclasses
import time

import simpy

from analysis.schema import RunResult
from sim.core.engine import Engine
from sim.core.results import request_frame


def simulate(trace, policy, config) -> RunResult:
    """Simulate ``trace`` served by one engine running ``policy`` under ``config``.

    Same trace, policy parameters and config (seed included) give identical tables.
    """
    return simulate_with(trace, policy, config)


def simulate_with(trace, policy, config, cost_model=None, acceptance_model=None,
                  multi_step: bool = True) -> RunResult:
    """``simulate`` with an explicit cost or acceptance model (tests, custom studies)
    instead of the ones ``config`` names. ``multi_step=False`` forces the per-step path
    (no multi-step epochs, sim/fast/epoch.py) for comparisons."""
    t0 = time.perf_counter()
    engine = Engine(trace, policy, config, cost_model=cost_model,
                    acceptance_model=acceptance_model, multi_step=multi_step)
    env = simpy.Environment()
    env.process(engine.arrivals(env))
    env.process(engine.run(env))
    env.run()
    requests = request_frame(engine.reqs, trace.dataset, trace.slo_class)
    steps = engine.rec.frame()
    wall = time.perf_counter() - t0
    meta = {"backend": "sim", "policy": getattr(policy, "name", type(policy).__name__),
            "policy_class": type(policy).__qualname__, "trace": trace.name,
            "trace_meta": dict(trace.meta), "seed": config.seed,
            "config": dataclasses.asdict(config), "wall_s": wall,
            "num_kv_blocks": engine.sched.num_kv_blocks, "num_steps": engine.step_index,
            "num_epochs": engine.num_epochs, "num_epoch_steps": engine.num_epoch_steps,
            "sim_end_s": float(env.now)}
    return RunResult(requests=requests, steps=steps, meta=meta)
