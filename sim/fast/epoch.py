"""Multi-step epochs: a stretch of pure-decode steps simulated as one vectorized block.

When the policy declares ``static_decisions`` (policies/interface.py), nobody waits and every
running request is decoding, the batch and every request's k stay the same until the next
batch event. So one ``decide`` call serves the whole stretch, and its steps are computed
together: match lengths m for S steps x n requests in one draw (the same uniforms, in the
same order, as S single steps would take; the unused ones are given back), ``num_accepted =
min(k, m)``, contexts grow by the cumulative ``num_accepted + 1``, draft and verify costs are
evaluated over all steps at once with the same integer inputs as the per-step path.

The epoch ends (inclusive) at the first step in which a request finishes or the next request
arrives, and (exclusive) before the first step whose KV blocks would not fit; the per-step
path then takes over. No per-step ``observe`` calls are made (a no-op by the declaration).
With numba and a roofline the steps run compiled (sim/fast/epoch_compiled.py); else numpy below.
"""
from __future__ import annotations

import numpy as np

from sim.fast.epoch_compiled import run_kernel_epochs
from sim.core.results import StepRow
from sim.core.small_arrays import iall
from sim.core.state import FINISHED
from sim.core.step_plan import checked_decision

_sum = np.add.reduce
MAX_EPOCH_STEPS = 32     # draws are cheap; most epochs end at an arrival or a finish first


def epoch_eligible(engine) -> bool:
    """Pure decode, nobody waiting, a static policy and block draws available."""
    sched, r = engine.sched, engine.reqs
    run = sched.running
    if not engine._epochs or sched.waiting or run.shape[0] == 0:
        return False
    if engine.epoch_ready:          # an epoch just ran: its survivors all decode
        return True
    return iall(r.num_known[run] - r.num_computed[run] == 1) and iall(r.num_out[run] > 0)


def run_epoch(engine, now: float, kernel_inputs=None):
    """Simulate the epoch starting at ``now``; returns when it ends (its last step's start
    plus latency), or None (nothing changed) when its first step needs the per-step path (KV
    or token budget would bind, or the decision is not a plain chain). With ``kernel_inputs``
    compiled epochs run and chain (sim/fast/epoch_compiled.py); without, numpy epochs."""
    if kernel_inputs is not None:
        return run_kernel_epochs(engine, now, _decide, kernel_inputs)
    return _numpy_epoch(engine, now)


def _decide(engine, now: float):
    """(num_spec_tokens, their sum, Observation), or None: not a plain chain or no fit."""
    r, sched, kmax, eng = engine.reqs, engine.sched, engine.k_max, engine.config.engine
    run = sched.running
    n = run.shape[0]
    ctx0 = r.num_computed[run]
    # a static policy's decision reads no time, queue or prefill (Policy.static_decisions)
    obs = r.observation(run, ctx0, r.num_out[run], now, engine.step_index, kmax,
                        engine.policy_cost)
    decision = engine.policy.decide(obs)
    k, widths = checked_decision(decision, n, kmax, engine.policy.name)
    n_spec = int(_sum(k))      # ufunc reduces: skip ndarray.sum's Python wrapper
    if (widths is not None or decision.draft_stop_confidence > 0.0
            or decision.verify_token_budget is not None
            or n_spec > eng.max_num_batched_tokens - n):
        return None          # the per-step path decides again (static: the same answer)
    return k, n_spec, obs


def _numpy_epoch(engine, now: float):
    """``run_epoch`` without the compiled kernel: the steps as numpy blocks."""
    got = _decide(engine, now)
    if got is None:
        return None
    k, n_spec, obs = got
    r, sched, eng, run = engine.reqs, engine.sched, engine.config.engine, engine.sched.running
    n, ctx0, out = run.shape[0], obs.context_lens - 1, obs.num_output_tokens
    left = r.num_target_out[run] - out
    S = min(int(np.minimum.reduce(left)), MAX_EPOCH_STEPS)
    arrival = engine.next_arrival_s
    if arrival is not None and engine.epoch_step_s:
        # steps until the next arrival at about the last epoch's step time (+ margin): a
        # short guess only costs one more epoch, a long one wasted work
        S = max(min(S, int((arrival - now) / (0.95 * engine.epoch_step_s)) + 2), 1)
    K = int(np.maximum.reduce(k))              # n >= 1: a running batch
    uniform = n_spec == K * n
    m = engine.acc.draw_block(run, S, K)[0]                      # m <= K already
    acc = m if uniform else np.minimum(m, k)                     # (S, n)
    cum = np.cumsum(acc + 1, axis=0)                             # emitted through step s
    comp = cum - acc                                             # KV entries before step s
    comp += ctx0 - 1
    # KV: a request holds max(held, blocks for its context + decode token + drafts); the
    # blocks only grow over the steps, so the steps that fit are a prefix
    bs = eng.block_size
    held = r.num_blocks[run]
    blocks = np.maximum((comp + ((K if uniform else k) + bs)) // bs, held)
    extra = _sum(blocks, 1) - int(_sum(held))
    num_fit = int(np.searchsorted(extra, sched.free_blocks, side="right"))
    if num_fit == 0:
        engine.acc.give_back(S * n * engine.acc.k_max)
        return None
    done_at = (cum[:num_fit] >= left).any(axis=1)
    # contexts only grow: once a request is done it stays done, so done_at is monotone
    last = int(np.argmax(done_at)) if done_at[-1] else num_fit - 1
    # costs over steps: verify pass over n (k+1) tokens, draft pass j over requests with k > j
    if uniform:
        comp_sum = _sum(comp[:last + 1], 1).tolist()
        times = _uniform_costs(engine.cost, n, K, comp_sum, now, arrival)
    else:
        times = _mixed_costs(engine.cost, n, k, comp[:last + 1], now, arrival)
    starts, lat, draft_s, verify_s = times
    S_used = len(starts)
    engine.epoch_step_s = lat[-1]
    engine.acc.give_back((S - S_used) * n * engine.acc.k_max)
    _apply(engine, run, k, acc[:S_used], cum[:S_used], left, blocks[S_used - 1],
           times, extra[:S_used].tolist(), n_spec, (ctx0, out, obs.request_ids),
           bool(done_at[S_used - 1]))
    return starts[-1] + lat[-1]


def _uniform_costs(cost, n: int, K: int, comp_sum: list, now: float, arrival):
    """Every request drafts K: the per-step path's scalar cost inputs (the same integers;
    draft passes summed in the same order), so the times are bit-identical to it. Stops
    after the step during which ``arrival`` falls. A roofline (``scalar_coefficients``) is
    evaluated inline: its scalar expression, operation for operation."""
    n_tok, tri = n * (K + 1), n * ((K + 1) * (K + 2) // 2)
    coef = getattr(cost, "scalar_coefficients", None)
    if coef is None or coef()[1] is None:
        return _uniform_costs_calls(cost, n, K, n_tok, tri, comp_sum, now, arrival)
    (t_tok, t_ctx, t_w, t_kv, t_fix), (d_tok, d_ctx, d_w, d_kv, d_fix) = coef()
    passes = [n * j for j in range(1, K + 1)]
    d_compute0 = d_tok * n
    v_compute0 = t_tok * n_tok

    def step_s(c):
        vc = (K + 1) * c + tri
        v = max(v_compute0 + t_ctx * vc, t_w + t_kv * vc * n / n_tok) + t_fix
        d = 0.0
        for p in passes:
            cc = c + p
            d += max(d_compute0 + d_ctx * cc, d_w + d_kv * cc * n / n) + d_fix
        return d, v
    return _step_times(step_s, comp_sum, now, arrival)


def _uniform_costs_calls(cost, n, K, n_tok, tri, comp_sum: list, now, arrival):
    tgt, drf = cost.target_step_s, cost.draft_step_s

    def step_s(c):
        v = float(tgt(n_tok, n, (K + 1) * c + tri))
        d = 0.0
        for j in range(1, K + 1):
            d += float(drf(n, n, c + n * j))
        return d, v
    return _step_times(step_s, comp_sum, now, arrival)


def _step_times(step_s, comp_sum: list, now: float, arrival):
    """(starts, latencies, draft and verify seconds) of consecutive steps, ``step_s(c)`` ->
    (draft, verify) seconds at summed context c, up to the step during which ``arrival``
    falls."""
    starts, lat, draft_s, verify_s = [], [], [], []
    t = now
    for c in comp_sum:
        if starts and arrival is not None and t >= arrival:
            break
        d, v = step_s(c)
        starts.append(t)
        lat.append(d + v)
        draft_s.append(d)
        verify_s.append(v)
        t = t + (d + v)
    return starts, lat, draft_s, verify_s


def _mixed_costs(cost, n: int, k: np.ndarray, comp: np.ndarray, now: float, arrival):
    """Requests draft different k: the per-step path's pass arrays, over all steps at once."""
    S, K, t = comp.shape[0], int(k.max(initial=0)), k + 1
    verify_ctx = comp @ t + int((t * (t + 1) // 2).sum())
    verify_s = np.zeros(S) + cost.target_step_s(n + int(k.sum()), n, verify_ctx)
    j1 = np.arange(1, K + 1)
    active = (k[:, None] >= j1).astype(np.int64)              # (n, K): drafts in pass j1 - 1
    tok = active.sum(axis=0)
    per_pass = np.asarray(cost.draft_step_s(tok, tok, comp @ active + tok * j1))
    per_pass = np.broadcast_to(per_pass, (S, K))              # a context-blind model: (K,)
    # np.sum per step, as the per-step path sums (numpy's pairwise order from 8 passes)
    draft_s = np.add.reduce(np.ascontiguousarray(per_pass), axis=1) if K else np.zeros(S)
    lat = (draft_s + verify_s).tolist()
    starts, t = [], now
    for x in lat:
        if starts and arrival is not None and t >= arrival:
            break
        starts.append(t)
        t = t + x
    m = len(starts)
    return starts, lat[:m], draft_s[:m].tolist(), verify_s[:m].tolist()


def _apply(engine, run, k, acc, cum, left, blocks, times, extra: list, n_spec: int, before,
           finishing: bool):
    """Write the epoch's effect into the request table, scheduler and step recorder
    (``before``: the rows' num_computed, num_out and request ids at the epoch's start;
    ``finishing``: some request finishes in the last step)."""
    r, sched = engine.reqs, engine.sched
    ctx0, out0, ids = before
    S, n = acc.shape
    total = cum[-1]                        # num_accepted + 1 summed over the epoch's steps
    emitted = np.minimum(total, left)      # capped at the finish step
    r.num_computed[run] = ctx0 + total
    out = out0 + emitted
    r.num_out[run] = out
    r.num_known[run] = ctx0 + 1 + emitted  # decoding: one known token not yet in KV
    used0 = sched.num_kv_blocks - sched.free_blocks
    sched.free_blocks -= extra[-1]
    r.num_blocks[run] = blocks
    step_acc = _sum(acc, 1).tolist()
    step_emit = [x + n for x in step_acc]
    if finishing:
        step_emit[-1] -= int((total - emitted).sum())
    if n_spec:
        r.num_drafted[run] += S * k
        r.num_accepted[run] += total - S
        if n_spec == n * int(k[0]):                 # everybody speculated
            rows, rate = run, acc / k[0]
        else:
            spoke = k > 0
            rows, rate = run[spoke], acc[:, spoke] / k[spoke]
        a = engine.config.engine.accept_ewma_alpha
        ew = r.accept_ewma[rows]
        ew = np.where(np.isnan(ew), rate[0], ew)   # the first rate replaces an unset EWMA
        # S EWMA updates in closed form: (1-a)^S ew + sum_s a (1-a)^(S-1-s) rate_s
        weights = _ewma_weights(engine, a)[MAX_EPOCH_STEPS - S:]
        r.accept_ewma[rows] = (1 - a) ** S * ew + weights @ rate
        # last_confidences are left as they were: a static policy reads no confidences, and
        # only static policies run epochs (the draws of the last step are still consumed)
    starts, lat, draft_s, verify_s = times
    if finishing:
        fin = run[total >= left]
        r.status[fin] = FINISHED
        r.finish_s[fin] = starts[-1] + lat[-1]
        sched.release(fin)
    first = engine.step_index
    engine.rec.add_block(StepRow(
        step=range(first, first + S), start_s=starts, latency_s=lat, draft_s=draft_s,
        verify_s=verify_s, num_seqs=n, num_decode_seqs=n, num_prefill_tokens=0,
        num_scheduled_tokens=n + n_spec, num_spec_tokens=n_spec, num_accepted=step_acc,
        num_emitted=step_emit, num_waiting=0, kv_blocks_used=[used0 + e for e in extra],
        spec_k=[k] * S, accepted=list(acc), spec_request_ids=[ids] * S), S)
    engine.step_index += S
    engine.num_epochs += 1
    engine.num_epoch_steps += S
    engine.epoch_ready = True


def _ewma_weights(engine, a: float) -> np.ndarray:
    """a (1-a)^(MAX-1-s) for s < MAX_EPOCH_STEPS, computed once per engine."""
    w = engine.__dict__.get("_epoch_ewma_weights")
    if w is None:
        w = a * (1 - a) ** np.arange(MAX_EPOCH_STEPS - 1, -1, -1)
        engine._epoch_ewma_weights = w
    return w
