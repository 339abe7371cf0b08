"""Draft-pass accounting of vLLM V1's draft-model proposer (``EngineConfig.draft_passes="vllm"``).

The simulator's default charges each decoding request the draft passes it asked for (pass 0
fused with this step's prompt chunks). vLLM 0.32's ``DraftModelProposer`` (what the live
executor runs, exec/adapter.py) works differently, and a simulation that is compared with a
live run must charge what it does:

* pass 0 runs over every token of the target pass (prefill chunks, decode tokens and verified
  drafts: it keeps the draft's KV cache in step with the target's), in every step, also when no
  request speculates (policy ``none`` on an engine with a draft model still pays it);
* when max(k) is 0, pass 0 returns before the LM head and sampling ("No draft tokens
  requested" in vLLM 0.32's llm_base_proposer.py): it costs a ``draft_sync`` pass where the
  cost model has one (a fitted profile with draft_sync rows; the roofline's, the draft
  without its LM head), else a full draft pass;
* then max(k) - 1 further passes of one token for every sequence in the batch (the batched
  drafter has no per-request stop), where max(k) is the largest k drafted in the step. The
  batch includes requests whose prefill ends in the step: vLLM's decision already covers them,
  so a step of prefills only also drafts (the simulator, which decides only for decoding
  requests, charges the last decision's max k there).
* no drafting at all in a step whose longest sequence (KV before the step plus its scheduled
  tokens) leaves fewer than k_max (``num_speculative_tokens``) positions before max_model_len:
  vLLM's model runner checks the whole batch (``_input_fits_in_drafter``) and zeroes every
  request's drafts, pass 0 included. Prompts clamped to the window end there, so a live run
  with long prompts stops speculating for whole stretches (drafter_window_full).
* the decision on a step's drafts is taken while the step before is scheduled (the adapter's
  ``after_schedule``, exec/controller.py): its observation knows the prefills of requests that
  had arrived by then, not of those arriving during that step (``known_prefill``), and the
  policy observes the step before's verification only after that decision (the engine holds
  the feedback until its next decide: ``Engine.held_feedback``).
"""
from __future__ import annotations

import numpy as np

DRAFT_PASS_MODES = ("per_request", "vllm")


def vllm_draft_s(cost, num_tokens: int, num_seqs: int, sum_context_tokens: int, max_k: int,
                 decode_ctx: np.ndarray) -> float:
    """Seconds of one step's drafting as vLLM runs it (see the module doc).

    ``num_tokens``/``num_seqs``/``sum_context_tokens``: the step's target pass;
    ``decode_ctx``: KV entries of each drafting request after the step (decoding requests after
    their decode token, prefilling ones after their chunk).
    """
    return vllm_draft_s_of_sums(cost, num_tokens, num_seqs, sum_context_tokens, max_k,
                                int(decode_ctx.shape[0]), int(decode_ctx.sum()))


def vllm_draft_passes(num_tokens: int, num_seqs: int, sum_context_tokens: int, max_k: int,
                      num_drafting: int, drafting_ctx_sum: int) -> list[tuple[bool, int, int, int]]:
    """The draft passes of one step as vLLM runs them (see the module doc), each as
    (samples, num_tokens, num_seqs, sum_context_tokens): pass 0 over the target pass's tokens
    (``samples`` False when max k is 0: a sync pass), then max k - 1 one-token passes over
    the batch, attending to the drafting requests' KV (``drafting_ctx_sum`` after the step,
    ``num_drafting`` requests) plus the drafts so far."""
    if num_tokens <= 0:
        return []
    passes = [(max_k > 0, num_tokens, num_seqs, sum_context_tokens)]
    if num_drafting and max_k > 1:
        passes += [(True, num_seqs, num_seqs, drafting_ctx_sum + num_drafting * (j + 1))
                   for j in range(1, max_k)]
    return passes


def vllm_pass_s(cost, samples: bool, num_tokens: int, num_seqs: int,
                sum_context_tokens: int) -> float:
    """Seconds of one ``vllm_draft_passes`` pass: a sync pass (``samples`` False) costs a
    ``draft_sync`` pass where the cost model has one, else a full draft pass."""
    step_s = cost.draft_step_s if samples else getattr(cost, "draft_sync_step_s",
                                                       cost.draft_step_s)
    return float(step_s(num_tokens, num_seqs, sum_context_tokens))


def vllm_draft_s_of_sums(cost, num_tokens: int, num_seqs: int, sum_context_tokens: int,
                         max_k: int, num_drafting: int, drafting_ctx_sum: int) -> float:
    """``vllm_draft_s`` from the drafting requests' count and KV sum (a live step's record)."""
    passes = vllm_draft_passes(num_tokens, num_seqs, sum_context_tokens, max_k, num_drafting,
                               drafting_ctx_sum)
    return sum((vllm_pass_s(cost, *p) for p in passes), 0.0)


def drafter_window_full(seq_lens: np.ndarray, k_max: int, max_model_len: int) -> bool:
    """vLLM skips the step's drafting when max(seq_lens) + k_max > max_model_len."""
    return bool(seq_lens.shape[0]) and int(seq_lens.max()) + k_max > max_model_len


def known_prefill(arrival_s: np.ndarray, chunk: np.ndarray, computed: np.ndarray,
                  decided_s: float) -> tuple[int, int, int]:
    """(tokens, attention context, sequences) of a step's prefill chunks as vLLM's decision
    sees them: only the chunks of requests that arrived by ``decided_s``, when the step
    before was scheduled and the decision taken."""
    from sim.core.step_plan import prefill_context

    seen = arrival_s <= decided_s
    return (int(chunk[seen].sum()), prefill_context(computed[seen], chunk[seen]),
            int(seen.sum()))
