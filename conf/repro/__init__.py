"""Reproduction setups of the AdaSpec and AdaServe papers (one YAML file per setup).

``load_repro(name) -> ReproConfig`` reads ``conf/repro/<name>.yaml`` against the typed schema
below (unknown keys and wrong types are errors naming the file); ``known_repros()`` lists the
setups. Running one is ``experiments.compare.repro.run_repro(name, quick=True)``.
Sources: /work/shared/papers/adaspec-smartspec.md sec. 5 and adaserve-and-trees.md sec. 1.7.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

REPRO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SloClassConf:
    name: str = ""
    proportion: float = 1.0
    tpot_slo_ms: Optional[float] = None        # absolute TPOT SLO
    tpot_x_baseline: Optional[float] = None    # or a multiple of the no-load TPOT (AdaServe)
    ttft_slo_ms: Optional[float] = None
    datasets: List[str] = field(default_factory=list)  # tags of this class (assign=dataset)


@dataclass(frozen=True)
class CategoryConf:
    """A request category of a synthetic-length workload (AdaServe's Table 2)."""

    tag: str = ""
    proportion: float = 1.0
    prompt_tokens_mean: float = 128.0
    prompt_sigma: float = 0.5                  # lognormal spread of prompt lengths
    output_tokens: int = 256                   # fixed output length (AdaServe artifact)


@dataclass(frozen=True)
class PerDatasetBeta:
    tag: str = ""
    alpha: float = 7.0
    beta: float = 3.0


@dataclass(frozen=True)
class AcceptanceConf:
    alpha: float = 7.0                         # default Beta of per-token acceptance
    beta: float = 3.0
    per_dataset: List[PerDatasetBeta] = field(default_factory=list)
    # Derive per Spec-Bench category Betas from the leaderboard's mean accepted tokens:
    leaderboard_model: Optional[str] = None    # e.g. "Vicuna-7B-v1.3" (A100 section)
    leaderboard_method: str = "SpS"            # draft-model speculative sampling row
    leaderboard_k: int = 5                     # draft length behind the published numbers
    concentration: float = 10.0                # alpha + beta of each derived Beta


@dataclass(frozen=True)
class SpecBenchConf:
    """Spec-Bench prompts (first turn, as AdaSpec's preprocessing) with assumed outputs."""

    tokens_per_word: float = 1.3
    template_tokens: int = 40                  # Vicuna/FastChat system prompt + roles
    output_median: Dict[str, float] = field(default_factory=dict)  # group -> median outputs
    output_sigma: float = 0.4
    max_prompt_tokens: int = 1024              # AdaSpec's benchmark filter
    max_total_tokens: int = 2048


@dataclass(frozen=True)
class ReproConfig:
    name: str = ""
    paper: str = ""                            # citation + section of the digest
    notes: str = ""                            # deviations, missing models, assumptions
    target: str = "llama-2-7b"                 # sim/models/shapes.py names
    draft: str = "draft-68m"
    hardware: str = "a100-80g"
    tensor_parallel: int = 1
    k_max: int = 8
    trace: str = "azure_conv"                  # traces.catalog name (arrivals)
    window_start_s: float = 0.0
    window_end_s: Optional[float] = 600.0
    rates: List[float] = field(default_factory=list)   # req/s levels; [] = native arrivals
    lengths: str = "trace"                     # "trace" | "spec_bench" | "categories"
    spec_bench: SpecBenchConf = field(default_factory=SpecBenchConf)
    categories: List[CategoryConf] = field(default_factory=list)
    slo_assign: str = "random"                 # "random" | "dataset"
    slo_classes: List[SloClassConf] = field(default_factory=list)
    acceptance: AcceptanceConf = field(default_factory=AcceptanceConf)
    policies: List[str] = field(default_factory=lambda: ["none", "fixed_k3"])
    quick_num_requests: int = 12               # run_repro(quick=True): a tiny slice
    quick_max_output_tokens: int = 48


def known_repros() -> list[str]:
    return sorted(p.stem for p in REPRO_DIR.glob("*.yaml"))


def _writable(node):
    """Frozen dataclasses make every schema node read-only; the merge must write into them
    (``to_object`` still returns the frozen dataclasses)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    OmegaConf.set_readonly(node, None)
    if isinstance(node, (DictConfig, ListConfig)):
        for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
            _writable(node._get_node(key))
    return node


def load_repro(name: str) -> ReproConfig:
    """The typed config of ``conf/repro/<name>.yaml``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = REPRO_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown repro setup {name!r}; known: {', '.join(known_repros())}")
    try:
        schema = _writable(OmegaConf.structured(ReproConfig))
        merged = OmegaConf.merge(schema, OmegaConf.load(path))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ValueError(f"{path}: {err}") from err
    if cfg.name != name:
        raise ValueError(f"{path}: name {cfg.name!r} differs from the file name {name!r}")
    if cfg.lengths not in ("trace", "spec_bench", "categories"):
        raise ValueError(f"{path}: lengths must be trace, spec_bench or categories, "
                         f"got {cfg.lengths!r}")
    if cfg.slo_assign not in ("random", "dataset"):
        raise ValueError(f"{path}: slo_assign must be random or dataset, got {cfg.slo_assign!r}")
    if cfg.lengths == "categories" and not cfg.categories:
        raise ValueError(f"{path}: lengths=categories needs a categories list")
    return cfg
