"""Step-latency models (``policies.interface.CostModel``) and the factory keyed by name.

The first model is an analytic roofline. A forward pass over ``num_tokens`` tokens of
``num_seqs`` sequences whose tokens attend to ``sum_context_tokens`` KV entries in total takes

    time = max(flops / effective_flops, bytes / effective_bandwidth) + fixed overhead
    flops = 2 * matmul_params * num_tokens + attn_flops_per_context_token * sum_context_tokens
    bytes = weight_bytes + kv_bytes_per_token * kv_tokens_read

FlashAttention-style kernels read a sequence's KV once for all of its query tokens in the pass,
so the KV actually read is about the per-sequence context, not the per-token sum. The
interface only carries the per-token sum, so we estimate ``kv_tokens_read = sum_context_tokens
* num_seqs / num_tokens`` (exact for decode, where every sequence has one query token; within
``k+2`` tokens for a k-token verify; about half the context for a fresh prefill chunk, which is
compute bound anyway). A pass with no tokens costs nothing.

A fitted model (from profiles, sim/models/fitted_cost.py) is ``cost_model="fitted:<profile>"``; more
kinds plug in through ``register_cost_model(name, builder)``. The engine only calls
``make_cost_model(config)``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from policies.interface import ROOFLINE, CostCoefficients
from sim.models.hardware import HardwareSpec, get_hardware
from sim.models.shapes import ModelShape, get_model


def roofline_s(coef, num_tokens, num_seqs, sum_context_tokens):
    """One pass's seconds from the roofline's coefficients (s per token, s per context token,
    s to stream weights, s per KV token read, fixed s), for num_tokens > 0. The one scalar
    expression: the cost model calls it, the compiled kernels jit it (sim/fast/), and the
    numpy epochs inline it operation for operation (sim/fast/epoch.py)."""
    compute = coef[0] * num_tokens + coef[1] * sum_context_tokens
    memory = coef[2] + coef[3] * sum_context_tokens * num_seqs / num_tokens
    return (compute if compute >= memory else memory) + coef[4]


class RooflineCostModel:
    """Spec-sheet roofline of a target and a draft model on one (possibly sharded) device."""

    def __init__(self, target: ModelShape, draft: ModelShape | None, hardware: HardwareSpec):
        self.target, self.draft, self.hardware = target, draft, hardware
        self._target = self._coefficients(target, hardware.step_overhead_s)
        self._draft = (None if draft is None
                       else self._coefficients(draft, hardware.draft_step_overhead_s))
        # vLLM's k = 0 draft pass keeps the drafter's KV cache in step and returns before
        # the LM head and sampling (sim/core/live_mirror.py): the draft's weights and FLOPs
        # without its vocabulary projection; the fixed cost is kept whole (no measurement
        # says how much of it sampling takes)
        self._draft_sync = (None if draft is None else self._coefficients(
            draft, hardware.draft_step_overhead_s, lm_head=False))
        # built once: policies ask for it every step (a new one cost ~2.5 us a call)
        self._form = (None if draft is None
                      else CostCoefficients(ROOFLINE, self._target, self._draft))

    def _coefficients(self, m: ModelShape, overhead_s: float, lm_head: bool = True) -> tuple:
        hw = self.hardware
        comm = 2 * m.num_layers * hw.allreduce_latency_s if hw.tensor_parallel > 1 else 0.0
        head = 0 if lm_head else m.vocab_size * m.hidden_size     # its parameters, if skipped
        return (2.0 * (m.num_matmul_params - head) / hw.effective_flops,  # s per token
                m.attn_flops_per_context_token / hw.effective_flops,  # s per context token
                (m.weight_bytes - head * m.dtype_bytes) / hw.effective_bandwidth,  # weights
                m.kv_bytes_per_token / hw.effective_bandwidth,        # s per KV token read
                overhead_s + comm)

    @staticmethod
    def _time(coef, num_tokens, num_seqs, sum_context_tokens):
        tok_s, ctx_s, w_s, kv_s, fixed_s = coef
        if type(num_tokens) in (int, float) and type(num_seqs) in (int, float) \
                and type(sum_context_tokens) in (int, float):
            if num_tokens <= 0:             # scalar fast path: the engine calls this per step
                return 0.0
            return roofline_s(coef, num_tokens, num_seqs, sum_context_tokens)
        t = np.asarray(num_tokens, np.float64)
        s = np.asarray(num_seqs, np.float64)
        c = np.asarray(sum_context_tokens, np.float64)
        compute = tok_s * t + ctx_s * c
        memory = w_s + kv_s * c * s / np.maximum(t, 1.0)
        return np.where(t > 0, np.maximum(compute, memory) + fixed_s, 0.0)

    def coefficients(self):
        """``policies.interface.CostCoefficients`` of this roofline (None without a draft)."""
        return self._form

    def scalar_coefficients(self) -> tuple:
        """(target, draft) coefficient tuples (s per token, s per context token, s to stream
        weights, s per KV token read, fixed s) of ``_time``'s scalar expression, so a hot
        loop (sim/fast/epoch.py) can inline it and get the very floats of a scalar call."""
        return self._target, self._draft

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._time(self._target, num_tokens, num_seqs, sum_context_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        if self._draft is None:
            raise ValueError("this cost model has no draft model (SimConfig.draft is empty)")
        return self._time(self._draft, num_tokens, num_seqs, sum_context_tokens)

    def draft_sync_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        """A draft pass that samples nothing (vLLM's k = 0 pass): no LM head."""
        if self._draft_sync is None:
            raise ValueError("this cost model has no draft model (SimConfig.draft is empty)")
        return self._time(self._draft_sync, num_tokens, num_seqs, sum_context_tokens)


class ConstantCostModel:
    """Fixed seconds per pass whatever the batch (closed-form tests, toy studies)."""

    def __init__(self, target_s: float, draft_s: float = 0.0):
        self.target_s, self.draft_s = float(target_s), float(draft_s)

    def _const(self, value, num_tokens):
        if type(num_tokens) in (int, float):
            return value if num_tokens > 0 else 0.0
        return np.where(np.asarray(num_tokens) > 0, value, 0.0)

    def target_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._const(self.target_s, num_tokens)

    def draft_step_s(self, num_tokens, num_seqs, sum_context_tokens):
        return self._const(self.draft_s, num_tokens)


def _build_roofline(config) -> RooflineCostModel:
    hw = get_hardware(config.hardware, tensor_parallel=config.tensor_parallel)
    draft = get_model(config.draft) if config.draft else None
    return RooflineCostModel(get_model(config.model), draft, hw)


def _build_fitted(config):
    from sim.models.fitted_cost import build_fitted   # lazy: profiles need pandas and data files
    return build_fitted(config)


# "name" or "name:argument" (e.g. "fitted:a100-80g_llama-2-7b") -> builder(config)
_BUILDERS: dict[str, Callable] = {"roofline": _build_roofline, "fitted": _build_fitted}


def register_cost_model(name: str, builder: Callable) -> None:
    """Make ``SimConfig.cost_model == name`` build ``builder(config)`` (e.g. a fitted model)."""
    _BUILDERS[name] = builder


def known_cost_models() -> list[str]:
    return sorted(_BUILDERS)


def make_cost_model(config):
    """The cost model named by ``config.cost_model`` for ``config``'s models and hardware."""
    kind = str(config.cost_model).split(":", 1)[0]
    if kind not in _BUILDERS:
        raise KeyError(f"unknown cost model {config.cost_model!r}; known cost models: "
                       f"{', '.join(known_cost_models())} (fitted takes fitted:<profile>)")
    return _BUILDERS[kind](config)
