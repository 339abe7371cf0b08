"""Epochs through the compiled kernel (sim/fast/epoch_kernel.py): its inputs from the engine,
chained epochs, and the scheduler and step-recorder bookkeeping after each."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from sim.core.results import StepRow
from sim.core.state import FINISHED

MAX_KERNEL_STEPS = 128   # compiled steps are cheap: an epoch mostly ends at an event first


def compiled_enabled(engine) -> bool:
    """Opt-in (EngineConfig.compiled_epochs; sim.bench and experiments.compare turn it on).
    It used to be off wherever live engines ran too: numba's llvmlite broke vLLM 0.32's CPU
    kernel scan for engines started later in the process, which ``exec.engine.
    shield_llvmlite`` now prevents."""
    return bool(engine.config.engine.compiled_epochs)


class KernelInputs(NamedTuple):
    """What the compiled kernels read besides the request table, as float64 arrays."""

    target_coef: np.ndarray      # (5,) the roofline's target coefficients (scalar_coefficients)
    draft_coef: np.ndarray       # (5,) the draft's (zeros without a draft model)
    position_decay: np.ndarray   # (k_max,) parametric acceptance's per-position decay


def kernel_inputs(engine) -> KernelInputs | None:
    """The compiled kernels' inputs when they can run this engine (opt-in, numba, a roofline
    cost model, parametric acceptance), else None. The engine calls it once when built."""
    if not compiled_enabled(engine):
        return None
    from sim.fast import epoch_kernel as ek   # imports numba: only when asked for (see below)
    coef = getattr(engine.cost, "scalar_coefficients", None)
    acc = engine.acc
    # parametric acceptance (its uniform pool, rates and decay); k_max within _numpy_sum's
    if (ek.EPOCH_KERNEL is not None and coef is not None and engine.k_max <= 128
            and hasattr(acc, "_u") and hasattr(acc, "_decay") and hasattr(acc, "rate")):
        tgt, drf = coef()
        return KernelInputs(np.asarray(tgt, np.float64),
                            np.asarray(drf if drf is not None else (0.0,) * 5, np.float64),
                            np.ascontiguousarray(acc._decay, np.float64))
    return None


def run_kernel_epochs(engine, now: float, decide, inputs):
    """Epochs from ``now``; returns when the last ends, or None (nothing ran). One that ends
    at a finish before the next arrival is followed by the next at once, as the engine would
    (``decide(engine, t)``: sim/fast/epoch.py's (k, sum of k, Observation) or None)."""
    t, ran = now, False
    while True:
        got = decide(engine, t)
        if got is None:
            break
        k, n_spec, obs = got
        end, more = run_kernel_epoch(engine, t, engine.sched.running,
                                     np.ascontiguousarray(k), n_spec, obs.request_ids, inputs)
        if end is None:
            break
        t, ran = end, True
        if not more:
            break
    return t if ran else None


def run_kernel_epoch(engine, now: float, run, k, n_spec: int, ids, inputs: KernelInputs):
    """One epoch through the compiled kernel: (its end time, whether the engine's next move
    is another epoch), or (None, False) when its first step does not fit (nothing changed,
    draws given back). ``ids``: the rows' request ids."""
    r, sched, acc, eng = engine.reqs, engine.sched, engine.acc, engine.config.engine
    n, kmax = run.shape[0], acc.k_max
    # at most MAX_KERNEL_STEPS: the kernel stops at the first finish; unused draws go back
    u = acc._u.take(MAX_KERNEL_STEPS * n * kmax)
    arrival = engine.next_arrival_s
    arrival = np.inf if arrival is None else float(arrival)
    used0 = sched.num_kv_blocks - sched.free_blocks
    from sim.fast import epoch_kernel as ek
    # the bundles go in spread: numba types a tuple argument in Python (~2 us more per call)
    S, times, counts, accepted, fin = ek.EPOCH_KERNEL(     # scalars typed as in warm_up
        u, kmax, acc.rate, run, k, MAX_KERNEL_STEPS, sched.free_blocks, used0, eng.block_size,
        float(now), float(arrival), float(eng.accept_ewma_alpha), FINISHED, *inputs,
        *r.arrays)
    acc.give_back((MAX_KERNEL_STEPS - S) * n * kmax)
    if S == 0:
        return None, False
    times = times.tolist()
    starts, lat = times[0], times[1]
    counts = counts.tolist()
    sched.free_blocks -= counts[2][-1] - used0
    if fin.shape[0]:
        sched.release(fin)
    first = engine.step_index
    engine.rec.add_block(StepRow(
        step=range(first, first + S), start_s=starts, latency_s=lat, draft_s=times[2],
        verify_s=times[3], num_seqs=n, num_decode_seqs=n, num_prefill_tokens=0,
        num_scheduled_tokens=n + n_spec, num_spec_tokens=n_spec, num_accepted=counts[0],
        num_emitted=counts[1], num_waiting=0, kv_blocks_used=counts[2], spec_k=[k] * S,
        accepted=accepted, spec_request_ids=[ids] * S), S)
    engine.step_index = first + S
    engine.num_epochs += 1
    engine.num_epoch_steps += S
    engine.epoch_ready = True
    end = starts[-1] + lat[-1]
    # the engine would run another epoch next when this one ended at a finish (or its step
    # cap), the batch is not empty and no request arrives before it ends
    more = ((fin.shape[0] > 0 or S == MAX_KERNEL_STEPS) and end < arrival
            and sched.running.shape[0] > 0)
    return end, more
