"""Typed, frozen configuration of one live run (no hydra here: experiments/ maps onto it)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

# The embedded trained draft/target pair (HF Llama format) lives here once trained.
ASSETS_PAIR = Path(__file__).resolve().parent / "assets" / "pair"


DRAFT_METHODS = ("draft_model", "eagle", "ngram")
# The vLLM minor release exec/adapter.py's hooks are written against; pyproject's `live` and
# `gpu` extras must admit only it (tests/exec/test_realistic_pair.py checks they agree).
SUPPORTED_VLLM = "0.32."


@dataclass(frozen=True)
class LiveConfig:
    """One in-process vLLM V1 engine plus how a trace is replayed on it.

    ``k_max`` is vLLM's ``num_speculative_tokens``: the most draft tokens per request per step
    (the proposer's buffers are sized by it); the policy picks 0..k_max per request and step.
    ``draft_method`` is vLLM's speculative ``method``: ``draft_model`` (a separate small LM),
    ``eagle`` (a head on the target's hidden states; ``draft_model`` is its folder) or
    ``ngram`` (prompt lookup, no model: ``draft_model`` must be None). ``draft_model=None``
    with another method builds an engine without speculation (every k is forced to 0): what
    "no speculation" means live.
    """

    target_model: str = str(ASSETS_PAIR / "target")
    draft_model: str | None = str(ASSETS_PAIR / "draft")
    draft_method: str = "draft_model"     # vLLM speculative method: draft_model | eagle | ngram
    ngram_lookup_max: int = 4             # ngram: longest / shortest n-gram matched in the
    ngram_lookup_min: int = 2             # request's own tokens (vLLM prompt_lookup_max/min)
    tokenizer: str | None = None          # None: the target's own tokenizer
    k_max: int = 4                        # vLLM num_speculative_tokens
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    max_model_len: int = 1024
    kv_cache_gib: float = 1.0             # VLLM_CPU_KVCACHE_SPACE on CPU; keep it small
    gpu_memory_utilization: float = 0.3   # share of device memory (GPU runs only)
    seed: int = 0
    time_scale: float = 1.0               # request i is added at wall >= arrival_s * time_scale
    dtype: str = "float32"
    tensor_parallel_size: int = 1
    max_requests: int | None = None       # replay only the first N requests of the trace
    max_wall_s: float = 600.0             # requests unfinished by then end failed-with-reason
    prompts_path: str | None = None       # None: <target dir>/../prompts.jsonl
    enforce_eager: bool = True
    record_acceptance: bool = False       # also compute m(p) traces after the run
    warmup_requests: int = 2              # short requests run before the trace clock starts

    def __post_init__(self):
        checks = [("k_max", self.k_max >= 0), ("max_num_seqs", self.max_num_seqs >= 1),
                  ("max_num_batched_tokens", self.max_num_batched_tokens >= 1),
                  ("max_model_len", self.max_model_len >= 2),
                  ("kv_cache_gib", self.kv_cache_gib > 0), ("time_scale", self.time_scale >= 0),
                  ("tensor_parallel_size", self.tensor_parallel_size >= 1),
                  ("max_wall_s", self.max_wall_s > 0),
                  ("warmup_requests", self.warmup_requests >= 0)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"LiveConfig: bad {name}={getattr(self, name)!r}")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"LiveConfig: bad max_requests={self.max_requests!r}")
        if self.draft_method not in DRAFT_METHODS:
            raise ValueError(f"LiveConfig: unknown draft_method={self.draft_method!r}; "
                             f"known: {', '.join(DRAFT_METHODS)}")
        if self.draft_method == "ngram" and self.draft_model is not None:
            raise ValueError("LiveConfig: draft_method='ngram' drafts from the request's own "
                             "tokens: set draft_model=None")
        if not 1 <= self.ngram_lookup_min <= self.ngram_lookup_max:
            raise ValueError(f"LiveConfig: bad ngram_lookup_min/max="
                             f"{self.ngram_lookup_min}/{self.ngram_lookup_max}")
        if self.speculative and self.k_max < 1:
            raise ValueError("LiveConfig: speculation needs k_max >= 1 (use "
                             "LiveConfig.without_speculation() for an engine without it)")

    @property
    def speculative(self) -> bool:
        """Whether the engine drafts at all (a draft model, or the model-free n-gram lookup)."""
        return self.draft_model is not None or self.draft_method == "ngram"

    @property
    def has_draft_confidences(self) -> bool:
        """Only model drafters give a probability per drafted token."""
        return self.draft_model is not None

    def without_speculation(self) -> "LiveConfig":
        """The same engine limits with no drafter: plain vLLM, the live "no speculation"."""
        return replace(self, draft_model=None, draft_method="draft_model")

    def speculative_config(self, k: int | None = None) -> dict | None:
        """vLLM's ``speculative_config`` for this engine (None: no speculation)."""
        num = self.k_max if k is None else int(k)
        if not self.speculative or num < 1:
            return None
        spec = {"method": self.draft_method, "num_speculative_tokens": num}
        if self.draft_method == "ngram":
            spec.update(prompt_lookup_max=self.ngram_lookup_max,
                        prompt_lookup_min=self.ngram_lookup_min)
        else:
            spec["model"] = self.draft_model
        return spec

    def check_paths(self) -> None:
        """Clear error for a missing model folder before vLLM starts (it would say less)."""
        for role, path in (("target_model", self.target_model), ("draft_model", self.draft_model),
                           ("tokenizer", self.tokenizer)):
            if path is None:
                continue
            p = Path(path)
            if not p.is_dir() or not (p / "config.json").exists() and role != "tokenizer":
                raise FileNotFoundError(
                    f"LiveConfig.{role}: no model folder with config.json at {path!r}"
                    + (" (the embedded pair is trained by exec/train_pair.py)"
                       if str(ASSETS_PAIR) in str(p) else ""))

    def default_prompts_path(self) -> Path:
        if self.prompts_path is not None:
            return Path(self.prompts_path)
        return Path(self.target_model).resolve().parent / "prompts.jsonl"
