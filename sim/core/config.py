"""Typed, frozen configuration of one simulation run (no hydra here: experiments/ maps onto it)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class EngineConfig:
    """Batching limits, modelled on vLLM V1's scheduler."""

    max_num_seqs: int = 256              # most sequences in one step
    max_num_batched_tokens: int = 8192   # per-step token budget (prefill chunks + decode + drafts)
    block_size: int = 16                 # KV-cache block size in tokens
    num_kv_blocks: int | None = None     # None: derived from hardware memory and model size
    gpu_memory_utilization: float = 0.9  # share of device memory for weights + KV (when derived)
    k_max: int = 8                       # most draft tokens per request per step
    chunked_prefill: bool = True
    max_model_len: int = 32768           # longer prompt+output requests fail with a reason
    accept_ewma_alpha: float = 0.3       # weight of the newest step in accept_rate_ewma
    # "per_request": each request pays the draft passes it asked for; "vllm": vLLM V1's
    # draft-model proposer (pass 0 over the whole target batch every step, then max(k) - 1
    # passes for every sequence; sim/core/live_mirror.py). Use "vllm" to mirror a live run.
    draft_passes: str = "per_request"
    # Run static-policy epochs through the numba kernel (sim/fast/epoch_kernel.py): ~1.5x faster,
    # results identical. Off by default (a plain run then never imports numba); sim.bench and
    # experiments.compare turn it on.
    compiled_epochs: bool = False


@dataclass(frozen=True)
class AcceptanceConfig:
    """How accepted lengths are produced.

    ``kind="parametric"``: per request an acceptance rate a ~ Beta(alpha, beta) of its dataset
    tag (``per_dataset``, falling back to ``default``), per-position Bernoulli with rate
    a * position_decay**p, and a draft-confidence signal correlated with acceptance;
    ``step_correlation`` > 0 makes a request's outcomes at a draft position correlated from
    one of its verify steps to the next, as measured live (sim/models/acceptance.py).
    ``kind="replay"``: recorded match lengths m(p) and confidences from a live run
    (``replay_path``): a request drafting k at position p gets min(k, m(p)).
    """

    kind: str = "parametric"
    default: tuple[float, float] = (8.0, 2.0)            # Beta(alpha, beta): mean 0.8
    per_dataset: tuple[tuple[str, float, float], ...] = ()  # (tag, alpha, beta)
    position_decay: float = 1.0                         # multiplies a per draft position
    confidence_sharpness: float = 8.0                   # how well confidence predicts acceptance
    confidence_accept_mean: float = 0.85  # mean draft prob of a token the target accepts
    confidence_reject_mean: float = 0.3   # mean draft prob of a token the target rejects
    # correlation (0 <= rho < 1) of the latent behind a request's pass at a draft position
    # from one of its verify steps to the next (a Gaussian copula, AR(1) over its steps): the
    # pass chances, hence every request's match-length distribution, stay those of rho = 0
    step_correlation: float = 0.0
    # the share (0 < w <= 1) of each outcome's latent that follows that AR(1); the rest is
    # drawn anew each step: outcomes l steps apart have latents correlated w * rho^l
    correlated_share: float = 1.0
    replay_path: str | None = None


@dataclass(frozen=True)
class SimConfig:
    model: str = "llama-2-7b"            # target model name (sim/models/shapes.py)
    draft: str = "draft-68m"             # draft model name
    hardware: str = "a100-80g"           # hardware name (sim/models/hardware.py)
    cost_model: str = "roofline"         # "roofline" or a fitted profile name
    # the cost model policies read in their observations (None: the engine's own); a live
    # run's twin gives its policy the predictor the live policy had, while the simulated
    # clock runs on the twin's calibrated one (experiments/twin_calibration.py)
    policy_cost_model: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    seed: int = 0
    # each step's latency times exp(sigma * z), z ~ N(0, 1) drawn per step from ``seed``: the
    # machine's step-to-step jitter, for an ensemble of a live run's twin (0: the cost model
    # exactly; the only source of randomness besides acceptance)
    step_noise_sigma: float = 0.0
    tensor_parallel: int = 1             # target (and draft) sharded this many ways
    record_steps: bool = True            # keep the per-step table (off for huge sweeps)

    def without_drafter(self) -> SimConfig:
        """This engine built without a draft model: what "no speculation" runs. Plain vLLM
        loads no drafter, so it never drafts and the draft's memory goes to KV."""
        return replace(self, draft="", engine=replace(self.engine, k_max=0))
