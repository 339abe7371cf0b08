"""Per-request state as a struct of arrays (one row per trace request), preallocated.

Token accounting follows vLLM V1: ``num_computed`` tokens are in the KV cache; the request
knows ``num_prompt + num_out`` tokens. A decoding request has exactly one known token not yet
in KV (the last sampled one) and schedules it plus its draft tokens; a request with more
missing tokens (fresh, or recomputing after preemption) is prefilling.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from policies.interface import Observation

PENDING, WAITING, RUNNING, FINISHED, FAILED = 0, 1, 2, 3, 4


def accept_ewma_next(old, rate, alpha):
    """A request's acceptance-rate EWMA after a step that verified drafts at ``rate``; the
    first step sets it (``old`` nan). One scalar rule: the compiled kernels jit it; the numpy
    paths apply it array-wise (step_end) or over a whole epoch in closed form (sim/fast/epoch)."""
    return rate if old != old else alpha * rate + (1 - alpha) * old


class RequestArrays(NamedTuple):
    """The request table's columns a compiled kernel reads and writes in place (views)."""

    num_computed: np.ndarray     # int64 (rows,) tokens in the KV cache
    num_out: np.ndarray          # int64 (rows,) output tokens so far
    num_known: np.ndarray        # int64 (rows,) prompt + output tokens
    num_blocks: np.ndarray       # int64 (rows,) KV blocks held
    num_target_out: np.ndarray   # int64 (rows,) output tokens the request will generate
    num_drafted: np.ndarray      # int64 (rows,) draft tokens verified so far
    num_accepted: np.ndarray     # int64 (rows,) of those accepted
    accept_ewma: np.ndarray      # float64 (rows,) acceptance-rate EWMA (nan before any)
    status: np.ndarray           # int8 (rows,) PENDING .. FAILED
    first_token_s: np.ndarray    # float64 (rows,) first token time (nan before)
    finish_s: np.ndarray         # float64 (rows,) finish time (nan before)


class RequestTable:
    def __init__(self, trace, k_max: int):
        n = len(trace)
        self.n = n
        self.request_ids = np.asarray(trace.request_ids, np.int64)
        self.arrival_s = np.asarray(trace.arrival_s, np.float64)
        self.num_prompt = np.asarray(trace.num_prompt_tokens, np.int64)
        self.num_target_out = np.asarray(trace.num_output_tokens, np.int64)
        self.tpot_slo_s = np.asarray(trace.tpot_slo_s, np.float64)
        self.ttft_slo_s = np.asarray(trace.ttft_slo_s, np.float64)
        self.num_computed = np.zeros(n, np.int64)
        self.num_out = np.zeros(n, np.int64)
        self.num_known = self.num_prompt.copy()       # prompt + num_out, kept in step
        self.num_blocks = np.zeros(n, np.int64)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.status = np.full(n, PENDING, np.int8)
        self.fail_reason = np.full(n, "", dtype=object)
        self.num_preemptions = np.zeros(n, np.int64)
        self.num_drafted = np.zeros(n, np.int64)
        self.num_accepted = np.zeros(n, np.int64)
        self.accept_ewma = np.full(n, np.nan)
        self.last_conf = np.full((n, k_max), np.nan)
        # the columns are allocated once: one bundle of them serves every kernel call
        self.arrays = RequestArrays(self.num_computed, self.num_out, self.num_known,
                                    self.num_blocks, self.num_target_out, self.num_drafted,
                                    self.num_accepted, self.accept_ewma, self.status,
                                    self.first_token_s, self.finish_s)


    def observation(self, rows, ctx, out, now: float, step_index: int, k_max: int, cost, *,
                    num_waiting: int = 0, oldest_waiting_s: float = 0.0,
                    num_prefill_tokens: int = 0, sum_prefill_context_tokens: int = 0,
                    num_prefill_seqs: int = 0, future_match_lens=None, future_tree_min_widths=None,
                    true_accept_rates=None) -> Observation:
        """What a policy sees of decoding ``rows`` (``ctx``/``out``: their KV entries and
        output tokens, gathered by the caller) at ``now``: the one place an engine path,
        per step or epoch, builds an Observation."""
        return Observation(
            now_s=now, step_index=step_index, k_max=k_max, request_ids=self.request_ids[rows],
            context_lens=ctx + 1, num_output_tokens=out,
            decode_elapsed_s=now - self.first_token_s[rows],
            since_arrival_s=now - self.arrival_s[rows], tpot_slo_s=self.tpot_slo_s[rows],
            accept_rate_ewma=self.accept_ewma[rows],
            last_confidences=self.last_conf.take(rows, axis=0),   # 4x faster than [rows]
            num_waiting=num_waiting, oldest_waiting_s=oldest_waiting_s,
            num_prefill_tokens=num_prefill_tokens,
            sum_prefill_context_tokens=sum_prefill_context_tokens, cost=cost,
            num_prefill_seqs=num_prefill_seqs,
            future_match_lens=future_match_lens, future_tree_min_widths=future_tree_min_widths,
            ttft_slo_s=self.ttft_slo_s[rows], true_accept_rates=true_accept_rates)

    def num_missing(self, rows: np.ndarray) -> np.ndarray:
        """Known tokens not yet in the KV cache (1 for a decoding request)."""
        return self.num_known[rows] - self.num_computed[rows]

    def fail(self, row: int, reason: str) -> None:
        self.status[row] = FAILED
        self.fail_reason[row] = reason

    def validate_trace(self) -> None:
        if self.n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("trace arrival_s must be non-decreasing")
        if np.any(self.num_prompt < 1) or np.any(self.num_target_out < 1):
            raise ValueError("trace token counts must be >= 1 (num_prompt_tokens, "
                             "num_output_tokens)")
        if np.unique(self.request_ids).shape[0] != self.n:
            raise ValueError("trace request_ids must be unique")
        if self.n and not np.all(np.isfinite(self.arrival_s)):
            raise ValueError("trace arrival_s must be finite")
