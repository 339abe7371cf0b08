"""The end of one engine step (sim/core/engine.py): what the step began (``PendingStep``)
enters the request table, finished requests leave the scheduler, the step is recorded and
the policy observes it. Small arrays use the scalar shortcuts of sim/core/small_arrays.py."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from policies.interface import Feedback
from sim.core.results import StepRow
from sim.core.small_arrays import SMALL, iall, iany, isum
from sim.core.state import FINISHED

_EMPTY = np.zeros(0, np.int64)
_EMPTY.setflags(write=False)          # shared, so never writable


class PendingStep(NamedTuple):
    """A step between its start (Engine._begin_step) and its end (``end_step``); row arrays
    are request-table rows, ``dec``-aligned arrays have one entry per decoding request."""

    start_s: float
    rows: np.ndarray             # int (m,) every scheduled row, decoding and prefilling
    dec: np.ndarray              # int (n,) decoding rows
    pre: np.ndarray              # int (p,) prefilling rows
    pre_tok: np.ndarray          # int (p,) prefill tokens of each chunk
    num_spec: np.ndarray         # int (n,) draft tokens verified
    accepted: np.ndarray         # int (n,) of those accepted
    confidences: np.ndarray | None  # float (n, k_max) drafted tokens' confidences
    draft_s: float
    verify_s: float
    num_waiting: int
    num_prefill_tokens: int
    num_spec_tokens: int
    ctx: np.ndarray              # int (n,) KV entries before the step
    out: np.ndarray              # int (n,) output tokens before the step
    request_ids: np.ndarray      # int (n,) the decoding requests' ids


def end_step(engine, end: float) -> None:
    step = engine.pending
    start, rows, dec, pre, pre_tok = step.start_s, step.rows, step.dec, step.pre, step.pre_tok
    num_spec, accepted, conf = step.num_spec, step.accepted, step.confidences
    draft_s, verify_s, num_waiting = step.draft_s, step.verify_s, step.num_waiting
    n_pre_tok, n_spec = step.num_prefill_tokens, step.num_spec_tokens
    ctx, out, dec_ids = step.ctx, step.out, step.request_ids
    r, sched = engine.reqs, engine.sched
    fin = _EMPTY
    n_done = 0
    if pre.shape[0]:
        fin, n_done = _end_prefill(r, pre, pre_tok, end)
    n_acc = n_emit = 0
    n = dec.shape[0]
    if n:
        # decoding requests: the decode token and the accepted drafts enter the KV cache
        left = r.num_target_out[dec] - out       # ctx, out: as gathered in _begin_step
        emitted = np.minimum(accepted + 1, left)
        ctx1 = ctx + 1
        r.num_computed[dec] = ctx1 + accepted
        r.num_out[dec] = out + emitted
        r.num_known[dec] = ctx1 + emitted        # decoding: one known token not in KV
        n_emit = isum(emitted)
        if n_spec:
            n_acc = isum(accepted)
            r.num_drafted[dec] += num_spec
            r.num_accepted[dec] += accepted
            if iall(num_spec):
                ids, rate = dec, accepted / num_spec
            else:
                spoke = num_spec > 0
                ids, rate = dec[spoke], accepted[spoke] / num_spec[spoke]
            old = r.accept_ewma[ids]
            a = engine.config.engine.accept_ewma_alpha
            r.accept_ewma[ids] = np.where(np.isnan(old), rate, a * rate + (1 - a) * old)
            if not engine._lazy_conf:   # (as in epochs, static policies read none)
                r.last_conf[dec] = conf
        done_dec = emitted == left
        if iany(done_dec):
            fin = dec[done_dec] if not fin.shape[0] else np.concatenate([fin, dec[done_dec]])
    kv_used = sched.num_kv_blocks - sched.free_blocks
    if fin.shape[0]:
        r.status[fin] = FINISHED
        r.finish_s[fin] = end
        sched.release(fin)
    engine.rec.add(StepRow.of(
        step=engine.step_index, start_s=start, draft_s=draft_s, verify_s=verify_s,
        num_seqs=rows.shape[0], num_decode_seqs=n, num_prefill_tokens=n_pre_tok,
        num_spec_tokens=n_spec, num_accepted=n_acc, num_emitted=n_emit + n_done,
        num_waiting=num_waiting, kv_blocks_used=kv_used, spec_k=num_spec, accepted=accepted,
        spec_request_ids=dec_ids))
    if engine._observes:
        feedback = Feedback(
            now_s=end, request_ids=dec_ids, num_spec_tokens=num_spec,
            num_accepted=accepted, confidences=conf, draft_time_s=draft_s,
            verify_time_s=verify_s, finished_ids=r.request_ids[fin])
        if engine.decides_ahead:       # vLLM: the next decision comes before this feedback
            engine.held_feedback = feedback
        else:
            engine.policy.observe(feedback)
    engine.step_index += 1


def _end_prefill(r, pre, pre_tok, end: float):
    """Prefill chunks: the chunk that completes the known tokens samples one token. Returns
    (rows that finish with it, number of such first/recomputed tokens)."""
    computed = r.num_computed[pre] + pre_tok
    r.num_computed[pre] = computed
    done = pre[computed == r.num_known[pre]]
    n_done = done.shape[0]
    if not n_done:
        return _EMPTY, 0
    r.num_out[done] += 1
    r.num_known[done] += 1
    first = r.first_token_s
    if n_done <= SMALL:
        for row in done.tolist():       # a recomputing request keeps its first token time
            if first.item(row) != first.item(row):       # nan: not set yet
                first[row] = end
    else:
        f = first[done]
        first[done] = np.where(np.isnan(f), end, f)
    fin = done[r.num_out[done] >= r.num_target_out[done]]
    return fin, n_done
