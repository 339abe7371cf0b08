"""The named live model pairs: their LiveConfig and the simulator's names for their shapes.

``embedded``: the toy pair trained here (exec/train_pair.py, exec/assets/pair).
``smollm2_135m``: SmolLM2-135M-Instruct with its EAGLE head (exec/smollm2.py,
exec/train_eagle.py), the realistic CPU pair; ``smollm2_135m_ngram``: the same target with
vLLM's n-gram prompt lookup. A folder holding target/ and draft/ is accepted too (a pair
trained elsewhere, drafting with method draft_model).
"""
from __future__ import annotations

from pathlib import Path

from exec.config import ASSETS_PAIR, LiveConfig

PAIRS = ("embedded", "smollm2_135m", "smollm2_135m_ngram")
# sim/models/shapes.py's names of each pair's target and drafter shapes ("" = no draft model)
SIM_NAMES = {"embedded": ("embedded-target", "embedded-draft"),
             "smollm2_135m": ("smollm2-135m", "smollm2-135m-eagle"),
             "smollm2_135m_ngram": ("smollm2-135m", "")}
EAGLE_HEAD = ASSETS_PAIR.parent / "smollm2_eagle"


def pair_config(name: str, **overrides) -> LiveConfig:
    """The LiveConfig of a named pair (or of a pair folder), engine limits the profiler, the
    fidelity harness and the bench share: k_max 4, 16 sequences, 2048 batched tokens, 1024
    model length."""
    base = dict(k_max=4, max_num_seqs=16, max_num_batched_tokens=2048, max_model_len=1024,
                kv_cache_gib=2.0, prompts_path=str(ASSETS_PAIR / "prompts.jsonl"))
    if name == "embedded" or name not in PAIRS:
        pair = ASSETS_PAIR if name == "embedded" else Path(name)
        if not (pair / "target" / "config.json").exists():
            raise FileNotFoundError(
                f"no model pair {name!r}: known pairs {', '.join(PAIRS)}, or a folder with "
                "target/config.json (the embedded pair is trained by python -m exec.train_pair)")
        base.update(target_model=str(pair / "target"), draft_model=str(pair / "draft"),
                    prompts_path=str(pair / "prompts.jsonl"))
    else:
        from exec.smollm2 import ensure_target
        draft, method = (None, "ngram") if name.endswith("_ngram") else (EAGLE_HEAD, "eagle")
        if draft is not None and not (draft / "config.json").exists():
            raise FileNotFoundError(f"no EAGLE head at {draft}: train it with `python -m "
                                    f"exec.train_eagle --work <dir> --out {draft}`")
        base.update(target_model=str(ensure_target(verbose=False)),
                    draft_model=None if draft is None else str(draft), draft_method=method)
    return LiveConfig(**{**base, **overrides})


def sim_names(name: str) -> tuple[str, str]:
    """(target, draft) shape names in sim/models/shapes.py of a named pair (a folder: embedded's)."""
    return SIM_NAMES.get(name, SIM_NAMES["embedded"])


def pair_key(name_or_folder: str) -> str:
    """The name profiles are filed under: a named pair's name, ``embedded`` for the embedded
    pair's folder, else the folder's name."""
    if name_or_folder in PAIRS:
        return name_or_folder
    folder = Path(name_or_folder)
    return "embedded" if folder.resolve() == ASSETS_PAIR.resolve() else folder.name
