"""What slo_goodput's plan weighs a step's work by: each request's SLO weight w_i (after
AdaServe eq. 3's demand A_i; the clipped boost and the triage are ours) and the value w_p of
the prefill chunk sharing the step. The rules and their evidence: ``SloGoodput``'s docstring.
"""
from __future__ import annotations

import numpy as np

from policies.interface import Observation

HORIZONS = {"step": 0, "request": 1, "both": 2}     # slo_weights' horizons, as its kernel codes


def slo_weights(obs: Observation, t_step_s: float, slo_weight: float, max_boost: float,
                slack_discount: float, triage: bool, slo_margin: float = 0.0,
                lost_weight: float | None = None, compiled: bool = False,
                remaining: np.ndarray | None = None, horizon: str = "both") -> np.ndarray:
    """w_i from the SLO demand A_i (1 for requests without a TPOT SLO): 1 + ``slo_weight`` *
    clip(A_i - 1, -``slack_discount``, ``max_boost``), tapered with ``triage``.

    A_i is measured against (1 - ``slo_margin``) * the TPOT SLO. Why a margin: the plan
    brings a request behind its SLO back to exactly on it, and accepted lengths are random,
    so about half of those requests ended a few per cent over it (decode-heavy L40 at 2x
    saturation, 5 seeds: 152 of 678 interactive requests with their TTFT met ended at
    1.00-1.05x their TPOT SLO).
    ``lost_weight`` (None: off) caps w_i of a request that has already missed its TTFT SLO
    (``Observation.ttft_slo_s``; TTFT = since_arrival_s - decode_elapsed_s): goodput counts
    it no more, so a TPOT boost buys nothing there, and its tokens are worth only the slot
    they free when it finishes.
    Measured (slo_goodput's defaults are margin 0.05 and lost weight 0.5). Decode-heavy L40
    at 2x saturation, 20 seeds: +5.3 % goodput with the margin alone, +3.0 % with the lost
    weight alone, +8.5 % with both; 0.03 and 0.08 margins gained about as much as 0.05 (5
    seeds). ``experiments.compare`` (Azure conv, 8 seeds) at 9.7 / 12 / 15 req/s: margin alone
    -0.7 / -0.9 / +1.1 %, lost weight alone +0.3 / +2.3 / +0.7 %, both +0.3 / +0.1 / -0.6 %.
    Below saturation no request misses its TTFT and the margin moved goodput by < 0.3 %.
    oracle_slo uses the same weights (its gain with both: +6.5 % on decode-heavy at 2x).
    ``compiled``: one loop over the requests (``slo_goodput_kernels``), the same floats.

    ``remaining`` (None: this step's demand alone): each request's expected remaining output
    R_i (``request_state.OutputLengths``), for the demand over the request's horizon: the
    tokens per step it must average from now to its end for its mean TPOT to meet the SLO,
    rho_i (``request_demand``). ``horizon`` "request" reads A_i - 1 as rho_i - 1; "both"
    as the smaller of the two (a request counts as behind only as far as it is both behind
    now and behind the pace its expected remaining output needs). ``compiled``: the same
    floats, ``remaining`` included."""
    code = HORIZONS[horizon] if remaining is not None else 0
    if compiled:
        from policies.adaptive.slo_goodput_plan import compiled_kernel
        kernel = compiled_kernel("SLO_WEIGHTS")
        if kernel is not None:
            lost = lost_weight is not None and obs.ttft_slo_s is not None
            return kernel(obs.num_output_tokens, obs.decode_elapsed_s, obs.tpot_slo_s,
                          float(t_step_s), float(slo_weight), float(max_boost),
                          float(slack_discount), bool(triage), 1.0 - float(slo_margin),
                          obs.since_arrival_s, obs.ttft_slo_s if lost else obs.tpot_slo_s,
                          float(lost_weight) if lost else np.inf, lost,
                          obs.tpot_slo_s if remaining is None
                          else np.asarray(remaining, np.float64), code)
    o = np.maximum(obs.num_output_tokens - 1, 0)
    target_s = obs.tpot_slo_s * (1.0 - float(slo_margin))
    with np.errstate(divide="ignore", invalid="ignore"):
        A = (obs.decode_elapsed_s + t_step_s) / target_s - o
    behind = np.where(np.isfinite(obs.tpot_slo_s), A - 1.0, 0.0)
    if code:
        over_horizon = request_demand(obs, t_step_s, slo_margin, remaining) - 1.0
        behind = over_horizon if code == 1 else np.minimum(behind, over_horizon)
    return _weights_from_behind(obs, behind, slo_weight, max_boost, slack_discount, triage,
                                lost_weight)


def request_demand(obs: Observation, t_step_s: float, slo_margin: float,
                   remaining: np.ndarray) -> np.ndarray:
    """rho_i: the tokens per step (of ``t_step_s``) request i must average over its expected
    ``remaining`` output for its mean TPOT to end within (1 - ``slo_margin``) x its SLO; 1
    for requests without a TPOT SLO, inf where even an instant finish would miss it."""
    target_s = obs.tpot_slo_s * (1.0 - float(slo_margin))
    R = np.maximum(np.asarray(remaining, float), 1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        budget_s = target_s * (obs.num_output_tokens + R - 1.0) - obs.decode_elapsed_s
        rho = np.where(budget_s > 0, t_step_s * R / budget_s, np.inf)
    return np.where(np.isfinite(obs.tpot_slo_s), rho, 1.0)


def _weights_from_behind(obs: Observation, behind: np.ndarray, slo_weight: float,
                         max_boost: float, slack_discount: float, triage: bool,
                         lost_weight: float | None) -> np.ndarray:
    """w_i from ``behind`` (A_i - 1): the clipped boost, the triage, the lost weight."""
    u = np.minimum(np.maximum(behind, -slack_discount), max_boost)   # np.clip, cheaper
    if triage:     # far behind: the boost tapers to 0 at 2 * max_boost (triage)
        u = np.where(behind > max_boost, np.maximum(2 * max_boost - behind, 0.0), u)
    w = np.maximum(1.0 + slo_weight * u, 1e-3)
    if lost_weight is not None and obs.ttft_slo_s is not None:
        missed = (obs.since_arrival_s - obs.decode_elapsed_s) > obs.ttft_slo_s
        w = np.where(missed, np.minimum(w, float(lost_weight)), w)
    return w


def fair_share_weights(obs: Observation, w: np.ndarray, accept: np.ndarray,
                       gamma: float) -> np.ndarray:
    """w_i scaled by (1 - a_i)^gamma (the inverse of request i's expected tokens per verify
    with unbounded drafts, to the power gamma), renormalised to the same mean, when no
    request waits and none is behind its TPOT SLO (every w_i <= 1); else ``w`` unchanged.

    A slot's rate value favours high-acceptance requests, whose deep chains lengthen every
    request's step: with slack and no queue, that slows the low-acceptance requests, which
    finish last and set the run's span (goodput's denominator at light load). Weighting by
    the inverse of the expected rate is proportional fairness (maximise sum_i log r_i, whose
    gradient in r_i is 1 / r_i). Decode-heavy L40 at 3.7 req/s (5 seeds): slo_goodput's span
    was 1-3 % longer than fixed k=2's with every request within its SLO; with gamma = 1
    goodput rose 2.2 % there, 1.5 % at 7.4 req/s, 0.3-0.9 % in the other robustness
    scenarios below saturation and at Mooncake's 2x, and fell 1 % at Azure conv's 2x. Applied
    with a queue too it lost 7-13 % past saturation (throughput first there); gamma 0.5 and
    1.5 gained less at light load."""
    if gamma <= 0.0 or obs.num_waiting > 0 or w.size == 0 or (w > 1.0).any():
        return w
    f = (1.0 - np.minimum(np.maximum(accept, 0.0), 0.95)) ** gamma
    return w * (f / f.mean())


def queue_value(obs: Observation, queue_weight: float, ttft_ref_s: float) -> float:
    """The queue term of w_p: ``queue_weight`` (1 + oldest wait / ``ttft_ref_s``) in a step
    with a prefill chunk, else 0."""
    if obs.num_prefill_tokens <= 0:
        return 0.0
    return queue_weight * (1 + obs.oldest_waiting_s / ttft_ref_s)


def prefill_chunk_value(obs: Observation, queue_weight: float, ttft_ref_s: float,
                        prefill_neutral: bool, compiled: bool = False) -> float:
    """w_p: what the step's prefill chunk is worth, in emitted-token units:
    ``neutral_prefill_value`` with ``prefill_neutral``, plus the optional queue term
    ``queue_weight`` (1 + oldest wait / ``ttft_ref_s``). ``compiled``: the neutral value's
    two target passes in one loop from the cost coefficients (the same floats)."""
    if obs.num_prefill_tokens <= 0:
        return 0.0
    value = queue_value(obs, queue_weight, ttft_ref_s)
    if not prefill_neutral:
        return value + 0.0
    if compiled:
        from policies.adaptive.slo_goodput_plan import step_kernel
        from policies.adaptive.step_cost import coefficient_arrays
        kernel = step_kernel("NEUTRAL_PREFILL_VALUE")
        form = coefficient_arrays(obs.cost) if kernel is not None else None
        if form is not None:
            return value + kernel(obs.context_lens, int(obs.num_prefill_tokens),
                                  float(obs.sum_prefill_context_tokens), form[0], form[1])
    return value + neutral_prefill_value(obs)


def neutral_prefill_value(obs: Observation) -> float:
    """A prefill chunk's worth at the pure-decode step's rate: w_p = n T_p / T_d (T_d: the
    decode-only target pass at b = 0, T_p: the time the chunk adds to it), so a draft slot is
    judged against the rate speculation must beat without the chunk. Valued at 0, the chunk's
    time looked like sunk overhead and let 0.1-probability slots in (65% of verified drafts
    accepted vs the oracle's 100% at 9.4 req/s in the compare sweep)."""
    n = obs.num_requests
    if obs.num_prefill_tokens <= 0 or n == 0:
        return 0.0
    ctx = float(obs.context_lens.sum())
    t_dec = float(obs.cost.target_step_s(n, n, ctx))
    t_all = float(obs.cost.target_step_s(obs.num_prefill_tokens + n, n + 1,
                                         obs.sum_prefill_context_tokens + ctx))
    return n * max(t_all - t_dec, 0.0) / t_dec if t_dec > 0 else 0.0
