"""KV-cache capacity: how many blocks of ``block_size`` tokens fit next to the weights."""
from __future__ import annotations

import numpy as np

from sim.models.hardware import GIB, get_hardware
from sim.models.shapes import get_model


def derive_num_kv_blocks(config) -> int:
    """``EngineConfig.num_kv_blocks`` if set, else (memory * gpu_memory_utilization - target
    and draft weights) / ((target + draft) KV bytes per token * block_size). The draft's KV
    counts because vLLM's draft-model speculation keeps the draft's cache in the same blocks."""
    eng = config.engine
    if eng.block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {eng.block_size}")
    if eng.num_kv_blocks is not None:
        if eng.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {eng.num_kv_blocks}")
        return int(eng.num_kv_blocks)
    if not 0.0 < eng.gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], "
                         f"got {eng.gpu_memory_utilization}")
    hw = get_hardware(config.hardware, tensor_parallel=config.tensor_parallel)
    models = [get_model(config.model)] + ([get_model(config.draft)] if config.draft else [])
    weights = sum(m.weight_bytes for m in models)
    per_block = sum(m.kv_bytes_per_token for m in models) * eng.block_size
    room = hw.total_memory_bytes * eng.gpu_memory_utilization - weights
    if room < per_block:
        raise ValueError(
            f"{' + '.join(m.name for m in models)} weights ({weights / GIB:.1f} GiB) leave no "
            f"room for a KV cache on {hw.name} x{hw.tensor_parallel} "
            f"({hw.total_memory_bytes * eng.gpu_memory_utilization / GIB:.1f} GiB usable); "
            f"raise tensor_parallel or gpu_memory_utilization")
    return int(room // per_block)


def admission_errors(reqs, eng, num_kv_blocks: int) -> dict[int, str]:
    """Rows that can never be served, with the reason each ends as failed: longer than
    ``max_model_len``, more KV blocks than the whole cache, or (without chunked prefill) a
    prefill larger than the token budget."""
    total = reqs.num_prompt + reqs.num_target_out
    errors = {}
    for row in np.flatnonzero(total > eng.max_model_len).tolist():
        errors[row] = (f"prompt ({reqs.num_prompt[row]}) + output ({reqs.num_target_out[row]}) "
                       f"tokens exceed max_model_len {eng.max_model_len}")
    need = -(-total // eng.block_size)
    for row in np.flatnonzero(need > num_kv_blocks).tolist():
        errors.setdefault(row, f"needs {need[row]} KV blocks, the cache has {num_kv_blocks}")
    if not eng.chunked_prefill:
        # a recompute after preemption prefills prompt + all but the last output token
        for row in np.flatnonzero(total - 1 > eng.max_num_batched_tokens).tolist():
            errors.setdefault(row, f"prefill of up to {total[row] - 1} tokens exceeds "
                                   f"max_num_batched_tokens {eng.max_num_batched_tokens} "
                                   "and chunked_prefill is off")
    return errors
