"""Faster ways through the reference engine step (sim/core/engine.py), behind one protocol.

An engine builds its ``FastPath`` once (``fast_path``; None when nothing here applies) and
asks it, before every step, to ``advance`` from the current state: run pure-decode epochs up
to the next event (numpy, sim/fast/epoch.py; or compiled, epoch_kernel.py) or one compiled
step (step_kernel.py, plan_kernel.py), returning the time that took; or decline (None), and
the reference step runs. Same draws, same order, the same tables to the last bit (tests/sim).
"""
from __future__ import annotations

from sim.fast.epoch import epoch_eligible, run_epoch
from sim.fast.epoch_compiled import KernelInputs, kernel_inputs
from sim.fast.step_compiled import StepKernels, compiled_plan, compiled_step, step_kernels


class FastPath:
    """Epochs for a static policy (``engine._epochs``), compiled when ``kernel_inputs``
    exist, and compiled steps when ``step_kernels`` exist (EngineConfig.compiled_epochs)."""

    def __init__(self, engine, kernel_inputs: KernelInputs | None,
                 step_kernels: StepKernels | None):
        self.engine = engine
        self.kernel_inputs, self.step_kernels = kernel_inputs, step_kernels

    def advance(self, now: float) -> float | None:
        """Seconds advanced from ``now`` (the step or epochs are applied, or left pending
        for the engine to end), or None: declined, nothing changed."""
        e = self.engine
        if epoch_eligible(e):
            latency = run_epoch(e, now, self.kernel_inputs)
            if latency is not None:
                return latency
        if self.step_kernels is None:
            return None
        e.epoch_ready = False
        step = e.decide_step(now, compiled_plan(e, self.step_kernels), draw_first=False)
        d = step.decision
        if step.widths is None and d.draft_stop_confidence <= 0.0 \
                and d.verify_token_budget is None:
            return compiled_step(e, self.step_kernels, now, step)
        return e.run_decided(now, step)    # a decision the kernel does not cover


def fast_path(engine) -> FastPath | None:
    """The engine's fast path, or None (adaptive policies, per-step runs, other drafters)."""
    if not engine._epochs:
        return None
    inputs = kernel_inputs(engine)
    return FastPath(engine, inputs, step_kernels(engine, inputs))
