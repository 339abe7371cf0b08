"""A step's drafting decisions replayed on drafts already made: what the live engine does.

vLLM's batched drafter runs max k passes for the whole batch (it has no per-request stop),
so the live engine asks the policy afterwards, pass by pass, which requests would have
stopped (``continue_drafting``) and then what to verify (``select_verify``). Every pass's
confidences are known by then, so a policy that offers its drafting as a compiled rule
(``Policy.compiled_drafting``) is replayed over all passes in one compiled call instead of
one hook call per pass: the same answers (the rule's contract), without a Python call and
a compiled dispatch of a dozen arguments per pass.
"""
from __future__ import annotations

import functools

import numpy as np

from policies.interface import Decision, DraftState, Observation, Policy


def replay_drafting(policy: Policy, obs: Observation, decision: Decision, cap: np.ndarray,
                    confidences: np.ndarray, draft_s: float, num_passes: int,
                    compiled_rule: bool = True) -> DraftState:
    """Replay ``policy``'s drafting on a step whose drafter made ``num_passes`` passes.

    Request i holds ``cap[i]`` drafts (int64 (n,): its k, capped by the passes made) with
    confidences ``confidences`` (float (n, k_max), nan past the drafts); the passes took
    ``draft_s`` seconds. Pass by pass, from one draft for every request with ``cap > 0``:
      1. the policy sees each request's drafts so far (confidences nan past them) and the
         drafting time so far (``draft_s`` x the most drafts / ``num_passes``);
      2. requests it keeps drafting, below their cap, draft one more; none left: stop.
    Returns the last pass's ``DraftState`` (what ``select_verify`` reads), as the hook per
    pass would leave it; with a compiled rule (unless ``compiled_rule`` is False: the hook
    per pass, as ``policies.bench`` times it beside) the passes run in one compiled call."""
    cap = np.asarray(cap, np.int64)
    compiled = policy.compiled_drafting(obs, decision) if compiled_rule else None
    loop = _replay_loop(compiled.rule) if compiled is not None else None
    if loop is not None:
        drafted, seen, spent_s = loop(cap, np.asarray(decision.num_spec_tokens, np.int64),
                                      np.ascontiguousarray(confidences, np.float64),
                                      float(draft_s), int(num_passes), compiled.args)
        compiled.finish()
        return DraftState(obs, decision, drafted, seen, spent_s)
    pos = np.arange(confidences.shape[1])[None, :]
    drafted = (cap > 0).astype(np.int64)
    while True:
        seen = np.where(pos < drafted[:, None], confidences, np.nan)
        state = DraftState(obs, decision, drafted.copy(), seen,
                           draft_s * drafted.max(initial=0) / max(num_passes, 1))
        more = np.asarray(policy.continue_drafting(state), bool) & (drafted < cap)
        if not more.any():
            return state
        drafted = drafted + more


@functools.cache                  # one compiled loop per policy rule and process
def _replay_loop(rule):
    """``replay_drafting``'s passes with ``rule`` (``policies.interface.CompiledDrafting``)
    in place of the hook, as one numba function, or None without numba. The rule is the
    loop's callee, not an argument (numba's dispatch of a function argument costs a call's
    worth again). Returns (drafted, the last pass's confidences seen, its drafting time)."""
    try:
        import numba
    except ImportError:            # pragma: no cover - numba is a dependency of the project
        return None

    def _loop(cap, k_decided, confidences, draft_s, num_passes, args):
        n, K = confidences.shape
        drafted = np.zeros(n, np.int64)
        seen = np.full((n, K), np.nan)           # a pass reveals one more draft per request
        top = 0
        for i in range(n):
            if cap[i] > 0:
                drafted[i] = 1
                seen[i, 0] = confidences[i, 0]
                top = 1
        more = np.zeros(n, np.bool_)
        while True:
            spent_s = draft_s * top / max(num_passes, 1)
            rule(drafted, k_decided, seen, spent_s, more, args)
            go = False
            for i in range(n):
                more[i] = more[i] and drafted[i] < cap[i]
                go = go or more[i]
            if not go:
                return drafted, seen, spent_s
            for i in range(n):
                if more[i]:
                    seen[i, drafted[i]] = confidences[i, drafted[i]]
                    drafted[i] += 1
                    top = max(top, drafted[i])

    return numba.njit(_loop)


def warm_up_replay(rule, args: tuple) -> None:
    """Compile ``rule``'s replay loop before timed work, on a two-request step with throwaway
    ``args`` of the types the policy passes (the rule may write into them)."""
    loop = _replay_loop(rule)
    if loop is not None:
        loop(np.array([2, 1]), np.array([2, 1]), np.full((2, 3), 0.5), 0.002, 2, args)
