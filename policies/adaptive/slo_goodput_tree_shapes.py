"""slo_goodput's token-tree shapes: in which steps decide() also plans trees, of which widths,
and when a tree plan replaces the chain plan. The rule and its evidence are
``SloGoodputTree``'s docstring; the plans themselves are ``slo_goodput_plan``'s.
"""
from __future__ import annotations

import functools

import numpy as np

from policies.adaptive.slo_goodput_plan import PrefixPlan, compiled_kernel, tree_pass_chances
from policies.interface import Observation


def tree_step(obs: Observation, chain_only: bool, max_requests: int, tree_steps: str) -> bool:
    """Whether decide() plans trees this step: never with ``chain_only`` or past
    ``max_requests`` requests; else in every step ("any"), with nobody queued ("no_queue"),
    or with nobody queued and no prefill chunk ("decode")."""
    # Trees by default ("decode") only in pure-decode steps with nobody queued: beside a
    # prefill chunk the token budget is mostly taken, a queue means KV room is short, and
    # an engine drops a tree that does not fit whole (sim/core/engine.py) -- a chain is trimmed.
    # Past ``max_requests`` trees are not even scored (none won there in the compare
    # sweep; it keeps decide() at the chain plan's cost for big batches).
    return (not chain_only and obs.num_requests <= max_requests
            and (tree_steps == "any"
                 or (obs.num_waiting == 0 and (tree_steps == "no_queue"
                                               or obs.num_prefill_tokens == 0))))


def tree_widths(accept: np.ndarray, w_max: int, pass_targets: tuple,
                compiled: bool = False) -> list:
    """The shapes to plan in a tree step: uniform widths 1..``w_max`` (1: the chain), then per
    target t in ``pass_targets`` the per-request widths: the narrowest whose depth passes
    w.p. 1 - (1 - a_i)^W >= t (``tree_pass_chances``), ``w_max`` where none does.
    ``compiled``: the per-target search in one compiled call (``TARGET_WIDTHS``), the same
    rows."""
    widths = list(range(1, w_max + 1))
    if pass_targets:
        W = np.arange(1, w_max + 1)
        q = tree_pass_chances(accept, w_max)
        kernel = compiled_kernel("TARGET_WIDTHS") if compiled else None
        if kernel is not None:
            widths.extend(kernel(q, _targets(tuple(pass_targets)), w_max))
            return widths
        for target in pass_targets:
            ok = q >= target
            widths.append(np.where(ok.any(axis=1), W[np.argmax(ok, axis=1)], w_max))
    return widths


@functools.lru_cache(maxsize=64)
def _targets(pass_targets: tuple) -> np.ndarray:
    """``pass_targets`` as ``TARGET_WIDTHS`` takes them, read-only (shared by every step)."""
    out = np.asarray(pass_targets, np.float64)
    out.setflags(write=False)
    return out


def best_plan(chain: PrefixPlan, trees: list[PrefixPlan], min_gain: float) -> PrefixPlan:
    """The plan decide() takes: ``chain``, or the last of ``trees`` (in order) whose rate is
    over (1 + ``min_gain``) x the best before it and that drafts for every request ``chain``
    drafts for."""
    best = chain
    for plan in trees:
        # a tree must not leave out a request the chain plan speculates for: starving
        # requests of drafts to deepen others' trees lost goodput in the simulator
        if (plan.rate > best.rate * (1.0 + min_gain)
                and not ((plan.depth == 0) & (chain.depth > 0)).any()):
            best = plan
    return best


def best_row(rates: list, depths: np.ndarray, nw: int, min_gain: float) -> int:
    """``best_plan(max([plans[0], *capped], key=rate), plans[1:nw], min_gain)``'s row, from
    the plans' arrays (rows 0..nw-1 the widths', then the caps'; ``rates`` Python floats):
    the same comparisons in the same order (max keeps the first of equal rates, a tree must
    beat the best before it by min_gain and keep every request the chain drafts for)."""
    chain = 0
    for r in range(nw, len(rates)):
        if rates[r] > rates[chain]:
            chain = r
    best = chain
    chain_drafts = depths[chain] > 0
    for r in range(1, nw):
        if (rates[r] > rates[best] * (1.0 + min_gain)
                and not ((depths[r] == 0) & chain_drafts).any()):
            best = r
    return best
