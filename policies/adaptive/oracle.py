"""Hindsight baselines: the per-step oracle and the best fixed k picked by a sweep."""
from __future__ import annotations

import numpy as np

from policies.adaptive.step_cost import verify_tokens_s
from policies.interface import Decision, Observation, Policy
from policies.registry import register
from policies.static import FixedK


@register("oracle")
class Oracle(Policy):
    """Per-step upper bound: knows m_i, the true match length of each request this step
    (``Observation.future_match_lens``; a k-token draft then gets min(k, m_i) accepted).

    Drafting past m_i only costs, so k_i <= m_i. Greedy over requests: a common cap c rises
    one position at a time, every request drafting k_i = min(m_i, c, k_max), and the cap with
    the most tokens per second sum_i (min(k_i, m_i) + 1) / T(k) under ``obs.cost`` wins
    (c = k_max is "k_i = m_i for all"). A smaller cap only wins when verifying or drafting
    the extra, all-accepted tokens costs more than they bring: the bound of any policy that
    decides per step with full knowledge of acceptance, without trees.
    """

    kind = "oracle"
    needs_oracle = True

    def decide(self, obs: Observation) -> Decision:
        n = obs.num_requests
        if obs.future_match_lens is None:
            raise ValueError("oracle: the engine must fill Observation.future_match_lens "
                             "(policy.needs_oracle is True)")
        m = np.asarray(obs.future_match_lens, np.int64)
        if m.shape != (n,) or (m < 0).any():
            raise ValueError(f"oracle: future_match_lens must be {n} non-negative ints, got {m}")
        if n == 0:
            return Decision(num_spec_tokens=np.zeros(0, np.int64))
        m = np.minimum(m, obs.k_max)
        caps = np.arange(int(m.max(initial=0)) + 1)
        k = np.minimum(m[None, :], caps[:, None])                  # (caps, n)
        L = obs.context_lens.astype(float)
        tokens = k.sum(axis=1)
        # draft pass j runs for requests with m_i >= j, under every cap >= j
        j = caps[1:]
        n_ge = (m[None, :] >= j[:, None]).sum(axis=1)
        ctx_ge = ((m[None, :] >= j[:, None]) * L[None, :]).sum(axis=1) + (j - 1) * n_ge
        per_pass = np.asarray(obs.cost.draft_step_s(n_ge, n_ge, ctx_ge), float)
        passes = np.where(n_ge > 0, per_pass, 0.0)   # (broadcasts a context-blind model's scalar)
        draft = np.zeros(passes.size + 1)
        np.cumsum(passes, out=draft[1:])
        ctx = ((k + 1) * L[None, :] + k * (k + 1) / 2).sum(axis=1)
        verify = verify_tokens_s(obs, tokens, ctx)
        best_k = k[int(np.argmax((n + tokens) / (draft + verify)))]
        return Decision(num_spec_tokens=best_k)


@register("oracle_fixed")
class OracleFixed(FixedK):
    """The best *fixed* k in hindsight: a plain fixed-k policy whose ``k`` a hindsight sweep
    supplies (the comparison harness runs ``fixed`` for every k at each load, picks the best
    and reruns/labels it as ``oracle_fixed``). ``picked_by`` records how k was chosen."""

    kind = "oracle"
    def __init__(self, k: int = 3, picked_by: str = "hindsight sweep over fixed k"):
        super().__init__(k=k)
        self.picked_by = str(picked_by)
