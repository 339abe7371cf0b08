"""Stretches of pure-decode steps of an adaptive policy whose decisions are compiled code
(``policies.interface.CompiledDecisions``: oracle, oracle_slo, smartspec, threshold,
vllm_adaptive_verify, adaspec, slo_goodput, oracle_rate, slo_goodput_tree), as one compiled
loop (sim/fast/decision_kernel.py).

Each step of the loop is what the engine's compiled single steps do for such a policy
(``step_compiled.compiled_plan``, the policy's ``decide``, ``compiled_step`` or
``compiled_chain_step``, its ``observe``): the plan's KV blocks for the decode tokens, the
policy's compiled ``decide`` on the step's columns (match lengths from the step's uniforms,
as the engine's draw has them), the step itself by the same compiled functions
(``step_kernel.STEP_KERNEL``; or the draw's confidences, draft passes, verification and end
with the policy's own drafting or verification rule inside; the same uniforms from the same
pool), then the policy's ``commit``. The loop stops where the engine
would do something else: before a step whose drafts or KV blocks would not fit whole (nothing
of it applied, its uniforms given back: the engine's own path then runs it, the hook deciding
again from the same state), after a step in which a request finishes or during which the next
request arrives. The same tables and the same policy state, to the last bit (tests/sim).
"""
from __future__ import annotations

import numpy as np

from sim.core.results import StepRow
from sim.core.state import FINISHED
from sim.fast.step_compiled import TREE_TABLE_WIDTH

MAX_DECISION_STEPS = 128   # an epoch mostly ends at an arrival or a finish first
_NO_TABLE = np.zeros(1)    # the confidences' quantile tables where no rule reads them
_NO_CHANCES, _NO_FILLED = np.zeros((0, 1, 1)), np.zeros(0, np.bool_)   # no trees


def decision_epochs_apply(engine) -> bool:
    """Whether ``engine``'s stretches of pure-decode steps may run as decision epochs: its
    policy offers compiled decisions (``policies.interface.offers_compiled_decisions``), its
    steps run compiled (``Engine._compiled_steps``: default drafting and verification;
    ``Engine._chain_steps``: a policy with its own drafting or verification, whose rules
    then run inside the loop, its trees too where its compiled decisions make them,
    ``CompiledDecisions.trees``; not a tree oracle) on independent parametric steps with
    block draws."""
    from policies.interface import offers_compiled_decisions
    from sim.fast.decision_kernel import DECISION_LOOP
    policy = engine.policy
    if DECISION_LOOP is None or engine._epochs or not (
            offers_compiled_decisions(policy)
            and engine.acc.steps_independent and hasattr(engine.acc, "draw_block")):
        return False
    return engine._compiled_steps or bool(
        engine._chain_steps and not policy.needs_tree_oracle and not engine._lazy_conf)


def decision_epoch_eligible(engine) -> bool:
    """Pure decode and nobody waiting (``sim.fast.epoch.epoch_eligible``'s batch test)."""
    sched, r = engine.sched, engine.reqs
    run = sched.running
    if sched.waiting or run.shape[0] == 0:
        return False
    if engine.epoch_ready:          # an epoch just ran: its survivors all decode
        return True
    known = r.num_known[run] - r.num_computed[run]
    return bool((known == 1).all() and (r.num_out[run] > 0).all())


def run_decision_epochs(engine, now: float, kernels) -> float | None:
    """Decision epochs from ``now`` while the engine would run one next; returns when the
    last ends, or None (nothing ran: the engine's own step runs). A policy that offers no
    compiled decisions for the engine's observations (its ``compiled_decisions`` None: its
    parameters or the cost model, the same every step) turns them off for the run."""
    t, ran = now, False
    while decision_epoch_eligible(engine):
        end, more = run_decision_epoch(engine, t, kernels)
        if more is None:
            engine.fast.decision_epochs = False
        if end is None:
            break
        t, ran = end, True
        if not more:
            break
    return t if ran else None


def run_decision_epoch(engine, now: float, kernels) -> tuple[float | None, bool | None]:
    """One decision epoch: (its end, whether another may follow at once), (None, False) when
    its first step is left to the engine (declined, or its drafts or blocks would not fit),
    or (None, None) when the policy offers no compiled decisions."""
    r, sched, acc, eng = engine.reqs, engine.sched, engine.acc, engine.config.engine
    policy = engine.policy
    run, kmax = sched.running, acc.k_max
    n = run.shape[0]
    ctx = r.num_computed[run]
    rates = engine._true_rates           # oracle_rate's
    obs = r.observation(run, ctx, r.num_out[run], now, engine.step_index, kmax,
                        engine.policy_cost,
                        true_accept_rates=None if rates is None else rates[run])
    compiled = policy.compiled_decisions(obs)
    if (compiled is None or compiled.drafting != policy.custom_drafting
            or compiled.verifying != policy.custom_verify
            or (policy.makes_trees and not compiled.trees)):
        return None, None
    u = acc._u.take(MAX_DECISION_STEPS * n * kmax)
    arrival = engine.next_arrival_s
    arrival = np.inf if arrival is None else float(arrival)
    from sim.fast.decision_kernel import DECISION_LOOP
    ruled = compiled.drafting or compiled.verifying
    q_hi, q_lo = acc.confidence_tables if ruled else (_NO_TABLE, _NO_TABLE)
    chances, filled = _NO_CHANCES, _NO_FILLED
    if compiled.trees:                  # the tree outcomes' pass chances, formed for the rows
        table = acc.tree_pass_table(TREE_TABLE_WIDTH)
        if not table.filled[run].all():
            table.fill(run)
        chances, filled = table.chances, table.filled
    S, times, counts, spec_k, accepted, free_blocks, fin = DECISION_LOOP(
        compiled.rule_args, u, kmax, acc.rate, run, MAX_DECISION_STEPS, sched.free_blocks,
        eng.block_size, eng.max_num_batched_tokens, float(now), arrival,
        float(eng.accept_ewma_alpha), FINISHED, kernels.inputs, r.arrival_s, r.tpot_slo_s,
        r.ttft_slo_s, acc.rate_table, q_hi, q_lo, chances, filled, r.last_conf, r.arrays)
    acc.give_back((MAX_DECISION_STEPS - S) * n * kmax)
    compiled.finish()
    if S == 0:
        return None, False
    sched.free_blocks = free_blocks
    if fin.shape[0]:
        sched.release(fin)
    times, counts = times.tolist(), counts.tolist()
    first = engine.step_index
    engine.rec.add_block(StepRow(
        step=range(first, first + S), start_s=times[0], latency_s=times[1], draft_s=times[2],
        verify_s=times[3], num_seqs=n, num_decode_seqs=n, num_prefill_tokens=0,
        num_scheduled_tokens=[n + x for x in counts[0]], num_spec_tokens=counts[0],
        num_accepted=counts[1], num_emitted=counts[2], num_waiting=0,
        kv_blocks_used=[sched.num_kv_blocks - x for x in counts[3]], spec_k=list(spec_k),
        accepted=list(accepted), spec_request_ids=[obs.request_ids] * S), S)
    engine.step_index = first + S
    engine.num_epochs += 1
    engine.num_epoch_steps += S
    engine.epoch_ready = True
    end = times[0][-1] + times[1][-1]
    more = ((fin.shape[0] > 0 or S == MAX_DECISION_STEPS) and end < arrival
            and sched.running.shape[0] > 0)
    return end, more
