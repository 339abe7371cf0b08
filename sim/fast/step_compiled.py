"""The engine's side of the compiled per-step kernel (sim/fast/step_kernel.py): when it applies,
its inputs, and the scheduler and step-recorder bookkeeping after it.

It applies under the same opt-in and conditions as compiled epochs (sim/fast/epoch_compiled.py:
numba, a roofline, parametric acceptance, ``EngineConfig.compiled_epochs``) to engines that
run epochs (a static policy, ``multi_step``) and read no step confidences (no ``observe``).
``multi_step=False`` keeps the numpy per-step path: the reference the tests compare against.
"""
from __future__ import annotations

from itertools import islice
from typing import Callable, NamedTuple

import numpy as np

from policies.interface import DraftState, Feedback
from sim.core.results import StepRow
from sim.core.state import FINISHED, RUNNING
from sim.core.step_plan import ensure_confidences
from sim.models.acceptance import StepDraw
from sim.fast.epoch_compiled import KernelInputs


class StepKernels(NamedTuple):
    """The compiled per-step path of one engine."""

    inputs: KernelInputs
    step: Callable               # sim/fast/step_kernel.py's STEP_KERNEL
    plan: Callable               # sim/fast/plan_kernel.py's PLAN_KERNEL (Scheduler.plan_base)
    end: Callable                # sim/fast/step_kernel.py's STEP_END_KERNEL (end_step)
    draft: Callable              # sim/fast/step_kernel.py's DRAFT_PASS_KERNEL (Engine._draft)
    draft_seconds: Callable      # sim/fast/step_kernel.py's DRAFT_SECONDS_KERNEL
    uniform_draft_seconds: Callable   # ... UNIFORM_DRAFT_SECONDS_KERNEL (uniform_chain_draft_s)
    chain_verify_end: Callable   # ... CHAIN_VERIFY_END_KERNEL (run_decided's end + end_step)
    draw: Callable               # sim/fast/step_kernel.py's DRAW_KERNEL
    tree_min_widths: Callable    # sim/fast/step_kernel.py's TREE_MIN_WIDTHS_KERNEL
    tree_outcome: Callable       # sim/fast/step_kernel.py's TREE_OUTCOME_KERNEL
    tree_nodes: Callable         # sim/fast/step_kernel.py's TREE_NODES_KERNEL
    fit: Callable                # sim/fast/step_kernel.py's FIT_KERNEL (fit_speculation)
    verify_context: Callable     # sim/fast/step_kernel.py's VERIFY_CONTEXT_KERNEL


def step_kernels(engine, inputs: KernelInputs | None) -> StepKernels | None:
    """The compiled step and plan kernels when they apply to ``engine`` (its epochs run
    compiled and no step's confidences are read), else None."""
    if inputs is None or not ((engine._epochs and engine._conf_unused)
                              or engine._compiled_steps or engine._compiled_ends):
        return None
    from sim.fast.plan_kernel import PLAN_KERNEL
    from sim.fast.step_kernel import (DRAFT_PASS_KERNEL, DRAFT_SECONDS_KERNEL, DRAW_KERNEL,
                                      FIT_KERNEL, STEP_END_KERNEL, STEP_KERNEL,
                                      TREE_MIN_WIDTHS_KERNEL, TREE_NODES_KERNEL,
                                      TREE_OUTCOME_KERNEL, UNIFORM_DRAFT_SECONDS_KERNEL,
                                      VERIFY_CONTEXT_KERNEL, CHAIN_VERIFY_END_KERNEL)
    if STEP_KERNEL is None:
        return None
    return StepKernels(inputs, STEP_KERNEL, PLAN_KERNEL, STEP_END_KERNEL, DRAFT_PASS_KERNEL,
                       DRAFT_SECONDS_KERNEL, UNIFORM_DRAFT_SECONDS_KERNEL,
                       CHAIN_VERIFY_END_KERNEL, DRAW_KERNEL,
                       TREE_MIN_WIDTHS_KERNEL, TREE_OUTCOME_KERNEL, TREE_NODES_KERNEL,
                       FIT_KERNEL, VERIFY_CONTEXT_KERNEL)


def compiled_plan(engine, kernels: StepKernels):
    """``Scheduler.plan_base`` through sim/fast/plan_kernel.py; the Python plan when running
    requests must be preempted (the kernel then wrote nothing)."""
    sched, r, cfg = engine.sched, engine.reqs, engine.config.engine
    run, waiting = sched.running, sched.waiting
    m = min(len(waiting), cfg.max_num_seqs - run.shape[0])
    head = np.array(list(islice(waiting, m)) if m > 0 else [], np.int64)
    fits, rows, tokens, is_dec, admitted, free_blocks = kernels.plan(
        run, head, cfg.max_num_batched_tokens, cfg.max_num_seqs, bool(cfg.chunked_prefill),
        sched.free_blocks, cfg.block_size, RUNNING, r.num_computed, r.num_known,
        r.num_blocks, r.num_prompt, r.status)
    if not fits:
        return sched.plan_base()
    sched.free_blocks = free_blocks
    if admitted:
        for _ in range(admitted):
            waiting.popleft()
        sched.running = np.concatenate((run, rows[rows.shape[0] - admitted:]))
    return rows, tokens, is_dec


def compiled_step(engine, kernels: StepKernels, now: float, step) -> float:
    """The rest of a decided step (sim/core/step_plan.DecidedStep) whose decision is a plain
    chain, applied now; returns its latency and leaves no pending step to end."""
    r, sched, acc, eng = engine.reqs, engine.sched, engine.acc, engine.config.engine
    rows, dec, pre, pre_tok, k = step.rows, step.dec, step.pre, step.pre_tok, step.k
    n_pre_tok, pre_ctx, ids = step.num_prefill_tokens, step.prefill_context, step.obs.request_ids
    n, kmax = dec.shape[0], acc.k_max
    if step.draw is None:                 # the draws ParametricAcceptance.draw would take
        u = acc.take_uniforms(dec)
    else:                                 # taken before an oracle's decision: the same
        u = np.ascontiguousarray(step.draw.uniforms).reshape(-1)
    if not pre.shape[0]:
        pre = pre_tok = np.zeros(0, np.int64)   # (writable: one compiled signature)
    floats, ints, num_spec, accepted, fin = kernels.step(   # bundles spread, as for epochs
        u, kmax, acc.rate, dec, k, pre, pre_tok, eng.max_num_batched_tokens - n_pre_tok - n,
        eng.max_num_batched_tokens, sched.free_blocks, eng.block_size, n_pre_tok, pre_ctx,
        rows.shape[0], float(now), float(eng.accept_ewma_alpha), FINISHED,
        *kernels.inputs, *r.arrays)
    draft_s, verify_s, _ = floats.tolist()
    n_spec, n_acc, n_emit, free_blocks, bad = ints.tolist()
    sched.free_blocks = free_blocks
    if bad:
        raise AssertionError(f"step {engine.step_index}: token budget or KV capacity exceeded")
    kv_used = sched.num_kv_blocks - free_blocks
    if fin.shape[0]:
        sched.release(fin)
    engine.rec.add(StepRow.of(
        step=engine.step_index, start_s=now, draft_s=draft_s, verify_s=verify_s,
        num_seqs=rows.shape[0], num_decode_seqs=n, num_prefill_tokens=n_pre_tok,
        num_spec_tokens=n_spec, num_accepted=n_acc, num_emitted=n_emit,
        num_waiting=step.num_waiting, kv_blocks_used=kv_used, spec_k=num_spec,
        accepted=accepted, spec_request_ids=ids))
    if engine._observes:
        observe_step(engine, now + (draft_s + verify_s), num_spec, accepted, fin, draft_s,
                     verify_s, ids)
    engine.step_index += 1
    return draft_s + verify_s


def compiled_chain_step(engine, kernels: StepKernels, now: float, step) -> float:
    """``Engine.run_decided`` and ``compiled_end`` at once for a decided plain chain of a
    policy with its own drafting or verification (``engine._compiled_ends``), drafts
    priced per request, no step jitter or per-accepted-token seconds
    (``engine._chain_steps``): the fit, the drafting and the policy's ``select_verify`` as
    there, then accepted counts, the verify pass and the step's end in one compiled call
    (``CHAIN_VERIFY_END_KERNEL``). The same tables and feedback; returns the latency."""
    r, sched, eng = engine.reqs, engine.sched, engine.config.engine
    dec, ctx, decision, obs = step.dec, step.ctx, step.decision, step.obs
    pre, pre_tok = step.pre, step.pre_tok
    n_pre_tok, pre_ctx, n = step.num_prefill_tokens, step.prefill_context, dec.shape[0]
    draw = ensure_confidences(engine.acc, step.draw, dec, decision)
    k = compiled_fit(engine, kernels, dec, step.k, eng.max_num_batched_tokens - n_pre_tok - n,
                     ctx)
    drafted, conf, draft_s = engine._draft(obs, decision, k, None, ctx,
                                           (n_pre_tok, pre_ctx, pre.shape[0]), draw)
    verified = drafted
    if n and not (engine._default_verify and decision.verify_token_budget is None):
        verified = np.minimum(np.maximum(np.asarray(engine.policy.select_verify(
            DraftState(obs, decision, drafted, conf, draft_s)), np.int64), 0), drafted)
    if not pre.shape[0]:
        pre = pre_tok = np.zeros(0, np.int64)   # (writable: one compiled signature)
    (num_computed, num_out, num_known, _, num_target_out, num_drafted, num_accepted,
     accept_ewma, status, first_token_s, finish_s) = r.arrays
    verify_s, end, n_spec, n_acc, n_emit, bad, accepted, fin = kernels.chain_verify_end(
        verified, draw.match_len, float(now), draft_s, dec, ctx, step.out, pre, pre_tok,
        n_pre_tok, pre_ctx, step.rows.shape[0], eng.max_num_batched_tokens,
        sched.free_blocks, float(eng.accept_ewma_alpha), FINISHED, kernels.inputs.target_coef,
        num_computed, num_out, num_known, num_target_out, num_drafted, num_accepted,
        accept_ewma, status, first_token_s, finish_s)
    if bad:
        raise AssertionError(f"step {engine.step_index}: token budget or KV capacity exceeded")
    if n_spec and n and not engine._lazy_conf:
        r.last_conf[dec] = conf
    kv_used = sched.num_kv_blocks - sched.free_blocks       # before the finished release
    if fin.shape[0]:
        sched.release(fin)
    ids = obs.request_ids
    engine.rec.add(StepRow.of(
        step=engine.step_index, start_s=now, draft_s=draft_s, verify_s=verify_s,
        num_seqs=step.rows.shape[0], num_decode_seqs=n, num_prefill_tokens=n_pre_tok,
        num_spec_tokens=n_spec, num_accepted=n_acc, num_emitted=n_emit,
        num_waiting=step.num_waiting, kv_blocks_used=kv_used, spec_k=verified,
        accepted=accepted, spec_request_ids=ids))
    if engine._observes:
        observe_step(engine, end, verified, accepted, fin, draft_s, verify_s, ids, conf)
    engine.step_index += 1
    return draft_s + verify_s


def compiled_end(engine, kernels: StepKernels) -> None:
    """sim/core/step_end.py's ``end_step`` of the engine's pending step, applied now through
    the compiled ``STEP_END_KERNEL`` (for a policy with its own drafting or verification,
    whose step ran the reference way up to its latency): the same tables and feedback, at
    once rather than at the step's end, as compiled steps are."""
    step, engine.pending = engine.pending, None
    start, rows, dec, pre, pre_tok = step.start_s, step.rows, step.dec, step.pre, step.pre_tok
    num_spec, accepted, conf = step.num_spec, step.accepted, step.confidences
    draft_s, verify_s, num_waiting = step.draft_s, step.verify_s, step.num_waiting
    n_pre_tok, n_spec = step.num_prefill_tokens, step.num_spec_tokens
    ctx, out, ids = step.ctx, step.out, step.request_ids
    r, sched = engine.reqs, engine.sched
    if not pre.shape[0]:
        pre = pre_tok = np.zeros(0, np.int64)   # (one compiled signature)
    (num_computed, num_out, num_known, _, num_target_out, num_drafted, num_accepted,
     accept_ewma, status, first_token_s, finish_s) = r.arrays
    end = start + (draft_s + verify_s)
    n_acc, n_emit, fin = kernels.end(
        end, dec, ctx, out, num_spec, accepted, n_spec, pre, pre_tok,
        float(engine.config.engine.accept_ewma_alpha), FINISHED, num_computed, num_out,
        num_known, num_target_out, num_drafted, num_accepted, accept_ewma, status,
        first_token_s, finish_s)
    if n_spec and dec.shape[0] and not engine._lazy_conf:
        r.last_conf[dec] = conf
    kv_used = sched.num_kv_blocks - sched.free_blocks
    if fin.shape[0]:
        sched.release(fin)
    engine.rec.add(StepRow.of(
        step=engine.step_index, start_s=start, draft_s=draft_s, verify_s=verify_s,
        num_seqs=rows.shape[0], num_decode_seqs=dec.shape[0], num_prefill_tokens=n_pre_tok,
        num_spec_tokens=n_spec, num_accepted=n_acc, num_emitted=n_emit,
        num_waiting=num_waiting, kv_blocks_used=kv_used, spec_k=num_spec, accepted=accepted,
        spec_request_ids=ids))
    if engine._observes:
        observe_step(engine, end, num_spec, accepted, fin, draft_s, verify_s, ids, conf)
    engine.step_index += 1


def compiled_drafting(engine, kernels: StepKernels, obs, decision, k, widths, ctx, prefill,
                      seen) -> tuple:
    """``Engine._draft``'s loop under the roofline (chains, or trees of ``widths``), each
    pass's bookkeeping in one compiled call (``DRAFT_PASS_KERNEL``) around the policy's
    ``continue_drafting``: the same drafted counts, confidences and seconds. Returns
    (drafted, seconds spent: the last pass's np.sum of the passes so far, or every pass
    re-costed once a stopped request drafted again, as the loop has it)."""
    n_pre_tok, pre_ctx, n_pre_seqs = prefill
    n = k.shape[0]
    drafted, more = np.zeros(n, np.int64), k > 0
    was_active = np.zeros(n, np.bool_)
    pass_s = np.zeros(int(k.max()))
    j, restarted, spent = 0, False, None
    tree = _kernel_widths(widths)
    while True:
        go, restarted, drafted, active, conf, spent_now = kernels.draft(
            more, was_active, drafted, k, ctx, j, restarted, kernels.inputs.draft_coef,
            n_pre_tok, pre_ctx, n_pre_seqs, pass_s, seen, tree)
        if not go:
            return drafted, spent
        spent = spent_now
        if restarted:
            spent = compiled_draft_s(kernels, drafted, widths, ctx, prefill)
        was_active, j = active, j + 1
        more = np.asarray(engine.policy.continue_drafting(
            DraftState(obs, decision, drafted, conf, spent)), bool)


_NO_WIDTHS = np.zeros((0, 0), np.int64)      # chains: the drafting kernel's empty widths
_NO_TABLE = np.zeros(0)      # DRAW_KERNEL's quantile tables when no confidence is looked up


def _kernel_widths(widths) -> np.ndarray:
    """A step's tree widths as the drafting kernels take them (empty for chains)."""
    return _NO_WIDTHS if widths is None else np.ascontiguousarray(widths, np.int64)


def fused_drafting(kernels: StepKernels, compiled, decision, k, widths, ctx, prefill,
                   seen) -> tuple:
    """``compiled_drafting`` with the policy's rule (``Policy.compiled_drafting``) called
    inside one compiled loop (``step_kernel.drafting_loop``) instead of its hook per pass:
    the same drafted counts and seconds (None when no pass ran), and the policy's state
    read back by ``compiled.finish``."""
    from sim.fast.step_kernel import drafting_loop
    n_pre_tok, pre_ctx, n_pre_seqs = prefill
    tree = _kernel_widths(widths)
    drafted, spent = drafting_loop(compiled.rule)(
        k, np.asarray(decision.num_spec_tokens, np.int64), ctx, seen, tree,
        kernels.inputs.draft_coef, int(n_pre_tok), int(pre_ctx), int(n_pre_seqs),
        compiled.args)
    compiled.finish()
    return drafted, (None if spent != spent else float(spent))


def compiled_draw(acc, kernels: StepKernels, rows, with_confidences: bool) -> StepDraw:
    """``ParametricAcceptance.draw(rows, ..., with_confidences)`` with its match lengths and
    confidences in one compiled call (``DRAW_KERNEL``): the same uniforms taken from the
    same pool, the same numbers."""
    u, rates = acc.step_uniforms(rows)
    tables = acc.confidence_tables if with_confidences else (_NO_TABLE, _NO_TABLE)
    match, conf = kernels.draw(u, rates, *tables, with_confidences)
    return StepDraw(match, conf if with_confidences else None, u, rates)


def compiled_fit(engine, kernels: StepKernels, rows, spec, budget: int, computed) -> np.ndarray:
    """``Scheduler.fit_speculation(rows, spec, budget, computed)`` in one compiled call
    (``FIT_KERNEL``): the same counts, the same blocks allocated."""
    sched = engine.sched
    fit, sched.free_blocks = kernels.fit(rows, computed, spec, int(budget),
                                         engine.reqs.num_blocks, sched.free_blocks,
                                         engine.config.engine.block_size)
    return fit


def compiled_tree_min_widths(acc, kernels: StepKernels, rows, draw: StepDraw,
                             max_width: int) -> np.ndarray:
    """``draw.tree_min_widths(max_width)`` for a parametric draw of ``rows`` in one compiled
    call (``TREE_MIN_WIDTHS_KERNEL``) over the model's ``TreePassTable``: the same powers,
    formed once per request."""
    table = acc.tree_pass_table(max_width)
    u = draw.uniforms
    out, done = kernels.tree_min_widths(u, rows, table.chances, table.filled)
    if not done:
        table.fill(rows)
        out, done = kernels.tree_min_widths(u, rows, table.chances, table.filled)
    if table.max_width > max_width:     # a wider table: past max_width is max_width + 1
        np.minimum(out, max_width + 1, out=out)
    return out


def compiled_tree_outcome(acc, kernels: StepKernels, rows, draw: StepDraw, widths: np.ndarray,
                          verified: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tree step's (verified nodes, accepted depths) in one compiled call
    (``TREE_OUTCOME_KERNEL``) over the model's ``TreePassTable``: the widths of each
    request's first ``verified`` depths summed, and ``draw.tree_accepted`` of those widths;
    the numpy rule where a width is past the table's."""
    table = acc.tree_pass_table(TREE_TABLE_WIDTH)
    u = draw.uniforms
    nodes, depths, done = kernels.tree_outcome(u, rows, table.chances, table.filled, widths,
                                               verified)
    if not done:
        table.fill(rows)
        nodes, depths, done = kernels.tree_outcome(u, rows, table.chances, table.filled,
                                                   widths, verified)
    if done:
        return nodes, depths
    w = np.where(np.arange(widths.shape[1])[None, :] < verified[:, None], widths, 0)
    return w.sum(axis=1), draw.tree_accepted(w)


TREE_TABLE_WIDTH = 8     # widths the table holds for tree_accepted (the tree oracle's cap)


def compiled_uniform_draft_s(kernels: StepKernels, k: int, computed_sum: int, n: int,
                             prefill) -> float:
    """``step_plan.uniform_chain_draft_s(cost, k, computed_sum, n, prefill)`` under the
    roofline in one compiled call (``UNIFORM_DRAFT_SECONDS_KERNEL``): the same floats."""
    n_pre_tok, pre_ctx, n_pre_seqs = prefill
    return kernels.uniform_draft_seconds(int(k), int(computed_sum), int(n), int(n_pre_tok),
                                         int(pre_ctx), int(n_pre_seqs),
                                         kernels.inputs.draft_coef)


def compiled_draft_s(kernels: StepKernels, drafted, widths, ctx, prefill) -> float:
    """The draft seconds of a step's drafted counts (chains, or trees of ``widths``): what
    ``np.sum(cost.draft_step_s(*draft_pass_costs(drafted, widths, ctx, *prefill)))`` gives
    under the roofline, in one compiled call (``DRAFT_SECONDS_KERNEL``)."""
    n_pre_tok, pre_ctx, n_pre_seqs = prefill
    tree = _kernel_widths(widths)
    return kernels.draft_seconds(drafted, tree, ctx, int(n_pre_tok), int(pre_ctx),
                                 int(n_pre_seqs), kernels.inputs.draft_coef)


def observe_step(engine, end: float, num_spec, accepted, fin, draft_s: float,
                 verify_s: float, ids, conf=None) -> None:
    """The policy observes a compiled step as sim/core/step_end.py has it observe the
    reference one: the same Feedback (``conf`` None: the confidences a policy that reads
    none gets there, unset: nan), at once rather than at the step's end (arrivals in
    between touch neither the policy nor what it is told)."""
    if conf is None:
        conf = np.full((num_spec.shape[0], engine.k_max), np.nan)
    engine.policy.observe(Feedback(
        now_s=end, request_ids=ids, num_spec_tokens=num_spec, num_accepted=accepted,
        confidences=conf, draft_time_s=draft_s, verify_time_s=verify_s,
        finished_ids=engine.reqs.request_ids[fin]))


def warm_up_step() -> None:
    """Compile (or cache-load) the step kernels with the engine's argument types."""
    from sim.fast.plan_kernel import PLAN_KERNEL
    from sim.fast.step_kernel import (DRAFT_PASS_KERNEL, DRAFT_SECONDS_KERNEL, DRAW_KERNEL,
                                      FIT_KERNEL, STEP_END_KERNEL, STEP_KERNEL,
                                      TREE_MIN_WIDTHS_KERNEL, TREE_NODES_KERNEL,
                                      TREE_OUTCOME_KERNEL, UNIFORM_DRAFT_SECONDS_KERNEL,
                                      VERIFY_CONTEXT_KERNEL, CHAIN_VERIFY_END_KERNEL)
    if STEP_KERNEL is None:
        return
    from sim.fast.epoch_kernel import warm_up_arrays, warm_up_inputs
    i64 = np.zeros(2, np.int64)
    rows = np.arange(1, dtype=np.int64)
    STEP_KERNEL(np.full(8, 0.5)[:2], 2, np.full(2, 0.5), rows, rows + 1, rows + 1, rows + 1,
                10, 20, 100, 16, 1, 1, 2, 0.0, 0.5, FINISHED, *warm_up_inputs(),
                *warm_up_arrays())
    PLAN_KERNEL(rows, rows + 1, 100, 4, True, 100, 16, RUNNING, i64 + 1, i64 + 2, i64.copy(),
                i64 + 1, np.zeros(2, np.int8))
    table = warm_up_arrays()
    STEP_END_KERNEL(0.0, rows, rows + 1, rows + 1, rows + 1, rows.copy(), 1, rows + 1, rows + 1,
                    0.5, FINISHED, *table[:3], *table[4:])
    table = warm_up_arrays()
    CHAIN_VERIFY_END_KERNEL(rows + 1, rows + 1, 0.0, 0.0, rows, rows + 1, rows + 1, rows + 1,
                            rows + 1, 1, 1, 1, 100, 100, 0.5, FINISHED, np.zeros(5),
                            *table[:3], *table[4:])
    flags = np.ones(1, np.bool_)
    DRAFT_PASS_KERNEL(flags, flags, rows.copy(), rows + 2, rows + 1, 0, False, np.zeros(5), 0,
                      0, 0, np.zeros(2), np.full((1, 2), 0.5), np.zeros((0, 0), np.int64))
    DRAFT_SECONDS_KERNEL(rows + 2, np.ones((1, 2), np.int64), rows + 1, 0, 0, 0, np.zeros(5))
    UNIFORM_DRAFT_SECONDS_KERNEL(2, 10, 1, 0, 0, 0, np.zeros(5))
    for with_confidences in (True, False):
        DRAW_KERNEL(np.full((1, 2), 0.5), np.full((1, 2), 0.7), np.full(4, 0.8), np.full(4, 0.2),
                    with_confidences)
    chances, filled = np.full((1, 2, 3), 0.5), np.ones(1, np.bool_)
    TREE_MIN_WIDTHS_KERNEL(np.full((1, 2), 0.5), rows, chances, filled)
    TREE_OUTCOME_KERNEL(np.full((1, 2), 0.5), rows, chances, filled, np.ones((1, 2), np.int64),
                        rows + 1)
    TREE_NODES_KERNEL(np.ones((1, 2), np.int64), rows + 1)
    FIT_KERNEL(rows, rows + 1, rows + 1, 10, i64 + 1, 10, 16)
    VERIFY_CONTEXT_KERNEL(rows + 1, rows + 1)
