"""The version-pinned hooks that apply a policy's per-step decisions INSIDE vLLM (0.32.x, V1).

vLLM V1 drafts at the end of engine step t (after sampling) the tokens that step t+1 verifies;
the number of draft passes comes from ``SchedulerOutput.num_spec_tokens_to_schedule`` (vLLM's
own dynamic-speculation knob). Three hooks, all subclasses, no copied vLLM code:

* ``AdaptiveScheduler`` (passed as ``scheduler_cls``): before vLLM schedules step t it trims
  each request's ``spec_token_ids`` to the count the policy chose to verify; after scheduling
  it asks the controller (hence the policy) for the k of the drafts made at the end of step t
  and sets ``num_spec_tokens_to_schedule`` to the batch's max k. ``update_from_output``
  reports accepted counts (``len(sampled) - 1`` per verified request, as vLLM counts them).
* ``AdaptiveDraftProposer`` / ``AdaptiveEagleProposer`` (the runner's ``DraftModelProposer``
  or ``EagleProposer`` instance is re-classed to it after start-up): times the draft passes and
  records each proposed token's draft probability (softmax of the draft logits at the greedy
  token). Early stop on confidence and ``select_verify`` are applied to the drafted chains
  before they are verified; the batched drafter still runs max-k passes for the whole batch
  (vLLM has no per-request stop). ``AdaptiveNgramProposer`` times vLLM's prompt-lookup
  drafter, which has no confidences.
"""
from __future__ import annotations

import functools
import time

import torch
import vllm
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.spec_decode.draft_model import DraftModelProposer
from vllm.v1.spec_decode.eagle import EagleProposer

from exec.config import SUPPORTED_VLLM  # noqa: E402  (pyproject's extras pin the same)


def check_vllm_version(version: str | None = None) -> str:
    """The hooks use private vLLM internals that moved in every minor release: pin them.

    Before changing the pin, check the scheduler and proposer hooks below and the kernel scan
    that ``exec.engine.shield_llvmlite`` works around (numba loaded before an engine starts).
    """
    found = version if version is not None else vllm.__version__
    if not found.startswith(SUPPORTED_VLLM):
        raise RuntimeError(f"exec/adapter.py supports vLLM {SUPPORTED_VLLM}x only, found vLLM "
                           f"{found}: check the scheduler/proposer hooks before changing the pin")
    return found


def external_id(vllm_request_id: str) -> str:
    """vLLM appends '-<8 random chars>' to the id given to add_request; strip it."""
    return vllm_request_id.rsplit("-", 1)[0]


class AdaptiveScheduler(Scheduler):
    """vLLM's scheduler with the policy's per-request verify length applied."""

    specbed_controller = None  # set by install(); None = plain vLLM behaviour

    def schedule(self, *args, **kwargs):
        ctl = self.specbed_controller
        if ctl is None:
            return super().schedule(*args, **kwargs)
        decoding, computed = {}, {}
        for req in self.running:
            computed[req.request_id] = req.num_computed_tokens
            if req.spec_token_ids:
                k = ctl.verify_len(external_id(req.request_id))
                if len(req.spec_token_ids) > k:
                    req.spec_token_ids = req.spec_token_ids[:k]
            decoding[req.request_id] = req.num_computed_tokens >= req.num_prompt_tokens
        out = super().schedule(*args, **kwargs)
        out.num_spec_tokens_to_schedule = ctl.after_schedule(self, out, decoding, computed)
        return out

    def update_from_output(self, scheduler_output, model_runner_output):
        ctl = self.specbed_controller
        if ctl is not None:
            sampled = model_runner_output.sampled_token_ids
            index = model_runner_output.req_id_to_index
            emitted = {rid: len(sampled[i]) if sampled else 0 for rid, i in index.items()
                       if rid in scheduler_output.num_scheduled_tokens}
            ctl.after_verify(scheduler_output, emitted)
        return super().update_from_output(scheduler_output, model_runner_output)


class _ModelProposerHooks:
    """Hooks shared by vLLM's model-based proposers (draft model, EAGLE head)."""

    specbed_controller = None
    specbed_runner = None

    def _greedy_sample(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.specbed_controller is None:
            return super()._greedy_sample(hidden_states)
        if self.use_local_argmax_reduction or self.use_heterogeneous_vocab:
            ids = super()._greedy_sample(hidden_states)  # confidences not exposed on this path
            self._specbed_conf.append(torch.full(ids.shape, float("nan")))
            return ids
        logits = self.model.compute_logits(hidden_states)
        probs = torch.softmax(logits.float(), dim=-1)
        conf, ids = probs.max(dim=-1)
        self._specbed_conf.append(conf.detach().to("cpu"))
        return ids

    def propose(self, num_speculative_tokens, *args, **kwargs):
        ctl = self.specbed_controller
        if ctl is None:
            return super().propose(num_speculative_tokens, *args, **kwargs)
        self._specbed_conf = []
        t0 = time.perf_counter()
        drafts = super().propose(num_speculative_tokens, *args, **kwargs)
        n = drafts.shape[0]
        conf = (torch.stack(self._specbed_conf, dim=1)[:n].numpy() if self._specbed_conf
                else None)
        req_ids = [external_id(r) for r in self.specbed_runner.input_batch.req_ids[:n]]
        ctl.after_draft(req_ids, int(drafts.shape[1]), conf, time.perf_counter() - t0)
        return drafts


class AdaptiveDraftProposer(_ModelProposerHooks, DraftModelProposer):
    """vLLM's draft-model proposer that records draft confidences and draft time."""


class AdaptiveEagleProposer(_ModelProposerHooks, EagleProposer):
    """vLLM's EAGLE proposer (one head on the target's hidden states), same hooks."""


@functools.cache
def _ngram_hooks() -> tuple[type, type]:
    """(vLLM's NgramProposer, our timed subclass), built on first use.

    vLLM's n-gram proposer imports numba (llvmlite): import it only once vLLM itself has (an
    n-gram engine exists), never at module import, so a process without an n-gram engine never
    loads numba for it (``exec.engine.shield_llvmlite`` lets engines start after it anyway).
    """
    from vllm.v1.spec_decode.ngram_proposer import NgramProposer

    class AdaptiveNgramProposer(NgramProposer):
        """vLLM's n-gram (prompt-lookup) proposer, timed; it has no draft confidences."""

        specbed_controller = None
        specbed_runner = None

        def propose(self, num_speculative_tokens, sampled_token_ids, *args, **kwargs):
            ctl = self.specbed_controller
            t0 = time.perf_counter()
            drafts = super().propose(num_speculative_tokens, sampled_token_ids, *args, **kwargs)
            if ctl is None:
                return drafts
            n = len(drafts)
            req_ids = [external_id(r) for r in self.specbed_runner.input_batch.req_ids[:n]]
            ctl.after_draft(req_ids, int(num_speculative_tokens), None, time.perf_counter() - t0)
            return drafts

    return NgramProposer, AdaptiveNgramProposer


# vLLM proposer class -> the subclass that adds our hooks (and no state of its own).
HOOKED_PROPOSERS = {DraftModelProposer: AdaptiveDraftProposer,
                    EagleProposer: AdaptiveEagleProposer}


def _hooked_class(drafter) -> type:
    kind = type(drafter)
    if kind.__name__ in ("NgramProposer", "AdaptiveNgramProposer"):
        return _ngram_hooks()[1]
    hooked = HOOKED_PROPOSERS.get(kind, kind)
    if hooked not in HOOKED_PROPOSERS.values():
        raise RuntimeError(f"exec adapter supports draft_model, eagle and ngram speculation, "
                           f"found {kind.__name__}")
    return hooked


def install(engine, controller) -> None:
    """Connect ``controller`` to the scheduler and drafter of an in-process LLMEngine."""
    check_vllm_version()
    core = getattr(engine.engine_core, "engine_core", None)
    if core is None:
        raise RuntimeError("exec adapter needs the engine core in-process: set "
                           "VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is imported")
    if not isinstance(core.scheduler, AdaptiveScheduler):
        raise RuntimeError("engine was not built with scheduler_cls=AdaptiveScheduler")
    core.scheduler.specbed_controller = controller
    runner = core.model_executor.driver_worker.worker.model_runner
    drafter = getattr(runner, "drafter", None)
    if drafter is not None:
        drafter.__class__ = _hooked_class(drafter)  # adds hooks only, no new state
        drafter.specbed_controller = controller
        drafter.specbed_runner = runner


def uninstall(engine) -> None:
    """Back to plain vLLM behaviour (the hooks become pass-through)."""
    core = engine.engine_core.engine_core
    core.scheduler.specbed_controller = None
    drafter = getattr(core.model_executor.driver_worker.worker.model_runner, "drafter", None)
    if drafter is not None and hasattr(drafter, "specbed_controller"):
        drafter.specbed_controller = None
