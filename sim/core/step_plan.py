"""A step between its decision and its run (``DecidedStep``), and the token and
attention-context counts of its forward passes (inputs of the cost model).

``sum_context_tokens`` of a pass is the sum over its tokens of the KV entries each attends to
(policies.interface.CostModel), including the token itself.
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np

from policies.interface import Decision, Observation, checked_num_spec_tokens
from sim.core.small_arrays import SMALL, imin_imax, isum


class DecidedStep(NamedTuple):
    """A planned batch and the policy's decision on it (Engine.decide_step), before the
    drafts are fitted, drafted and verified (Engine.run_decided or a compiled step)."""

    rows: np.ndarray             # int (m,) every scheduled row
    tokens: np.ndarray           # int (m,) tokens each is scheduled (1 for a decode)
    dec: np.ndarray              # int (n,) decoding rows
    pre: np.ndarray              # int (p,) prefilling rows
    pre_tok: np.ndarray          # int (p,) their chunk lengths
    num_prefill_tokens: int
    prefill_context: int         # attention context of the prefill chunks
    ctx: np.ndarray              # int (n,) KV entries before the step
    out: np.ndarray              # int (n,) output tokens before the step
    num_waiting: int
    obs: Observation
    decision: Decision
    k: np.ndarray                # int (n,) checked num_spec_tokens
    widths: np.ndarray | None    # int (n, k_max) tree widths, None for chains
    draw: object                 # the step's match-length draw (None: not drawn yet)


def prefill_context(computed: np.ndarray, chunk: np.ndarray) -> int:
    """Chunk tokens c = 1..L of a request with ``computed`` tokens in KV attend to computed + c."""
    if chunk.shape[0] <= SMALL:     # a step has few prefill chunks: exact Python ints
        return sum(c * k + c * (c + 1) // 2 for c, k in zip(chunk.tolist(), computed.tolist()))
    return int((chunk * computed + chunk * (chunk + 1) // 2).sum())


def verify_context(computed: np.ndarray, num_spec: np.ndarray, total_spec: int) -> int:
    """The decode token plus ``num_spec`` draft tokens of each decoding request
    (``total_spec`` = num_spec.sum(), passed in to take the uniform-k shortcut)."""
    n = computed.shape[0]
    if n == 0:
        return 0
    first = num_spec.item(0)
    if total_spec == n * first:                  # every request verifies the same count
        t = first + 1
        if total_spec == 0 or imin_imax(num_spec)[0] == first:
            return t * isum(computed) + n * (t * (t + 1) // 2)
    t = num_spec + 1
    return int((t * computed + t * (t + 1) // 2).sum())


def uniform_chain_draft_s(cost, k: int, computed_sum: int, n: int, prefill) -> float:
    """Draft seconds when all ``n`` requests draft a chain of ``k`` tokens (scalar calls)."""
    n_pre_tok, pre_ctx, n_pre_seqs = prefill
    total = 0.0
    coef = getattr(cost, "scalar_coefficients", None)
    if coef is not None and coef()[1] is not None:
        # a roofline's scalar expression inline (RooflineCostModel._time, operation for
        # operation): the same floats without the calls
        tok_s, ctx_s, w_s, kv_s, fixed_s = coef()[1]
        for j in range(k):
            tok, seqs, ctx = n, n, computed_sum + n * (1 + j)
            if j == 0:
                tok, seqs, ctx = tok + n_pre_tok, seqs + n_pre_seqs, ctx + pre_ctx
            total += max(tok_s * tok + ctx_s * ctx, w_s + kv_s * ctx * seqs / tok) + fixed_s
        return total
    for j in range(k):
        tok, seqs, ctx = n, n, computed_sum + n * (1 + j)
        if j == 0:
            tok, seqs, ctx = tok + n_pre_tok, seqs + n_pre_seqs, ctx + pre_ctx
        total += float(cost.draft_step_s(tok, seqs, ctx))
    return total


def draft_pass_s(cost, active, j: int, widths, computed, prefill) -> float:
    """Seconds of draft pass ``j`` alone, run by the ``active`` requests: the ``j``-th entry of
    ``draft_step_s`` over ``draft_pass_costs``, so a drafting loop adds one pass per
    iteration instead of re-costing every pass so far. A roofline takes its scalar path (the
    same expression, the same floats); other models get one-element arrays, so they take
    the very array path of the whole-step call."""
    num_seqs = int(np.count_nonzero(active))
    if widths is None or j == 0:         # a tree's pass 0 feeds one root token, as a chain
        num_tokens = num_seqs
        ctx = isum(computed[active]) + num_seqs * (1 + j)
    else:                                # integer sums over the active rows alone: exact,
        feed = widths[active, j - 1]     # without the masked full-batch arrays' numpy calls
        num_tokens = isum(feed)
        ctx = isum(feed * (computed[active] + (1 + j)))
    if j == 0:
        n_pre_tok, pre_ctx, n_pre_seqs = prefill
        num_tokens, num_seqs, ctx = num_tokens + n_pre_tok, num_seqs + n_pre_seqs, ctx + pre_ctx
    if getattr(cost, "scalar_coefficients", None) is not None:
        return float(cost.draft_step_s(num_tokens, num_seqs, ctx))
    one = np.ones(1, np.int64)
    return float(cost.draft_step_s(one * num_tokens, one * num_seqs, one * ctx)[0])


def draft_pass_costs(drafted, widths, computed, n_pre_tok: int, pre_ctx: int, n_pre_seqs: int):
    """Per draft pass j = 0..max(drafted)-1: (tokens, sequences, context) arrays.

    Pass j runs for the requests drafting a (j+1)-th token. A chain feeds one token per
    request; a tree's beam feeds the width of depth j-1 (one root token at pass 0). The
    draft model also prefills this step's prompt chunks, fused into pass 0.
    """
    k = int(drafted.max(initial=0))
    j = np.arange(k)
    active = drafted[:, None] > j[None, :]
    if widths is None:
        per_tok = active.astype(np.int64)
    else:
        feed = np.concatenate([np.ones((widths.shape[0], 1), np.int64), widths[:, :k - 1]], 1)
        per_tok = np.where(active, feed[:, :k], 0)
    tokens = per_tok.sum(axis=0)
    seqs = active.sum(axis=0)
    ctx = (per_tok * (computed[:, None] + 1 + j[None, :])).sum(axis=0)
    if k:
        tokens[0] += n_pre_tok
        seqs[0] += n_pre_seqs
        ctx[0] += pre_ctx
    return tokens, seqs, ctx


def ensure_confidences(acc, draw, rows, decision):
    """A step drawn without confidences (only an engine whose policy reads none draws so,
    ``Engine._lazy_conf``) gets them once its decision makes the engine read them: a verify
    budget or a confidence stop. A token tree does not: its accepted depth comes from the
    uniforms."""
    if draw.confidences is None and (decision.draft_stop_confidence > 0
                                     or decision.verify_token_budget is not None):
        return replace(draw, confidences=acc.confidences(rows, draw.uniforms))
    return draw


def checked_decision(decision, n: int, k_max: int, policy_name: str):
    """(num_spec_tokens as int64 clipped to 0..k_max, nodes_per_depth or None); a wrong
    shape is the policy's bug and raises naming it."""
    k = checked_num_spec_tokens(decision, n, k_max, policy_name)
    widths = decision.nodes_per_depth
    if widths is not None:
        widths = np.asarray(widths, np.int64)
        if widths.shape != (n, k_max):
            raise ValueError(f"policy {policy_name!r}: nodes_per_depth has shape "
                             f"{widths.shape}, expected ({n}, {k_max})")
        widths = np.maximum(widths, 0)
    return k, widths
