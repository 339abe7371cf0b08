"""One simulated vLLM V1 engine replica on simpy: the per-step speculate-verify loop.

Per step: plan the batch (sim/core/scheduler.py), draw every decoding request's greedy match
length m (sim/models/acceptance.py), ``policy.decide``, fit the draft tokens into what the batch left,
draft passes with ``policy.continue_drafting`` after each, ``policy.select_verify``, one target
verify pass, ``num_accepted = min(k, m)``, emit ``num_accepted + 1`` tokens per decoding
request (capped by the trace's output length; all tokens of a step carry the step's end
time), ``policy.observe``. All per-step work is numpy over the batch (struct of arrays).
This is the reference path; ``sim/fast`` may advance the engine faster where it applies
(``self.fast``, chosen once here), and declines otherwise.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import simpy

from policies.interface import DraftState, Policy
from sim.models.acceptance import ParametricAcceptance, make_acceptance_model
from sim.models.cost import make_cost_model
from sim.core.kv_cache import admission_errors, derive_num_kv_blocks
from sim.core.live_mirror import (DRAFT_PASS_MODES, drafter_window_full, known_prefill,
                                  vllm_draft_s)
from sim.core.results import StepRecorder
from sim.core.scheduler import Scheduler
from sim.core.small_arrays import iall, iany, imin_imax, isum
from sim.core.state import WAITING, RequestTable
from sim.core.step_end import PendingStep, end_step
from sim.core.step_plan import (DecidedStep, checked_decision, draft_pass_costs, draft_pass_s,
                                ensure_confidences, prefill_context, uniform_chain_draft_s,
                                verify_context)
from sim.fast import fast_path, steps_compile
from sim.fast.step_compiled import (compiled_draft_s, compiled_drafting, compiled_draw,
                                    compiled_fit, compiled_tree_min_widths,
                                    compiled_tree_outcome, compiled_uniform_draft_s,
                                    fused_drafting)


_EMPTY = np.zeros(0, np.int64)
_EMPTY.setflags(write=False)          # shared, so never writable
STEP_NOISE_STREAM = 7          # the step jitter's key beside the seed (SimConfig.step_noise_sigma)


class Engine:
    def __init__(self, trace, policy: Policy, config, cost_model=None, acceptance_model=None,
                 multi_step: bool = True):
        eng = config.engine
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(eng, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(eng, name)}")
        if eng.k_max < 0:
            raise ValueError(f"EngineConfig.k_max must be >= 0, got {eng.k_max}")
        if eng.draft_passes not in DRAFT_PASS_MODES:
            raise ValueError(f"EngineConfig.draft_passes must be one of {DRAFT_PASS_MODES}, "
                             f"got {eng.draft_passes!r}")
        self.trace, self.policy, self.config = trace, policy, config
        self.k_max = int(eng.k_max) if config.draft else 0
        self.cost = cost_model if cost_model is not None else make_cost_model(config)
        # seconds per accepted draft token beyond the target pass (a fitted model's, from
        # live steps that recorded them: sim/models/fitted_cost.py); 0 for the others
        self._accepted_token_s = float(getattr(self.cost, "per_accepted_token_s", 0.0))
        self.policy_cost = (self.cost if config.policy_cost_model is None else
                            make_cost_model(replace(config,
                                                    cost_model=config.policy_cost_model)))
        self.acc = (acceptance_model if acceptance_model is not None
                    else make_acceptance_model(config.acceptance, self.k_max, config.seed))
        self.reqs = RequestTable(trace, self.k_max)
        self.reqs.validate_trace()
        self.acc.prepare(trace)
        # a rate oracle reads each request's true acceptance rate: the parametric model's draw
        self._true_rates = getattr(self.acc, "rate", None) if policy.needs_rates else None
        if policy.needs_rates and (self._true_rates is None
                                   or self._true_rates.shape != (len(trace),)):
            raise ValueError(f"policy {policy.name!r} reads each request's true acceptance rate, "
                             f"which only the parametric acceptance model draws "
                             f"(acceptance.kind={config.acceptance.kind!r}): use "
                             f"acceptance.kind=parametric or another policy")
        self.sched = Scheduler(self.reqs, eng, derive_num_kv_blocks(config))
        self.rec = StepRecorder(config.record_steps)
        self.step_index = 0
        self._vllm_max_k = 0                        # last decision's max k (vLLM mode)
        # vLLM decides a step's drafts while scheduling the step before (live_mirror.py): it
        # knows less of the step's prefills and not yet the feedback of the step before
        self.decides_ahead = eng.draft_passes == "vllm"
        self._decided_s = float("-inf")             # when the last decision was taken
        self.held_feedback = None                   # (decides_ahead) observed after next decide
        self._idle: simpy.Event | None = None
        self._all_arrived = False
        self._default_drafting = not policy.custom_drafting
        self._default_verify = not policy.custom_verify
        self._observes = policy.needs_feedback             # else no Feedback is built
        self._pos = np.arange(self.k_max)
        static = bool(policy.static_decisions and not policy.needs_oracle
                      and self._default_drafting and self._default_verify)
        # multi-step epochs (sim/fast/epoch.py) need a static policy, block draws, per-request drafts
        self._epochs = bool(multi_step and static and hasattr(self.acc, "draw_block")
                            and self.acc.steps_independent
                            and eng.draft_passes == "per_request" and not config.step_noise_sigma
                            and not self._accepted_token_s)
        if not config.step_noise_sigma >= 0:
            raise ValueError(f"step_noise_sigma={config.step_noise_sigma}: must be >= 0 "
                             "(a relative spread of step latencies, e.g. 0.08)")
        # its own stream of the seed: acceptance draws are the same with or without noise
        self._step_noise = (np.random.default_rng([config.seed, STEP_NOISE_STREAM])
                            if config.step_noise_sigma else None)
        # a static policy reads no confidences, nor one whose hooks are decide and observe
        # and that does not declare it does (Policy.needs_draft_confidences): draw them only
        # when a decision needs them
        self._lazy_conf = bool(
            (static or (not policy.needs_draft_confidences and self._default_drafting
                        and self._default_verify))
            and isinstance(self.acc, ParametricAcceptance))
        # single compiled steps (sim/fast/step_compiled.py) for an adaptive chain policy whose
        # hooks are decide() and observe(), or a static one without epochs (correlated
        # acceptance steps): every step a decision, the rest of it compiled
        self._compiled_steps = bool(
            multi_step and not self._epochs and steps_compile(policy) and self._lazy_conf
            and eng.draft_passes == "per_request" and not config.step_noise_sigma
            and not self._accepted_token_s)
        # ... and for any other adaptive policy the plan and the step's end compiled
        # (sim/fast/step_compiled.compiled_end), its hooks run as on the reference path
        self._compiled_ends = bool(multi_step and not static and not self._compiled_steps
                                   and eng.draft_passes == "per_request")
        # ... and a plain chain's verify pass and end in one compiled call
        # (sim/fast/step_compiled.compiled_chain_step) where nothing else prices the step
        self._chain_steps = bool(self._compiled_ends and not config.step_noise_sigma
                                 and not self._accepted_token_s)
        # ... and then nobody reads a step's confidences unless a verify budget or observe()
        self._conf_unused = self._lazy_conf and not self._observes
        self.next_arrival_s: float | None = None
        self.epoch_step_s = 0.0                     # last epoch's step time (its length guess)
        self.num_epochs = self.num_epoch_steps = 0
        self.epoch_ready = False                    # True while only epochs have run
        self.rejected = admission_errors(self.reqs, eng, self.sched.num_kv_blocks)
        self.pending: PendingStep | None = None        # a begun step, applied at its end
        self.fast = fast_path(self)    # epochs and compiled steps (sim/fast/), or None
        # a drafting loop's per-pass bookkeeping compiled (sim/fast/step_compiled.py)
        self._draft_kernels = (self.fast.step_kernels if self.fast is not None
                               and self._compiled_ends else None)

    # ---- simpy processes -------------------------------------------------------------------
    def arrivals(self, env: simpy.Environment):
        r, sched = self.reqs, self.sched
        for row in range(r.n):
            self.next_arrival_s = float(r.arrival_s[row])
            dt = r.arrival_s[row] - env.now
            if dt > 0:
                yield env.timeout(dt)
            if row in self.rejected:
                r.fail(row, self.rejected[row])
            else:
                r.status[row] = WAITING
                sched.waiting.append(row)
            self._wake()
        self._all_arrived, self.next_arrival_s = True, None
        self._wake()

    def _wake(self) -> None:
        if self._idle is not None:
            self._idle.succeed()
            self._idle = None

    def run(self, env: simpy.Environment):
        sched = self.sched
        while True:
            if sched.running.shape[0] == 0 and not sched.waiting:
                if self._all_arrived:
                    return
                self._idle = env.event()     # idle: jump to the next arrival
                yield self._idle
                continue
            latency = self.fast.advance(env.now) if self.fast is not None else None
            if latency is None:                       # (None: the fast path declined)
                latency = self._begin_step(env.now)
            yield env.timeout(latency)
            if self.fast is not None and self.fast.end_s is not None and env.now < self.fast.end_s:
                # epochs ran: the rest of their last step (exact: the clock is within a few
                # last bits of their end)
                yield env.timeout(self.fast.end_s - env.now)
            self._end_step(env.now)

    # ---- one step: plan -> decide -> run -------------------------------------------------
    def _begin_step(self, now: float) -> float:
        """The reference step; returns its latency (its end is applied by ``_end_step``)."""
        self.epoch_ready = False
        return self.run_decided(now, self.decide_step(now, self.sched.plan_base(), True))

    def decide_step(self, now: float, plan, draw_first: bool) -> DecidedStep:
        """The policy's decision on a planned batch ``(rows, tokens, is_decode)``.
        ``draw_first``: draw the match lengths before deciding (an oracle reads them); a
        static policy's compiled step takes them after, from the same pool, same order."""
        r, sched, kmax = self.reqs, self.sched, self.k_max
        rows, tokens, is_dec = plan
        if rows.shape[0] == 0:
            raise RuntimeError(f"engine stalled at t={now:.6f}s: {sched.running.shape[0]} "
                               f"running, {len(sched.waiting)} waiting, nothing schedulable")
        if iall(is_dec):                                 # pure decode step (the common case)
            dec, pre, pre_tok = rows, _EMPTY, _EMPTY
            n_pre_tok = pre_ctx = 0
        else:
            dec, pre, pre_tok = rows[is_dec], rows[~is_dec], tokens[~is_dec]
            n_pre_tok = isum(pre_tok)
            pre_ctx = prefill_context(r.num_computed[pre], pre_tok)
        ctx = r.num_computed[dec]                        # KV entries before this step
        out = r.num_out[dec]
        draw = self._draw(dec, out) if draw_first else None
        waiting = sched.waiting
        seen = (n_pre_tok, pre_ctx, int(pre.shape[0]))
        if self.decides_ahead and pre.shape[0]:
            seen = known_prefill(r.arrival_s[pre], pre_tok, r.num_computed[pre], self._decided_s)
        self._decided_s = now
        obs = r.observation(
            dec, ctx, out, now, self.step_index, kmax, self.policy_cost, num_waiting=len(waiting),
            oldest_waiting_s=(now - r.arrival_s[waiting[0]]) if waiting else 0.0,
            num_prefill_tokens=seen[0], sum_prefill_context_tokens=seen[1],
            num_prefill_seqs=seen[2],
            future_match_lens=draw.match_len if self.policy.needs_oracle else None,
            future_tree_min_widths=(self._tree_min_widths(dec, draw)
                                    if self.policy.needs_tree_oracle else None),
            true_accept_rates=None if self._true_rates is None else self._true_rates[dec])
        decision = self.policy.decide(obs)
        if self.held_feedback is not None:
            self.policy.observe(self.held_feedback)
            self.held_feedback = None
        k, widths = checked_decision(decision, dec.shape[0], kmax, self.policy.name)
        return DecidedStep(rows=rows, tokens=tokens, dec=dec, pre=pre, pre_tok=pre_tok,
                           num_prefill_tokens=n_pre_tok, prefill_context=pre_ctx, ctx=ctx,
                           out=out, num_waiting=len(waiting), obs=obs, decision=decision, k=k,
                           widths=widths, draw=draw)

    def run_decided(self, now: float, step: DecidedStep) -> float:
        """Fit, draft, verify a decided step; returns its latency and leaves ``pending``."""
        r, sched, eng, kmax = self.reqs, self.sched, self.config.engine, self.k_max
        vllm_mode = eng.draft_passes == "vllm"
        rows, tokens, dec, pre, pre_tok = step.rows, step.tokens, step.dec, step.pre, step.pre_tok
        n_pre_tok, pre_ctx, ctx, out = (step.num_prefill_tokens, step.prefill_context, step.ctx,
                                        step.out)
        obs, decision, k, widths, draw = step.obs, step.decision, step.k, step.widths, step.draw
        n = dec.shape[0]
        if draw is None:
            draw = self._draw(dec, out)
        draw = ensure_confidences(self.acc, draw, dec, decision)
        spec = k if widths is None else (
            (widths * (self._pos < k[:, None])).sum(axis=1) if self._draft_kernels is None
            else self._draft_kernels.tree_nodes(widths, k))
        budget = eng.max_num_batched_tokens - n_pre_tok - n
        fit = (sched.fit_speculation(dec, spec, budget, ctx) if self._draft_kernels is None
               else compiled_fit(self, self._draft_kernels, dec, spec, budget, ctx))
        if widths is None:
            k = fit
        else:                       # a tree that does not fit whole is not speculated
            k = np.where(fit == spec, k, 0)
        no_drafter = kmax and vllm_mode and drafter_window_full(
            r.num_computed[rows] + tokens, kmax, eng.max_model_len)
        if no_drafter:
            k = np.zeros_like(k)
        prefill = (n_pre_tok, pre_ctx, pre.shape[0])
        own_verify = not (self._default_verify and decision.verify_token_budget is None)
        # vLLM mode charges its drafter below: the per-request time is only for select_verify
        drafted, conf, draft_s = self._draft(obs, decision, k, widths, ctx, prefill, draw,
                                             need_time=own_verify or not (kmax and vllm_mode))
        verified = drafted
        if n and own_verify:
            state = DraftState(obs, decision, drafted, conf, draft_s)
            verified = np.minimum(np.maximum(
                np.asarray(self.policy.select_verify(state), np.int64), 0), drafted)
        if widths is None:
            num_spec = verified
            accepted = np.minimum(verified, draw.match_len)
        elif self._draft_kernels is not None:     # the same counts, one compiled call
            num_spec, accepted = compiled_tree_outcome(self.acc, self._draft_kernels, dec,
                                                       draw, widths, verified)
        else:
            w = np.where(self._pos < verified[:, None], widths, 0)
            num_spec = w.sum(axis=1)
            accepted = np.minimum(draw.tree_accepted(w), verified)
        n_spec = isum(num_spec)
        n_tok = n_pre_tok + n + n_spec
        if n_tok > eng.max_num_batched_tokens or sched.free_blocks < 0:
            raise AssertionError(f"step {self.step_index}: token budget or KV capacity exceeded")
        verify_ctx = pre_ctx + (verify_context(ctx, num_spec, n_spec)
                                if self._draft_kernels is None
                                else self._draft_kernels.verify_context(ctx, num_spec))
        verify_s = float(self.cost.target_step_s(n_tok, int(rows.shape[0]), verify_ctx))
        if self._accepted_token_s:
            verify_s += self._accepted_token_s * isum(accepted)
        if kmax and vllm_mode:                       # charge what vLLM's drafter runs:
            # max(k) of the decision, not what continue_drafting kept (no early stop in vLLM);
            # vLLM also drafts for requests whose prefill ends now (its decision covers them):
            # a step without decoding requests has no decision here, so the last one's max k
            if n:
                self._vllm_max_k = int(k.max(initial=0))
            draft_ctx = ctx + 1 if not pre.shape[0] else np.concatenate(
                [ctx + 1, r.num_computed[pre] + pre_tok])
            draft_s = 0.0 if no_drafter else vllm_draft_s(
                self.cost, n_tok, int(rows.shape[0]), verify_ctx, self._vllm_max_k, draft_ctx)
        if self._step_noise is not None:
            jitter = float(np.exp(self.config.step_noise_sigma
                                  * self._step_noise.standard_normal()))
            draft_s, verify_s = draft_s * jitter, verify_s * jitter
        self.pending = PendingStep(
            start_s=now, rows=rows, dec=dec, pre=pre, pre_tok=pre_tok, num_spec=num_spec,
            accepted=accepted, confidences=conf, draft_s=draft_s, verify_s=verify_s,
            num_waiting=step.num_waiting, num_prefill_tokens=n_pre_tok, num_spec_tokens=n_spec,
            ctx=ctx, out=out, request_ids=obs.request_ids)
        return draft_s + verify_s

    def _draw(self, dec, out):
        if self._draft_kernels is not None:       # the same draws, one compiled call
            return compiled_draw(self.acc, self._draft_kernels, dec, not self._lazy_conf)
        if self._lazy_conf:
            return self.acc.draw(dec, out, with_confidences=False)
        return self.acc.draw(dec, out)

    def _tree_min_widths(self, dec, draw) -> np.ndarray:
        """What a tree oracle knows of the step's draws (``StepDraw.tree_min_widths``)."""
        width = self.policy.tree_oracle_max_width
        if self._draft_kernels is None:
            return draw.tree_min_widths(width)
        return compiled_tree_min_widths(self.acc, self._draft_kernels, dec, draw, width)

    def _draft(self, obs, decision, k, widths, ctx, prefill, draw, need_time: bool = True):
        """Draft passes; returns (num drafted, visible confidences, draft seconds: 0.0 when
        not ``need_time``)."""
        if k.shape[0] == 0 or not iany(k):
            return k, np.full((k.shape[0], self.k_max), np.nan), 0.0
        spent = None
        if self._default_drafting and decision.draft_stop_confidence <= 0.0:
            drafted = k          # the default rule drafts exactly k: skip the per-pass calls
        elif self._draft_kernels is not None and draw.confidences is not None:
            rule = self.policy.compiled_drafting(obs, decision)
            if rule is not None:     # the policy's rule inside one compiled loop
                drafted, spent = fused_drafting(self._draft_kernels, rule, decision, k, widths,
                                                ctx, prefill, draw.confidences)
            else:
                drafted, spent = compiled_drafting(self, self._draft_kernels, obs, decision,
                                                   k, widths, ctx, prefill, draw.confidences)
        else:
            drafted = np.zeros_like(k)
            active = k > 0
            # pass j's seconds, fixed once it has run while requests only ever stop; a
            # policy that restarts a stopped request has every pass re-costed, as vLLM's
            # passes are counted by draft position (draft_pass_costs)
            pass_s, j, restarted = np.zeros(int(k.max())), 0, False
            while iany(active):
                restarted = restarted or bool(j and iany(active > was_active))
                drafted = drafted + active
                if restarted:
                    tok, seqs, cctx = draft_pass_costs(drafted, widths, ctx, *prefill)
                    spent = float(np.sum(self.cost.draft_step_s(tok, seqs, cctx)))
                else:
                    pass_s[j] = draft_pass_s(self.cost, active, j, widths, ctx, prefill)
                    spent = float(pass_s[:j + 1].sum())   # = the whole-step call's np.sum
                was_active, j = active, j + 1
                conf = np.where(self._pos < drafted[:, None], draw.confidences, np.nan)
                state = DraftState(obs, decision, drafted, conf, spent)
                more = np.asarray(self.policy.continue_drafting(state), bool)
                active = more & (drafted < k)
        k0, seen = drafted.item(0), draw.confidences   # None: static policy, nobody reads them
        if widths is None and imin_imax(drafted) == (k0, k0):
            if not need_time:
                draft_s = 0.0
            elif self._draft_kernels is None:
                draft_s = uniform_chain_draft_s(self.cost, k0, isum(ctx), k.shape[0], prefill)
            else:                                      # the same floats, one compiled call
                draft_s = compiled_uniform_draft_s(self._draft_kernels, k0, isum(ctx),
                                                   k.shape[0], prefill)
            if seen is None and self._conf_unused and decision.verify_token_budget is None:
                return drafted, None, draft_s        # no select_verify, Feedback or last_conf
            conf = np.full((k.shape[0], self.k_max), np.nan) if seen is None else seen.copy()
            conf[:, k0:] = np.nan
        else:
            draft_s = 0.0
            if need_time and spent is not None:
                draft_s = spent                  # the drafting loop costed every pass
            elif need_time and self._draft_kernels is not None:   # the same floats, one call
                draft_s = compiled_draft_s(self._draft_kernels, drafted, widths, ctx, prefill)
            elif need_time:
                tok, seqs, cctx = draft_pass_costs(drafted, widths, ctx, *prefill)
                draft_s = float(np.sum(self.cost.draft_step_s(tok, seqs, cctx)))
            conf = np.where(self._pos < drafted[:, None], np.nan if seen is None else seen, np.nan)
        return drafted, conf, draft_s

    def _end_step(self, end: float) -> None:
        if self.pending is not None:      # (None: an epoch or a compiled step applied it)
            end_step(self, end)           # sim/core/step_end.py
            self.pending = None
