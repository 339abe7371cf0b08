"""The one contract between a speculation policy and an engine (simulated or live).

Both engines call, once per engine step and in this order:

1. ``decide(obs) -> Decision``: how many draft tokens each decoding request may draft
   (``num_spec_tokens``, 0 = no speculation), optionally a confidence threshold, a
   verification token budget or a token tree shape.
2. ``continue_drafting(draft) -> bool array``: after every draft forward pass, which requests
   draft one more token (AdaSpec's adaptive drafter). Default: until ``num_spec_tokens`` or
   the confidence threshold.
3. ``select_verify(draft) -> int array``: how many of the drafted tokens of each request go to
   the target's verification pass (AdaSpec's confidence-prior verifier, vLLM's adaptive
   verification). Default: all, trimmed to ``verify_token_budget`` least-confident first.
4. ``observe(feedback)``: what happened (accepted counts, confidences, step times).

Vocabulary follows vLLM's rejection sampler: of ``num_spec_tokens`` draft tokens the target
*accepts* a prefix of ``num_accepted`` tokens; then it emits one more token of its own, the
*recovered* token (at the first rejected position) or the *bonus* token (all accepted). So a
step emits ``num_accepted + 1`` tokens per decoding request. An "acceptance length" in this
project always says whether it counts that extra token: ``accepted_len = num_accepted + 1``.

All per-request arrays are aligned with ``Observation.request_ids`` (struct of arrays: the
simulator must stay fast with hundreds of requests per step). A policy never imports sim/ or
exec/; cost and acceptance information reaches it through the observation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import numpy as np


class CostModel(Protocol):
    """Predicted latency of one forward pass. Arguments may be numpy arrays (broadcast).

    ``num_tokens``: tokens processed in the pass (prefill chunks + decode/verify tokens);
    ``num_seqs``: sequences in the pass; ``sum_context_tokens``: sum over the pass's tokens of
    the KV context each token attends to (attention cost).

    Optionally ``coefficients() -> CostCoefficients | None``: the same model as numbers, so
    that a policy's compiled loop evaluates it without calling back into Python (the very
    floats the methods return on arrays); without it, policies call the methods.
    """

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens): ...

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens): ...


ROOFLINE, AFFINE = "roofline", "affine"


@dataclass(frozen=True)
class CostCoefficients:
    """A cost model's passes as numbers (``CostModel.coefficients``), one tuple per pass.

    ``roofline`` (s per token, s per context token, s to stream the weights, s per KV token
    read, fixed s): t tokens of s sequences attending to c context tokens take
    max(a t + b c, w + v c s / max(t, 1)) + f seconds, 0 for t = 0 (evaluated in that order,
    as ``sim.models.cost`` does on arrays). ``affine`` (a, b): a + b t seconds, any t.
    """

    kind: str                  # ROOFLINE or AFFINE
    target: tuple              # the target pass's coefficients
    draft: tuple               # one draft pass's coefficients


@dataclass(frozen=True)
class Observation:
    """What a policy sees before a step. Arrays have one entry per decoding request."""

    now_s: float                      # engine clock (simulated or wall, relative to run start)
    step_index: int                   # 0-based engine step counter
    k_max: int                        # most draft tokens the engine can run per request/step
    request_ids: np.ndarray           # int64, decoding requests that may speculate this step
    context_lens: np.ndarray          # int64, tokens already in KV (prompt + generated)
    num_output_tokens: np.ndarray     # int64, tokens generated so far (o_i in AdaServe)
    decode_elapsed_s: np.ndarray      # float, time since the request's first token (l_i)
    since_arrival_s: np.ndarray       # float, time since arrival
    tpot_slo_s: np.ndarray            # float, per-request TPOT SLO; inf where none
    accept_rate_ewma: np.ndarray      # float, per-draft-token acceptance EWMA; nan before any
    last_confidences: np.ndarray      # float (n, k_max): draft probs of the last step, nan unset
    num_waiting: int                  # requests queued, not yet admitted
    oldest_waiting_s: float           # age of the oldest queued request (0 if none)
    num_prefill_tokens: int           # prefill tokens that share this step's target pass
    sum_prefill_context_tokens: int   # attention context of those prefill tokens
    cost: CostModel                   # the engine's step-cost predictor
    num_prefill_seqs: int = 0         # requests whose prefill chunk shares this step's pass
    future_match_lens: np.ndarray | None = None  # int (n, ) hindsight m(p); oracle policies only
    # int (n, k_max) hindsight, tree oracles only: the narrowest token-tree width whose depth j
    # passes given depth j - 1 did (the step's sampled per-branch outcome); a value above
    # every width the oracle may use means no width passes
    future_tree_min_widths: np.ndarray | None = None
    # float (n,), per-request TTFT SLO (inf where none); None: the engine does not say. With
    # since_arrival_s - decode_elapsed_s (the request's TTFT) it tells which requests have
    # already missed their SLO, whatever their TPOT
    ttft_slo_s: np.ndarray | None = None
    # float (n,) hindsight, rate oracles only (Policy.needs_rates): each request's true
    # per-token acceptance rate (the simulator's per-request draw), not this step's outcome
    true_accept_rates: np.ndarray | None = None

    @property
    def num_requests(self) -> int:
        return int(self.request_ids.shape[0])


@dataclass(frozen=True)
class Decision:
    """A policy's answer for one step."""

    num_spec_tokens: np.ndarray                 # int (n,), 0..k_max draft tokens per request
    draft_stop_confidence: float = 0.0          # stop a request's drafting once a draft prob < this
    verify_token_budget: int | None = None      # most draft tokens verified in the step, all requests
    nodes_per_depth: np.ndarray | None = None   # int (n, k_max) token-tree widths (AdaServe); sim only


@dataclass(frozen=True)
class DraftState:
    """Drafting progress inside a step, given to ``continue_drafting`` and ``select_verify``."""

    obs: Observation
    decision: Decision
    num_drafted: np.ndarray           # int (n,), draft tokens produced so far
    confidences: np.ndarray           # float (n, k_max), draft prob of each drafted token, nan after
    draft_time_s: float               # drafting time spent so far in this step


@dataclass(frozen=True)
class CompiledDrafting:
    """A policy's ``continue_drafting`` for one step as a compiled rule, which the simulator
    may run inside its own compiled drafting loop, and the live engine in one compiled replay
    over the drafts vLLM made (``policies.drafting_replay``), instead of calling the hook once
    per draft pass (``Policy.compiled_drafting``). After each pass the loop calls
    ``rule(num_drafted, num_spec_tokens, confidences, draft_time_s, more, args)``, the first
    four as ``DraftState``'s (``num_spec_tokens``: the decision's; ``confidences`` nan past
    each request's drafts), and the rule writes the hook's answer into ``more`` (bool (n,)).
    ``args`` (a tuple of arrays and numbers) is the policy's: its step's plan and state, which
    the rule may update in place (arrays). After the step's last pass the engine calls
    ``finish()``, which reads that state back. The answers, and the state ``finish`` leaves,
    must be the hook's, pass for pass."""

    rule: Callable                    # a numba function, as above
    args: tuple                       # its last argument
    finish: Callable[[], None]        # after the last pass: the policy reads its state back


class DecodeBatch(NamedTuple):
    """What ``CompiledDecisions.decide`` sees of a pure-decode step: ``Observation``'s
    per-request columns that such a step's decisions read (no queue, no prefill)."""

    context_lens: np.ndarray          # int64 (n,), KV entries incl. the token being decoded
    match_lens: np.ndarray            # int64 (n,), true match lengths (oracles only), <= k_max
    num_output_tokens: np.ndarray     # int64 (n,), tokens emitted so far
    decode_elapsed_s: np.ndarray      # float (n,), seconds since each request's first token
    since_arrival_s: np.ndarray       # float (n,), seconds since each request arrived
    tpot_slo_s: np.ndarray            # float (n,), TPOT SLO (inf: none)
    ttft_slo_s: np.ndarray            # float (n,), TTFT SLO (inf: none)


class RuleArgs(NamedTuple):
    """``CompiledDecisions`` as a compiled loop takes it (``CompiledDecisions.rule_args``)."""

    rule: int
    drafting: bool
    verifying: bool
    trees: bool
    state: np.ndarray
    ints: np.ndarray
    params: np.ndarray


@dataclass(frozen=True)
class CompiledDecisions:
    """A policy's ``decide`` and ``observe`` as compiled functions of a pure-decode step, which
    the simulator may call inside its own compiled loop over a stretch of such steps (nobody
    waiting, no prefill, until a request finishes, one arrives or the KV cache binds) instead
    of building an Observation and a Feedback per step (``Policy.compiled_decisions``).

    ``rule`` names the pair of functions (an id of ``policies.adaptive.decision_kernels``,
    where a policy's pair is registered: a cached compiled loop cannot take functions as
    arguments). Before each step the loop calls ``decide(state, ints, params, now_s, batch,
    k_max, num_spec_tokens, nodes)`` (``batch``: a ``DecodeBatch``); the rule writes the step's
    lengths into ``num_spec_tokens`` (int (n,), in 0..k_max) and returns True, or returns
    False to leave the step to the engine's own path (which then calls the hook), and never
    changes what ``finish`` reads back (it may fill the step's scratch): the loop may still
    leave the step to the engine (its drafts would not fit). After the step it calls
    ``commit(state, ints, params, num_spec_tokens, num_accepted, draft_s, verify_s,
    confidences, finished)`` (``confidences``: the drafts', nan past each request's, empty
    (0, k_max) for a step no rule drafted or verified; ``finished``: bool (n,), the requests
    the step finished), which applies what ``decide`` and ``observe`` would have changed.
    ``state`` (float (m,)) and ``ints`` (int64 (m',)) are the policy's, read back by
    ``finish()`` after the loop; ``params`` (float (p,)) its constants, the cost model's
    coefficients included. Lengths and state must be the hooks', step for step."""

    rule: int                         # policies.adaptive.decision_kernels' id
    state: np.ndarray                 # float (m,), updated in place by commit
    params: np.ndarray                # float (p,), read only
    finish: Callable[[], None]        # after the loop: the policy reads its state back
    # True: the rule also stops the drafts (a policy with its own continue_drafting): after
    # each draft pass the loop calls draft(state, ints, params, num_drafted,
    # num_spec_tokens, confidences, draft_time_s, more), ``CompiledDrafting.rule``'s
    # arguments
    drafting: bool = False
    # True: the rule also chooses the verified drafts (its own select_verify): the loop calls
    # verify(state, ints, params, context_lens, num_drafted, confidences, draft_time_s, out)
    verifying: bool = False
    # int64 (m',): integer state (ids, counts), updated in place as ``state``
    ints: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # True: decide may make token trees, writing a tree step's widths per depth into its
    # last argument, ``nodes`` (int64 (n, k_max)), which a chain step leaves zero
    trees: bool = False

    @property
    def rule_args(self) -> RuleArgs:
        """What the compiled loop reads, as one bundle."""
        return RuleArgs(self.rule, self.drafting, self.verifying, self.trees, self.state,
                        self.ints, self.params)


@dataclass(frozen=True)
class Feedback:
    """What a step did. ``num_accepted`` does not count the recovered/bonus token."""

    now_s: float
    request_ids: np.ndarray           # int64, as in the observation
    num_spec_tokens: np.ndarray       # int, draft tokens verified per request
    num_accepted: np.ndarray          # int, accepted draft tokens per request
    confidences: np.ndarray           # float (n, k_max), nan where not drafted
    draft_time_s: float
    verify_time_s: float
    finished_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def checked_num_spec_tokens(decision: Decision, n: int, k_max: int,
                            policy_name: str) -> np.ndarray:
    """``num_spec_tokens`` as int64 clipped to 0..k_max, the check both engines apply to a
    decision; a wrong shape is the policy's bug and raises naming it."""
    k = np.asarray(decision.num_spec_tokens)
    if k.shape != (n,):
        raise ValueError(f"policy {policy_name!r}: num_spec_tokens has shape {k.shape},"
                         f" expected ({n},)")
    if k.dtype != np.int64:
        k = k.astype(np.int64)
    if k.shape[0] <= 48:     # a Python min/max over a short list: a fifth of numpy's two
        v = k.tolist()
        out_of_range = bool(v) and (min(v) < 0 or max(v) > k_max)
    else:
        out_of_range = bool(k.min() < 0 or k.max() > k_max)
    if out_of_range:
        k = np.minimum(np.maximum(k, 0), k_max)
    return k


def cumulative_confidence(confidences: np.ndarray) -> np.ndarray:
    """c_ij = prod_{m<=j} p_im (AdaSpec sec. 1.4): the chance the first j drafts all pass."""
    c = np.asarray(confidences, float)
    # (np.nan_to_num does the same for probabilities, with ~4 us of Python around it)
    return np.cumprod(np.where(np.isnan(c), 0.0, c), axis=1)


class Policy:
    """Base class: subclasses override ``decide`` and, when they need to, the other hooks."""

    name = "base"
    # Which sweeps list it (policies.registry.policies_of_kind): "static" (no adaptation),
    # "adaptive" (the default: a new policy reaches every sweep) or "oracle" (knows the future)
    kind = "adaptive"
    needs_oracle = False  # True: the engine fills Observation.future_match_lens
    needs_tree_oracle = False  # True: it also fills Observation.future_tree_min_widths,
    tree_oracle_max_width = 8  # capped at this width + 1
    needs_rates = False   # True: the engine fills Observation.true_accept_rates
    # True: decisions read draft confidences (DraftState/Feedback.confidences), which only a
    # model drafter gives; live, a model-free drafter (vLLM's n-gram lookup) is refused.
    needs_draft_confidences = False
    # True declares that decide() depends only on the set of running requests and k_max (not
    # on time, contexts, feedback or waiting requests), returns a plain chain (no confidence
    # stop, verify budget or tree) and that observe() is a no-op. The simulator then runs
    # stretches of pure-decode steps between batch events as one vectorized epoch
    # (sim/fast/epoch.py): one decide() call per epoch, no per-step observe() calls.
    static_decisions = False
    # The hooks besides decide() an engine must call. Each is declared here, and checked
    # against the hooks a subclass defines when the class is created (__init_subclass__), so
    # the engines read declarations instead of comparing methods.
    needs_feedback = False   # True: observe() reads each step's Feedback (else none is built)
    custom_drafting = False  # True: its own continue_drafting() (else: draft k, confidence stop)
    custom_verify = False    # True: its own select_verify() (else: verify all, or the budget)
    # True: decisions may carry token trees (Decision.nodes_per_depth), which only the
    # simulator verifies; vLLM verifies chains. It sets the policy's class: "tree" policies
    # are compared with the tree oracle, "chain" policies (what vLLM runs) with the chain one.
    makes_trees = False
    chain_variant: str | None = None   # a tree policy's registered chain variant, if any

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for hook, flag in (("observe", "needs_feedback"), ("continue_drafting", "custom_drafting"),
                           ("select_verify", "custom_verify")):
            if hook in cls.__dict__ and not getattr(cls, flag):
                raise TypeError(f"policy {cls.__name__} defines {hook}() but does not declare "
                                f"{flag} = True: engines would not call it")

    @property
    def shape_class(self) -> str:
        """"tree" for a policy that may make token trees (simulator only), else "chain"."""
        return "tree" if self.makes_trees else "chain"

    def decide(self, obs: Observation) -> Decision:
        raise NotImplementedError

    def continue_drafting(self, draft: DraftState) -> np.ndarray:
        k = draft.decision.num_spec_tokens
        more = draft.num_drafted < k
        thr = draft.decision.draft_stop_confidence
        if thr > 0.0 and draft.num_drafted.max(initial=0) > 0:
            idx = np.maximum(draft.num_drafted - 1, 0)
            last = draft.confidences[np.arange(idx.shape[0]), idx]
            more &= ~((draft.num_drafted > 0) & (last < thr))
        return more

    def select_verify(self, draft: DraftState) -> np.ndarray:
        budget = draft.decision.verify_token_budget
        drafted = draft.num_drafted.copy()
        if budget is None or drafted.sum() <= budget:
            return drafted
        return trim_to_budget(drafted, cumulative_confidence(draft.confidences), budget)

    def observe(self, feedback: Feedback) -> None:
        return None

    def warm_up(self) -> None:
        """Compile or load what the hooks run (numba kernels) before timed work; engines and
        benches call it before their clocks start. Default: nothing to do."""
        return None

    def compiled_drafting(self, obs: Observation, decision: Decision) -> CompiledDrafting | None:
        """Optional, for a policy with its own ``continue_drafting``: this step's drafting
        rule as compiled code (``CompiledDrafting``), which a simulator may run in one
        compiled loop over the draft passes and the live engine replays over its drafts in
        one compiled call (``policies.drafting_replay``); None (the default): the hook per
        pass."""
        return None

    def compiled_decisions(self, obs: Observation) -> CompiledDecisions | None:
        """Optional, for a chain policy with default verification whose decision is a
        compiled function of a pure-decode step's columns (``DecodeBatch``) and of its own
        state: ``decide`` and ``observe`` (and its drafting rule, if it has its own) as
        compiled code (``CompiledDecisions``, its constants read from ``obs``, a pure-decode
        step's observation), which the simulator may call over a stretch of pure-decode
        steps in one compiled loop; None (the default): the hooks per step. Only the class
        that defines it offers it (``offers_compiled_decisions``): a subclass, which may
        change what the hooks do, inherits none."""
        return None


def offers_compiled_decisions(policy: Policy | type) -> bool:
    """Whether a policy (or class) offers compiled decisions: its own class defines
    ``compiled_decisions`` (an inherited one may not match the subclass's hooks)."""
    cls = policy if isinstance(policy, type) else type(policy)
    return "compiled_decisions" in cls.__dict__ and cls is not Policy


def trim_to_budget(num_drafted: np.ndarray, cum_conf: np.ndarray, budget: int) -> np.ndarray:
    """Keep the ``budget`` draft tokens with the highest cumulative confidence.

    Cumulative confidence never rises along a request's chain, so the kept set is a prefix
    of every chain: a valid verification (vLLM's adaptive verification, AdaSpec sec. 2.2).
    """
    n, k = cum_conf.shape
    valid = np.arange(k)[None, :] < num_drafted[:, None]
    budget = max(int(budget), 0)
    if budget == 0:
        return np.zeros_like(num_drafted)
    # position-major order, so a stable sort keeps ties at earlier positions first (then
    # earlier requests) and chains stay prefixes
    score = np.where(valid, cum_conf, -np.inf).T.ravel()
    order = np.argsort(-score, kind="stable")[:budget]
    keep = np.zeros(n * k, bool)
    keep[order] = True
    keep = keep.reshape(k, n).T & valid
    # prefix property: count leading kept positions
    return np.cumprod(keep, axis=1).sum(axis=1).astype(num_drafted.dtype)
