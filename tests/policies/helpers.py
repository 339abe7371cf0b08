"""Observations, feedback and a linear step cost shared by the policy tests."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from policies.interface import DraftState, Feedback, Observation


class LinearCost:
    """t = base + per_token * tokens + per_ctx * context; draft likewise, 10x cheaper."""

    def __init__(self, base=0.02, per_token=1e-4, per_ctx=1e-9, draft_ratio=0.1):
        self.base, self.per_token, self.per_ctx, self.draft_ratio = base, per_token, per_ctx, draft_ratio

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return (self.base + self.per_token * np.asarray(num_tokens, float)
                + self.per_ctx * np.asarray(sum_context_tokens, float))

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self.draft_ratio * self.target_step_s(num_tokens, num_seqs, sum_context_tokens)


def make_obs(n, k_max=8, cost=None, tpot=np.inf, elapsed=0.5, out=20, waiting=0,
             oldest=0.0, future=None, ids=None, ctx=500, prefill=0, tree_future=None,
             rates=None):
    rng = np.random.default_rng(n)
    future = rng.integers(0, k_max + 1, n) if future is None else np.asarray(future)
    tree_future = (rng.integers(1, 10, (n, k_max)) if tree_future is None
                   else np.asarray(tree_future))
    rates = rng.uniform(0.3, 0.95, n) if rates is None else np.asarray(rates, float)
    return Observation(
        now_s=1.0, step_index=3, k_max=k_max,
        request_ids=np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64),
        context_lens=np.full(n, ctx, np.int64), num_output_tokens=np.broadcast_to(out, (n,)).astype(np.int64),
        decode_elapsed_s=np.broadcast_to(elapsed, (n,)).astype(float),
        since_arrival_s=np.full(n, 1.0), tpot_slo_s=np.broadcast_to(tpot, (n,)).astype(float),
        accept_rate_ewma=np.full(n, np.nan), last_confidences=np.full((n, k_max), np.nan),
        num_waiting=waiting, oldest_waiting_s=oldest, num_prefill_tokens=prefill,
        sum_prefill_context_tokens=prefill * (prefill + 1) // 2, cost=cost or LinearCost(),
        future_match_lens=future, future_tree_min_widths=tree_future, true_accept_rates=rates)


def feedback(obs, k, accepted, conf=0.8, finished=()):
    n = obs.num_requests
    return Feedback(now_s=obs.now_s + 0.05, request_ids=obs.request_ids,
                    num_spec_tokens=np.asarray(k, np.int64), num_accepted=np.broadcast_to(accepted, (n,)).astype(np.int64),
                    confidences=np.full((n, obs.k_max), conf), draft_time_s=0.01,
                    verify_time_s=0.03, finished_ids=np.asarray(finished, np.int64))


def draft_state(obs, decision, drafted, conf):
    n, K = obs.num_requests, obs.k_max
    c = np.full((n, K), np.nan)
    drafted = np.broadcast_to(drafted, (n,)).astype(np.int64)
    conf = np.broadcast_to(np.asarray(conf, float), (n, K)) if np.ndim(conf) < 2 else conf
    pos = np.arange(K)[None, :] < drafted[:, None]
    c[pos] = np.asarray(conf)[pos]
    return DraftState(obs=obs, decision=decision, num_drafted=drafted, confidences=c,
                      draft_time_s=0.005)


def fresh_process_json(code: str):
    """Run ``code`` in a fresh Python process from the repository root (nothing compiled or
    imported yet) and return the JSON of its last printed line."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
