"""The policies' compiled decisions for the simulator's pure-decode stretches
(``policies.interface.CompiledDecisions``), behind one pair of compiled functions that take
the rule's id.

Why ids and not the functions themselves: the simulator's loop over a stretch is one cached
compiled function, and numba's on-disk cache never serves a function that takes another
jitted function as an argument or callee chosen at run time (the argument's type names the
process's function object, so every process compiled the loop anew: ~8 s here). A rule is
added here, under a new id, with its policy's ``decide`` and ``commit`` kernels.
"""
from __future__ import annotations

from policies.adaptive import (adaspec_kernels, oracle_kernels, slo_goodput_decision_kernels,
                               smartspec_kernels, threshold_kernels, vllm_verify_kernels)
from policies.adaptive.slo_goodput_kernels import numba
from policies.adaptive.step_cost_kernels import COEFFICIENTS

# the rules' ids (CompiledDecisions.rule)
ORACLE, SMARTSPEC, ORACLE_SLO, THRESHOLD, VLLM_ADAPTIVE_VERIFY, ADASPEC, SLO_GOODPUT = range(7)


def _decide(rule, state, ints, params, now_s, batch, k_max, out, nodes):
    """Rule ``rule``'s ``decide`` (``CompiledDecisions``): True, or False (declined); a
    rule with trees (``CompiledDecisions.trees``) writes a tree step's widths per depth into
    ``nodes`` (int64 (n, k_max), zeros on entry; left zero: a chain step)."""
    if rule == ORACLE:
        return _oracle_decide(state, params, now_s, batch, k_max, out)
    if rule == SMARTSPEC:
        return _smartspec_decide(state, params, now_s, batch, k_max, out)
    if rule == ORACLE_SLO:
        return _oracle_slo_decide(state, params, now_s, batch, k_max, out)
    if rule == THRESHOLD or rule == VLLM_ADAPTIVE_VERIFY:
        return _every_request_k(params, k_max, out)
    if rule == ADASPEC:
        return _adaspec_decide(state, params, now_s, batch, k_max, out)
    if rule == SLO_GOODPUT:
        return _slo_goodput_decide(state, ints, params, now_s, batch, k_max, out, nodes)
    return False


def _every_request_k(params, k_max, out):
    """A decide of every request drafting the rule's first field (``params[COEFFICIENTS]``;
    k_max where < 0, or if lower): threshold's and vllm_adaptive_verify's."""
    k = params[COEFFICIENTS]
    k = k_max if k < 0 else min(int(k), k_max)
    for i in range(out.shape[0]):
        out[i] = k
    return True


def _commit(rule, state, ints, params, num_spec_tokens, num_accepted, draft_s, verify_s,
            confidences, finished):
    """Rule ``rule``'s ``commit`` (``CompiledDecisions``)."""
    if rule == ORACLE:
        _oracle_commit(state, params, num_spec_tokens, num_accepted, draft_s, verify_s)
    elif rule == SMARTSPEC:
        _smartspec_commit(state, params, num_spec_tokens, num_accepted, draft_s, verify_s)
    elif rule == ORACLE_SLO:
        _oracle_slo_commit(state, params, num_spec_tokens, num_accepted, draft_s, verify_s)
    elif rule == SLO_GOODPUT:
        _slo_goodput_commit(state, ints, params, num_spec_tokens, num_accepted, draft_s,
                            verify_s, confidences, finished)
    # threshold, vllm_adaptive_verify and adaspec observe nothing (adaspec's prior learns
    # in its drafting rule)


def _draft(rule, state, ints, params, drafted, k, confidences, draft_time_s, more):
    """Rule ``rule``'s drafting rule after a draft pass (``CompiledDecisions.drafting``):
    ``CompiledDrafting``'s arguments, the answer written into ``more``."""
    if rule == THRESHOLD:
        _threshold_draft(state, params, drafted, k, confidences, draft_time_s, more)
    elif rule == ADASPEC:
        _adaspec_draft(state, params, drafted, k, confidences, draft_time_s, more)
    elif rule == SLO_GOODPUT:
        _slo_goodput_draft(state, ints, params, drafted, k, confidences, draft_time_s, more)


def _verify(rule, state, ints, params, context_lens, drafted, confidences, draft_time_s, out):
    """Rule ``rule``'s verification (``CompiledDecisions.verifying``): ``select_verify`` on
    the step's drafts (``context_lens`` as the Observation's, ``confidences`` nan past each
    request's drafts), the verified counts written into ``out``."""
    if rule == VLLM_ADAPTIVE_VERIFY:
        _vllm_verify(state, params, context_lens, drafted, confidences, draft_time_s, out)
    elif rule == ADASPEC:
        _adaspec_verify(state, params, context_lens, drafted, confidences, draft_time_s, out)
    elif rule == SLO_GOODPUT:
        _slo_goodput_verify(state, ints, params, context_lens, drafted, confidences,
                            draft_time_s, out)


_oracle_decide, _oracle_commit = oracle_kernels.DECIDE_STEPS, oracle_kernels.COMMIT_STEPS
_oracle_slo_decide = oracle_kernels.SLO_DECIDE_STEPS
_oracle_slo_commit = oracle_kernels.SLO_COMMIT_STEPS
_smartspec_decide = smartspec_kernels.DECIDE_STEPS
_smartspec_commit = smartspec_kernels.COMMIT_STEPS
_threshold_draft = threshold_kernels.DRAFT_STEPS
_vllm_verify = vllm_verify_kernels.VERIFY_STEPS
_adaspec_decide = adaspec_kernels.DECIDE_STEPS
_adaspec_draft, _adaspec_verify = adaspec_kernels.DRAFT_STEPS, adaspec_kernels.VERIFY_STEPS
_slo_goodput_decide = slo_goodput_decision_kernels.DECIDE_STEPS
_slo_goodput_commit = slo_goodput_decision_kernels.COMMIT_STEPS
_slo_goodput_draft = slo_goodput_decision_kernels.DRAFT_STEPS
_slo_goodput_verify = slo_goodput_decision_kernels.VERIFY_STEPS
if numba is not None and None not in (_oracle_decide, _oracle_slo_decide, _smartspec_decide,
                                      _threshold_draft, _vllm_verify, _adaspec_decide,
                                      _slo_goodput_decide):
    _every_request_k = numba.njit(cache=True)(_every_request_k)
    DECIDE = numba.njit(cache=True, error_model="numpy")(_decide)
    COMMIT = numba.njit(cache=True, error_model="numpy")(_commit)
    DRAFT = numba.njit(cache=True)(_draft)
    VERIFY = numba.njit(cache=True)(_verify)
else:                                # pragma: no cover - numba is a dependency
    DECIDE = COMMIT = DRAFT = VERIFY = None
