"""slo_goodput's step plan: the best prefix of a ranked list of draft slots, for one tree width.

A slot (request i, depth j) is worth w_i q_i^j expected (SLO-weighted) tokens, where q_i is
the chance that one depth passes: the per-token acceptance a_i for a chain, and under the
simulator's tree rule 1 - (1 - a_i)^W for a token tree of W candidates per depth (digest of
AdaServe sec. 4; the sim: depth j accepted w.p. 1 - (1 - a_j)^w_j). A W-wide depth costs W
verified tokens and W draft tokens per pass (the root pass feeds one token), which is what
``sim.core.step_plan`` charges. The prefix b of the slots (sorted by value) maximises
(sum_i w_i + w_p + value of the b slots) / T(b) -- AdaSpec's goodput / SmartSpec's
tokens-per-second objective with AdaServe-style SLO weights (the weighting is ours).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from policies.adaptive.step_cost import (NO_COEFFICIENTS, coefficient_arrays, target_seqs,
                                         verify_tokens_s)
from policies.interface import Observation


@dataclass(frozen=True)
class PrefixPlan:
    depth: np.ndarray        # int (n,), planned depth per request
    rate: float              # objective at the chosen prefix (-inf if none allowed)
    marginal: float          # value of the last slot taken (inf when none)
    depth_pass: np.ndarray   # q_i, probability that one depth passes
    widths: np.ndarray       # int (n,), candidates per depth per request (1 = chain)

    @property
    def width(self) -> int:
        """The widest tree in the plan (1: every request drafts a chain)."""
        return int(self.widths.max(initial=1))


def draft_prefix_s(obs: Observation, pos, L, b, K: int, width: int = 1) -> np.ndarray:
    """Drafting time when the first b[g] slots of the ranking are drafted, per g.

    Pass j drafts for the requests holding a slot at depth j among those b slots; counts and
    their contexts come from one searchsorted over (position, rank) keys. Passes after the
    first feed ``width`` tokens per request (a tree's beam)."""
    M = pos.size
    key = pos * (M + 1) + np.arange(M)                   # grouped by position, rank inside
    srt = np.argsort(pos.astype(np.int16), kind="stable")  # = argsort(key); radix sort
    key_s = key[srt]
    cum_L = np.concatenate([[0.0], np.cumsum((L + pos)[srt])])  # draft j attends L + j - 1
    start = np.searchsorted(key_s, np.arange(K) * (M + 1))
    idx = np.searchsorted(key_s, np.arange(K)[:, None] * (M + 1) + b[None, :])
    n_j = idx - start[:, None]
    feed = np.where(np.arange(K) == 0, 1, width)[:, None]
    ctx_j = (cum_L[idx] - cum_L[start][:, None]) * feed
    t = np.broadcast_to(np.asarray(obs.cost.draft_step_s(n_j * feed, n_j, ctx_j), float),
                        n_j.shape)
    return np.where(n_j > 0, t, 0.0).sum(axis=0)


def plan_prefix(obs: Observation, weight: np.ndarray, accept: np.ndarray, K: int, width: int,
                prefill_value: float, guard: str, slo_step_factor: float,
                max_step_tokens: int | None, num_budget_points: int,
                compiled: bool = True) -> PrefixPlan:
    """Best prefix of the slot ranking for ``width`` candidates per depth (see plan_widths)."""
    return plan_widths(obs, weight, accept, K, (width,), prefill_value, guard,
                       slo_step_factor, max_step_tokens, num_budget_points, compiled)[0]


class Ranking(NamedTuple):
    """Draft slots in the order a plan takes them: one row per ranking, R rows, n requests,
    M ranked slots (a slot's index is request * K + depth - 1)."""

    tokens: np.ndarray   # float (R, n K), expected tokens of each slot, unweighted
    value: np.ndarray    # float (R, n K), SLO-weighted value of each slot
    order: np.ndarray    # int (R, M), slot indices in the order the plan takes them
    Ws: np.ndarray       # float (R, M), verified tokens of each ranked slot (its width)
    feed: np.ndarray     # float (R, M), draft tokens each ranked slot feeds into its pass
    q: np.ndarray        # float (R, n), chance one depth passes (nan: the slots carry it)
    W: np.ndarray        # int (R, n), candidates per depth per request (1 = chain)


def width_ranking(weight: np.ndarray, accept: np.ndarray, K: int, widths) -> Ranking:
    """One ranking by slot value per tree shape in ``widths`` (see plan_widths)."""
    chains, W, q, tokens = _width_powers(accept, K, widths)
    nw = W.shape[0]
    value = tokens * np.repeat(weight, K)[None, :]
    order = np.argsort(-value, axis=1, kind="stable")    # ties: request-major, then depth
    if chains:
        Ws = np.ones(order.shape)
        return Ranking(tokens, value, order, Ws, Ws, q, W)
    req, pos = np.divmod(order, K)
    Ws = W[np.arange(nw)[:, None], req].astype(float)                  # width of each slot
    feed = np.where(pos == 0, 1.0, Ws)                   # the root pass feeds one token
    return Ranking(tokens, value, order, Ws, feed, q, W)


def _chains_only(widths) -> bool:
    """``widths`` is the chain alone ([1]): no width to look up per slot."""
    return len(widths) == 1 and np.ndim(widths[0]) == 0 and int(widths[0]) == 1


def _width_powers(accept: np.ndarray, K: int, widths):
    """(chains, W (nw, n) int widths, q (nw, n) depth pass chances, tokens (nw, n K) each
    slot's unweighted expected tokens q^j): ``width_ranking``'s powers, numpy's (shared
    with ``tree_rankings`` so its compiled rows start from the same floats)."""
    n = accept.size
    chains = _chains_only(widths)
    if chains:                   # slo_goodput's every step: no width to look up per slot
        W = np.ones((1, n), np.int64)
    else:
        W = np.empty((len(widths), n), np.int64)
        for row, x in zip(W, widths):      # a width for all, or one per request
            row[:] = x
    nw = W.shape[0]
    table = tree_pass_chances(accept, int(W.max(initial=1)))            # (n, widest)
    q = table[np.arange(n)[None, :], W - 1]                             # (nw, n)
    return chains, W, q, depth_powers(q, K).reshape(nw, n * K)        # unweighted, per slot


def tree_rankings(weight: np.ndarray, accept: np.ndarray, K: int, widths,
                  caps) -> Ranking:
    """``stack_rankings(width_ranking(widths), capped_ranking(caps))`` (the capped rows
    left out when no cap is in 1..K) with values, sorts, per-slot widths and the stacking
    in one compiled call (``TREE_RANKINGS``) and the powers numpy's: slo_goodput_tree's
    rankings in a tree step without ~30 numpy calls of glue."""
    _, W, q, tokens = _width_powers(accept, K, widths)
    caps = caps_in_range(tuple(caps), K)
    tokens_c = depth_powers(accept, K).ravel()           # capped_ranking's a_i^j
    return Ranking(*compiled_kernel("TREE_RANKINGS")(tokens, W, q, weight, K, tokens_c, accept,
                                                     caps))


def tree_plan_arrays(obs: Observation, weight: np.ndarray, accept: np.ndarray, K: int, widths,
                     caps, prefill_value: float, guard: str, slo_step_factor: float,
                     max_step_tokens: int | None, num_budget_points: int,
                     cost: "KernelCost | None"):
    """``plan_widths_and_caps``' plans as arrays (``_best_prefixes``' raw: rows the widths',
    then the caps'), so a tree step builds only the plan it takes; None where that path is
    not compiled with coefficients (or ``widths`` is the chain alone): callers plan as before."""
    if (_chains_only(widths) or cost is None or cost.kind < 0
            or compiled_kernel("TREE_RANKINGS") is None
            or compiled_kernel("PREFIX_COUNTS") is None):
        return None
    return _best_prefixes(obs, weight, K, tree_rankings(weight, accept, K, widths, caps),
                          prefill_value, guard, slo_step_factor, max_step_tokens,
                          num_budget_points, True, cost, raw=True)


def capped_ranking(weight: np.ndarray, accept: np.ndarray, K: int, caps) -> Ranking | None:
    """One chain ranking per cap c in ``caps``, which takes every slot of depth <= c first
    (then the rest, by value): its prefixes include "every request drafts c", which a ranking
    by value alone can miss when acceptance differs across requests (a good request's third
    slot ranks above a poor one's first, and each extra depth is one more draft pass, paid
    nearly in full by a memory-bound drafter). None when no cap is in 1..K."""
    n = weight.size
    caps = [int(c) for c in caps if 1 <= int(c) <= K]
    if not caps:
        return None
    tokens = depth_powers(accept, K).reshape(1, n * K)
    value = tokens * np.repeat(weight, K)[None, :]
    big = float(value.max(initial=0.0)) + 1.0
    depth = (np.arange(n * K) % K + 1)[None, :]
    rank = value + big * (depth <= np.asarray(caps)[:, None])          # (caps, n K)
    order = np.argsort(-rank, axis=1, kind="stable")
    R = len(caps)
    ones = np.ones((R, n * K))
    W = np.ones((R, n), np.int64)            # chains: every pass feeds one token per request
    if R == 1:                               # the default caps (1,): nothing to broadcast
        return Ranking(tokens, value, order, ones, ones, accept[None, :], W)
    return Ranking(np.broadcast_to(tokens, (R, n * K)), np.broadcast_to(value, (R, n * K)),
                   order, ones, ones, np.broadcast_to(accept, (R, n)), W)


def chain_rankings(kernel, weight: np.ndarray, accept: np.ndarray, K: int, caps) -> Ranking:
    """``stack_rankings(width_ranking(.., [1]), capped_ranking(.., caps))`` with the values
    and the sorts in one compiled loop (``slo_goodput_kernels``); the powers stay numpy's."""
    n = weight.size
    caps = caps_in_range(tuple(caps), K)
    q, tokens_w, tokens_c = chain_powers(accept, K)
    tokens, value, order = kernel(tokens_w, tokens_c, weight, K, caps)
    R = order.shape[0]
    ones = np.ones((R, n * K))
    depth_pass = np.empty((R, n))
    depth_pass[0] = q[0]
    depth_pass[1:] = accept                  # the capped rows: chains at the request's rate
    return Ranking(tokens, value, order, ones, ones, depth_pass, np.ones((R, n), np.int64))


def depth_powers(x: np.ndarray, K: int) -> np.ndarray:
    """x^1..x^K along a new last axis, each power the one before times x: a chain's chance
    that depths 1..j all pass. Products, not numpy's pow (which need not round as a
    compiled pow does), so the compiled plan (``CHAIN_DECIDE``) forms the same floats in its
    own loop instead of taking them from numpy."""
    return np.cumprod(np.broadcast_to(x[..., None], x.shape + (K,)), axis=-1)


def tree_pass_chances(accept: np.ndarray, w_max: int) -> np.ndarray:
    """(n, w_max): the chance that a tree depth of W candidates passes, 1 - (1 - a_i)^W for
    W = 1..w_max (independent siblings). The powers are products, as ``depth_powers``', so
    the compiled tree step (``DECIDE_TREE_STEP``) forms the same floats in its own loop;
    W = 1 gives a_i's own chain chance, 1 - (1 - a_i)."""
    return 1.0 - depth_powers(1.0 - accept, w_max)


def chain_q(accept: np.ndarray) -> np.ndarray:
    """(1, n): the chance one chain depth passes as ``width_ranking`` has it for width 1,
    q = 1 - (1 - a)^1."""
    return 1.0 - (1.0 - accept[None, :]) ** _ones(accept.size)


def chain_powers(accept: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q (1, n), q_i^j and a_i^j raveled (n K,)): the chain slots' expected tokens as
    ``width_ranking`` (width 1) and ``capped_ranking`` compute them."""
    q = chain_q(accept)
    return q, depth_powers(q[0], K).ravel(), depth_powers(accept, K).ravel()


@functools.lru_cache(maxsize=1024)
def _ones(n: int) -> np.ndarray:
    """(1, n) float ones, the exponent of ``chain_q``, read-only, kept per size: float,
    which numpy's power casts an int exponent to anyway (the same floats, no cast per call)."""
    ones = np.ones((1, n))
    ones.setflags(write=False)
    return ones


@functools.lru_cache(maxsize=256)
def caps_in_range(caps: tuple, K: int) -> np.ndarray:
    """``chain_caps`` in 1..K as the kernel takes them (read-only: shared by every step)."""
    out = np.asarray([int(c) for c in caps if 1 <= int(c) <= K], np.int64)
    out.setflags(write=False)
    return out


def stack_rankings(*rankings: Ranking) -> Ranking:
    """The rows of several rankings with the same ranked-slot count, planned in one pass
    (each row's arithmetic is unchanged, so each plan is the same as alone)."""
    return Ranking(*(np.concatenate(parts, axis=0) for parts in zip(*rankings)))


def plan_widths(obs: Observation, weight: np.ndarray, accept: np.ndarray, K: int, widths,
                prefill_value: float, guard: str, slo_step_factor: float,
                max_step_tokens: int | None, num_budget_points: int,
                compiled: bool = True) -> list[PrefixPlan]:
    """Best prefix of the slot ranking for each tree shape in ``widths``, all at once.

    A shape is a width for every request (an int) or one per request (an (n,) int array; a
    request's slots then cost its own width). ``guard``: "step" refuses b > 0 when T(b) >
    slo_step_factor x the tightest TPOT SLO (unless T(0) exceeds it too); "per_token" refuses
    it only when, in addition, the batch's time per expected token is no lower than without
    speculation (the TPOT SLO bounds time per token, not per step; ours); "off" never
    refuses. Draft pass j's size for a prefix comes from counts of the ranked slots per depth
    (one bincount + cumsum, no per-b loop)."""
    return _best_prefixes(obs, weight, K, width_ranking(weight, accept, K, widths),
                          prefill_value, guard, slo_step_factor, max_step_tokens,
                          num_budget_points, compiled)


def plan_widths_and_caps(obs: Observation, weight: np.ndarray, accept: np.ndarray, K: int,
                         widths, caps, prefill_value: float, guard: str,
                         slo_step_factor: float, max_step_tokens: int | None,
                         num_budget_points: int, compiled: bool = True,
                         cost: "KernelCost | None" = None) -> tuple[list, list]:
    """(plan_widths(widths), the chain plans of ``capped_ranking(caps)``) from one pass over
    their stacked rankings: the same plans as apart, for half the array operations.
    ``cost``: the step's ``kernel_cost(obs)`` when the caller has it."""
    chains = _chains_only(widths)
    kernel = compiled_kernel("CHAIN_RANKINGS") if compiled and chains else None
    if kernel is not None:
        plans = _best_prefixes(obs, weight, K, chain_rankings(kernel, weight, accept, K, caps),
                               prefill_value, guard, slo_step_factor, max_step_tokens,
                               num_budget_points, compiled, cost)
        return plans[:1], plans[1:]
    if compiled and compiled_kernel("TREE_RANKINGS") is not None:
        ranking = tree_rankings(weight, accept, K, widths, caps)
        plans = _best_prefixes(obs, weight, K, ranking, prefill_value, guard, slo_step_factor,
                               max_step_tokens, num_budget_points, compiled, cost)
        nw = len(widths)
        return plans[:nw], plans[nw:]
    rankings = [width_ranking(weight, accept, K, widths)]
    capped = capped_ranking(weight, accept, K, caps)
    if capped is not None:
        rankings.append(capped)
    plans = _best_prefixes(obs, weight, K, stack_rankings(*rankings), prefill_value, guard,
                           slo_step_factor, max_step_tokens, num_budget_points, compiled, cost)
    nw = rankings[0].order.shape[0]
    return plans[:nw], plans[nw:]


def plan_slots(obs: Observation, weight: np.ndarray, slot_pass: np.ndarray,
               slot_widths: np.ndarray, rank: np.ndarray, prefill_value: float, guard: str,
               slo_step_factor: float, max_step_tokens: int | None,
               num_budget_points: int, compiled: bool = True) -> PrefixPlan:
    """The best prefix of draft slots over several rankings, given per slot (n, K) arrays:
    ``slot_pass``, the chance slot (i, j) is accepted (a hindsight oracle passes 0 or 1),
    ``slot_widths``, its tree width (1: a chain), and ``rank`` (R, n, K): R orders to take
    slots in (descending, ties depth-major: shallow slots of every request first, so equal
    slots share draft passes). A rank must not rise along a request's depths, so every
    prefix is a set of per-request prefixes. The objective, guard and costs are
    ``plan_widths``'; pass j feeds depth j - 1's width. Returns the best plan of all rows."""
    n, K = slot_pass.shape
    R = rank.shape[0]
    plan = _compiled_slot_plan(obs, weight, slot_pass, slot_widths, rank, prefill_value,
                               guard, slo_step_factor, max_step_tokens, num_budget_points,
                               compiled)
    if plan is not None:                         # orders, plans and choice in one call
        return plan
    tokens = np.broadcast_to(np.asarray(slot_pass, float).reshape(1, n * K), (R, n * K))
    value = tokens * np.repeat(weight, K)[None, :]
    # only slots that may pass are ranked (one that cannot only costs); slot index =
    # request * K + depth; lexsort's last key is primary: rank descending, then depth
    live = np.flatnonzero(tokens[0] > 0)
    depth_key = live % K
    order = live[np.stack([np.lexsort((depth_key, -r.reshape(n * K)[live])) for r in rank])]
    sw = np.asarray(slot_widths, np.int64)
    fed = np.concatenate([np.ones((n, 1), np.int64), sw[:, :K - 1]], axis=1)
    Ws = np.take(sw.reshape(n * K), order).astype(float)
    feed = np.take(fed.reshape(n * K), order).astype(float)
    q = np.full((R, n), np.nan)      # no per-request depth-pass rate: the slots carry it
    W = np.broadcast_to(sw.max(axis=1), (R, n))
    plans = _best_prefixes(obs, weight, K, Ranking(tokens, value, order, Ws, feed, q, W),
                           prefill_value, guard, slo_step_factor, max_step_tokens,
                           num_budget_points, compiled)
    return max(plans, key=lambda p: p.rate)


def _compiled_slot_plan(obs: Observation, weight: np.ndarray, slot_pass: np.ndarray,
                        slot_widths: np.ndarray, rank: np.ndarray | None,
                        prefill_value: float, guard: str, slo_step_factor: float,
                        max_step_tokens: int | None, num_budget_points: int,
                        compiled: bool) -> PrefixPlan | None:
    """``plan_slots`` in one compiled call (``slo_goodput_step_kernels.SLOT_PLAN``; with
    ``rank`` None, ``ORACLE_SLOT_PLAN`` over ``OracleSlo``'s orders), for cost models with
    coefficients; None where it does not apply."""
    kernel = step_kernel("SLOT_PLAN" if rank is not None else "ORACLE_SLOT_PLAN") \
        if compiled else None
    cost = kernel_cost(obs) if kernel is not None else None
    if cost is None or cost.kind < 0:
        return None
    slot_pass = np.asarray(slot_pass, float)
    num_live = int(np.count_nonzero(slot_pass > 0))
    b, first = prefix_grid(num_live, num_budget_points)
    ranks = () if rank is None else (np.asarray(rank, float),)
    row, rate, depth, marginal, widest = kernel(
        slot_pass, np.asarray(slot_widths, np.int64), *ranks, weight, obs.context_lens,
        num_live, first, b, b.size == num_live + 1, cost.kind, cost.draft, cost.target,
        cost.tokens_base, cost.seqs, cost.ctx_base, float(prefill_value),
        obs.tpot_slo_s, float(slo_step_factor), _GUARDS[guard],
        -1 if max_step_tokens is None else int(max_step_tokens), int(obs.num_prefill_tokens))
    return PrefixPlan(depth=depth, rate=float(rate), marginal=float(marginal),
                      depth_pass=np.full(slot_pass.shape[0], np.nan), widths=widest)


def plan_oracle_slots(obs: Observation, weight: np.ndarray, slot_pass: np.ndarray,
                      slot_widths: np.ndarray, prefill_value: float, guard: str,
                      slo_step_factor: float, max_step_tokens: int | None,
                      num_budget_points: int) -> PrefixPlan | None:
    """``plan_slots`` over ``OracleSlo``'s slot orders (SLO weight per verified node, then
    every cap's), the orders built in the same compiled call
    (``slo_goodput_step_kernels.ORACLE_SLOT_PLAN``, numpy's floats); None for a cost model
    without coefficients (the caller builds the orders and calls ``plan_slots``)."""
    return _compiled_slot_plan(obs, weight, slot_pass, slot_widths, None, prefill_value,
                               guard, slo_step_factor, max_step_tokens, num_budget_points,
                               True)


class KernelCost(NamedTuple):
    """``Observation.cost`` as the kernels take it (``CostCoefficients``), with the parts of
    a step's target pass that do not depend on the drafts (``verify_tokens_s``')."""

    kind: int                # 0 roofline, 1 affine, -1: no coefficients (call the model)
    target: np.ndarray       # float (5,), the target pass's coefficients, zero-padded
    draft: np.ndarray        # float (5,), one draft pass's
    tokens_base: float       # prefill tokens + one bonus position per decoding request
    seqs: float              # sequences in the target pass
    ctx_base: float          # their attention context before any draft


_GUARDS = {"off": 0, "step": 1, "per_token": 2}      # the kernels' guard codes


def kernel_cost(obs: Observation, form: tuple | None = None,
                ctx_base: float | None = None) -> KernelCost:
    """The step's ``KernelCost``: kind -1 (zero coefficients) when the cost model has no
    ``coefficients()`` (``step_cost.coefficient_arrays``). ``form``: those arrays where the
    caller has them; ``ctx_base``: the context base where a compiled call summed it (the
    same float: sum_prefill_context_tokens + the whole decode contexts)."""
    kind, target, draft = form or coefficient_arrays(obs.cost) or NO_COEFFICIENTS
    if ctx_base is None:
        ctx = obs.context_lens
        # whole tokens: exact in any order (a Python sum over a short list costs a quarter)
        ctx_sum = (sum(ctx.tolist()) if ctx.shape[0] <= 48 and ctx.dtype.kind in "iu"
                   else ctx.sum())
        ctx_base = obs.sum_prefill_context_tokens + float(ctx_sum)
    return KernelCost(kind, target, draft, float(obs.num_prefill_tokens + obs.num_requests),
                      float(target_seqs(obs)), ctx_base)


@functools.cache
def compiled_kernel(name: str):
    """A compiled loop of ``slo_goodput_kernels`` (numba loaded on first use), or None."""
    from policies.adaptive import slo_goodput_kernels
    return getattr(slo_goodput_kernels, name)


@functools.cache
def step_kernel(name: str):
    """A compiled hook of ``slo_goodput_step_kernels`` (numba loaded on first use), or None."""
    from policies.adaptive import slo_goodput_step_kernels
    return getattr(slo_goodput_step_kernels, name)


def chain_decide(obs: Observation, weight: np.ndarray, accept: np.ndarray, K: int, caps,
                 queue_value: float, prefill_neutral: bool, guard: str,
                 slo_step_factor: float, max_step_tokens: int | None,
                 num_budget_points: int, extend: int,
                 cost: KernelCost) -> tuple[PrefixPlan, np.ndarray, float]:
    """A chain step's plan in one compiled call (``slo_goodput_step_kernels.CHAIN_DECIDE``),
    for a cost model with coefficients (``cost``: the step's ``kernel_cost``): the best of
    ``plan_widths_and_caps(widths=[1], caps)``'s plans as ``SloGoodput.decide`` takes it,
    the lengths with ``extend`` positions past a planned depth, and the prefill chunk's
    value (``prefill_chunk_value``; ``queue_value``: its queue term). The same floats."""
    n = weight.size
    q = chain_q(accept)
    b, first = prefix_grid(n * K, num_budget_points)
    row, rate, depth, marginal, k, prefill_value = step_kernel("CHAIN_DECIDE")(
        q[0], accept, weight, K, caps_in_range(tuple(caps), K), first, b,
        b.size == n * K + 1, obs.context_lens, cost.kind, cost.draft, cost.target,
        cost.tokens_base, cost.seqs, cost.ctx_base, obs.tpot_slo_s, slo_step_factor,
        _GUARDS[guard], -1 if max_step_tokens is None else int(max_step_tokens),
        int(obs.num_prefill_tokens), float(obs.sum_prefill_context_tokens), queue_value,
        prefill_neutral, extend)
    # row 0 ranks by q (width 1), the capped rows by the request's rate (chain_rankings)
    plan = PrefixPlan(depth=depth, rate=float(rate), marginal=float(marginal),
                      depth_pass=q[0] if row == 0 else accept.copy(),
                      widths=np.ones(n, np.int64))
    return plan, k, float(prefill_value)


@functools.lru_cache(maxsize=1024)
def prefix_grid(num_slots: int, num_budget_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, first): the prefix lengths a plan searches over ``num_slots`` ranked slots (every
    one, or ``num_budget_points`` evenly spaced with 0 and ``num_slots`` kept) and, per slot
    rank r, the first prefix that holds it (r < b[g]). A pure function of the two counts,
    kept per pair (read-only arrays): every step of a batch size asks for the same grid."""
    M = num_slots
    if M + 1 <= num_budget_points:
        b = np.arange(M + 1)
        first = np.arange(1, M + 1)                      # slot r joins prefix r + 1
    else:                                                # coarse prefix grid, 0 and M kept
        # rounded evenly spaced points ascend: np.unique's sort is dropping repeats; the
        # oracles ask for a new slot count most steps, so this runs often (~12 against ~50 us)
        b = np.linspace(0, M, num_budget_points).round().astype(np.int64)
        new = np.empty(b.size, np.bool_)
        new[0] = True
        np.not_equal(b[1:], b[:-1], out=new[1:])
        b = b[new]
        # slot r joins the first prefix b[g] > r: g = how many points are <= r
        first = np.bincount(b, minlength=M + 1)[:M].cumsum()
    b.setflags(write=False)
    first.setflags(write=False)
    return b, first


def _best_prefixes(obs: Observation, weight: np.ndarray, K: int, ranking: Ranking,
                   prefill_value: float, guard: str, slo_step_factor: float,
                   max_step_tokens: int | None, num_budget_points: int,
                   compiled: bool = True, cost: KernelCost | None = None,
                   raw: bool = False) -> list[PrefixPlan]:
    """For each row of ``ranking``: the prefix b maximising (sum w + w_p + value of the b
    slots) / T(b) under the guard (``plan_widths``). ``compiled``: the loops of
    ``slo_goodput_kernels`` (the same floats) instead of numpy's array operations; ``cost``:
    the step's ``kernel_cost(obs)`` if the caller has it. ``raw`` (compiled with
    coefficients only): the plans' arrays (depths, rates, marginals, q, W), row r's plan
    being PrefixPlan(depths[r], rates[r], marginals[r], q[r], W[r])."""
    tokens, value, order, Ws, feed, q, W = ranking
    n, nw = obs.num_requests, order.shape[0]
    M = order.shape[1]                                   # slots ranked (n K unless pruned)
    b, first = prefix_grid(M, num_budget_points)
    full = b.size == M + 1                               # every prefix: b = 0..M
    # chains only (every width 1): each slot verifies one token and feeds one to its pass,
    # so the width-weighted sums below are the plain ones (the same floats, fewer passes)
    chains = int(W.max(initial=1)) == 1
    prefix_counts = compiled_kernel("PREFIX_COUNTS") if compiled else None
    compiled = prefix_counts is not None
    if compiled and cost is None:
        cost = kernel_cost(obs)
    if compiled and cost.kind >= 0:              # counts, costs and choice in one call
        g, rates, depths, marginals = compiled_kernel("PLAN_ROWS")(
            order, first, obs.context_lens, feed, Ws, K, chains, full, b, cost.kind,
            cost.draft, cost.target, cost.tokens_base, cost.seqs, cost.ctx_base, value,
            tokens, float(weight.sum() + prefill_value), n,
            slo_step_factor * float(obs.tpot_slo_s.min(initial=np.inf)), _GUARDS[guard],
            -1 if max_step_tokens is None else int(max_step_tokens),
            int(obs.num_prefill_tokens))
        if raw:
            return depths, rates, marginals, q, W
        return [PrefixPlan(depth=depths[r], rate=float(rates[r]), marginal=float(marginals[r]),
                           depth_pass=q[r], widths=W[r]) for r in range(nw)]
    if compiled:                                 # a model called back: its passes in Python
        n_j, ctx_j, fed_j, ctx_v, ver_v = prefix_counts(
            order, first, obs.context_lens, feed, Ws, b.size, K, chains, full, b)
        verified = b.astype(float) if chains else ver_v
        req = None
    else:
        req, pos = np.divmod(order, K)
        L = obs.context_lens.astype(float)[req]                        # (nw, M)
        cell = ((np.arange(nw)[:, None] * b.size + first[None, :]) * K + pos).ravel()
        size = nw * b.size * K

        def per_depth(weights):
            return np.bincount(cell, weights=weights, minlength=size).reshape(
                nw, b.size, K).cumsum(axis=1)
        zero = np.zeros((nw, 1))

        def prefix_sum(x):
            out = np.concatenate([zero, np.cumsum(x, axis=1)], axis=1)
            return out if full else out[:, b]
        n_j = per_depth(None)
        fed_j = n_j if chains else per_depth(feed.ravel())
        ctx_j = per_depth(((L + pos) if chains else (L + pos) * feed).ravel())
        verified = b.astype(float) if chains else prefix_sum(Ws)   # (B,) broadcasts over rows
        ctx_v = prefix_sum((L + pos + 1) if chains else (L + pos + 1) * Ws)
    t_j = np.asarray(obs.cost.draft_step_s(n_j if chains else fed_j, n_j, ctx_j),
                     float)                                           # draft j attends
    draft = np.where(n_j > 0, t_j, 0.0).sum(axis=2)                    # (nw, B)
    T = draft + verify_tokens_s(obs, verified, ctx_v)
    cap_s = slo_step_factor * float(obs.tpot_slo_s.min(initial=np.inf))
    base_value = weight.sum() + prefill_value
    if compiled:
        g, rates, depths, marginals = compiled_kernel("BEST_ROWS")(
            T, value, tokens, order, K, b, full, float(base_value), n, cap_s, _GUARDS[guard],
            -1 if max_step_tokens is None else int(max_step_tokens),
            int(obs.num_prefill_tokens), np.atleast_2d(verified), not chains)
        return [PrefixPlan(depth=depths[r], rate=float(rates[r]), marginal=float(marginals[r]),
                           depth_pass=q[r], widths=W[r]) for r in range(nw)]
    rows = np.arange(nw)[:, None]
    cum_v = prefix_sum(value[rows, order])
    rate = (base_value + cum_v) / T
    blocked = np.zeros(T.shape, bool)
    if guard != "off":
        blocked = (T > cap_s) & (T[:, :1] <= cap_s)
        if guard == "per_token":
            per_token_s = T / (n + prefix_sum(tokens[rows, order]))
            blocked &= per_token_s >= per_token_s[:, :1]
    if max_step_tokens is not None:
        blocked |= obs.num_prefill_tokens + n + verified > max_step_tokens
    rate = np.where(blocked & (b > 0)[None, :], -np.inf, rate)
    g = np.argmax(rate, axis=1)
    plans = []
    for r in range(nw):
        best = int(b[g[r]])
        depth = np.bincount(req[r, :best], minlength=n).astype(np.int64)
        marginal = float(value[r, order[r, best - 1]]) if best > 0 else np.inf
        plans.append(PrefixPlan(depth=depth, rate=float(rate[r, g[r]]), marginal=marginal,
                                depth_pass=q[r], widths=W[r]))
    return plans
