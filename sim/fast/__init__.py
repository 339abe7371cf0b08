"""Faster ways through the reference engine step (sim/core/engine.py), behind one protocol.

An engine builds its ``FastPath`` once (``fast_path``; None when nothing here applies) and
asks it, before every step, to ``advance`` from the current state: run pure-decode epochs up
to the next event (numpy, sim/fast/epoch.py; or compiled, epoch_kernel.py) or one compiled
step (step_kernel.py, plan_kernel.py), returning the time that took; or decline (None), and
the reference step runs. Same draws, same order, the same tables to the last bit (tests/sim).
"""
from __future__ import annotations

import math

from sim.fast.decision_epoch import (decision_epoch_eligible, decision_epochs_apply,
                                     run_decision_epochs)
from sim.fast.epoch import epoch_eligible, run_epoch
from sim.fast.epoch_compiled import KernelInputs, kernel_inputs
from sim.fast.step_compiled import (StepKernels, compiled_chain_step, compiled_end,
                                   compiled_plan, compiled_step, step_kernels)


class FastPath:
    """Epochs for a static policy (``engine._epochs``), compiled when ``kernel_inputs``
    exist, and compiled steps when ``step_kernels`` exist (EngineConfig.compiled_epochs):
    after a static policy's decision, or every step of an adaptive chain policy's
    (``engine._compiled_steps``), which observes each one (``observe_step``); any other
    adaptive policy's steps get the compiled plan and end around its hooks
    (``engine._compiled_ends``). A policy that offers its decisions as compiled code
    (``Policy.compiled_decisions``) runs its stretches of pure-decode steps as decision
    epochs (sim/fast/decision_epoch.py)."""

    def __init__(self, engine, kernel_inputs: KernelInputs | None,
                 step_kernels: StepKernels | None):
        self.engine = engine
        self.kernel_inputs, self.step_kernels = kernel_inputs, step_kernels
        self.decision_epochs = step_kernels is not None and decision_epochs_apply(engine)
        self.end_s: float | None = None       # the last epochs' end (``_until``)

    def _until(self, now: float, end: float) -> float:
        """A delay that brings simpy's clock (``now + delay``) to ``end`` or just before it,
        with ``end`` kept for the engine to wait the rest (``end_s``): epochs end at their
        last step's start + latency, as the per-step clock does, but ``end - now`` rounds
        when ``end`` > 2 ``now``, and no delay may then land exactly (ties round to even)."""
        delay = end - now
        while delay > 0.0 and now + delay > end:
            delay = math.nextafter(delay, -math.inf)
        self.end_s = end
        return delay

    def advance(self, now: float) -> float | None:
        """Seconds advanced from ``now`` (the step or epochs are applied, or left pending
        for the engine to end), or None: declined, nothing changed."""
        e, self.end_s = self.engine, None
        if epoch_eligible(e):
            end = run_epoch(e, now, self.kernel_inputs)
            if end is not None:
                return self._until(now, end)
        if self.step_kernels is None:
            return None
        if self.decision_epochs and decision_epoch_eligible(e):
            end = run_decision_epochs(e, now, self.step_kernels)
            if end is not None:
                return self._until(now, end)
        e.epoch_ready = False
        if e._compiled_ends:         # the policy's hooks the reference way, the rest compiled
            step = e.decide_step(now, compiled_plan(e, self.step_kernels), draw_first=True)
            if e._chain_steps and step.widths is None:
                return compiled_chain_step(e, self.step_kernels, now, step)
            latency = e.run_decided(now, step)
            compiled_end(e, self.step_kernels)
            return latency
        # an oracle reads the match lengths before it decides: the kernel gets their uniforms
        step = e.decide_step(now, compiled_plan(e, self.step_kernels),
                             draw_first=e.policy.needs_oracle)
        d = step.decision
        if step.widths is None and d.draft_stop_confidence <= 0.0 \
                and d.verify_token_budget is None:
            return compiled_step(e, self.step_kernels, now, step)
        return e.run_decided(now, step)    # a decision the kernel does not cover


def steps_compile(policy) -> bool:
    """Whether an adaptive policy's steps may run through the compiled step kernel: a chain
    policy (no trees) whose hooks are decide() and observe() (default drafting and
    verification) and which reads no draft confidences (``needs_draft_confidences``).
    The engine adds its own conditions (``Engine._compiled_steps``, the kernels' inputs)."""
    return not (policy.custom_drafting or policy.custom_verify or policy.makes_trees
                or policy.needs_tree_oracle or policy.needs_draft_confidences)


def fast_path(engine) -> FastPath | None:
    """The engine's fast path, or None: per-step runs (``multi_step=False``), and for an
    adaptive policy vLLM's draft-pass accounting or no compiled kernels (the opt-in, numba,
    a roofline, parametric acceptance: ``kernel_inputs``). Step jitter keeps an adaptive
    policy's steps off the compiled step kernel, not off the compiled plan and end."""
    if not (engine._epochs or engine._compiled_steps or engine._compiled_ends):
        return None
    inputs = kernel_inputs(engine)      # None without the opt-in (numba not even imported)
    if inputs is None and not engine._epochs:
        return None                     # an adaptive policy: only compiled paths would help
    return FastPath(engine, inputs, step_kernels(engine, inputs))
