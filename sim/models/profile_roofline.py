"""Roofline terms used only to complete public profiles that lack a measured part.

Vidur's public data has no attention profiles (and no LM head), and LLMServingSim's Llama-3.1-8B
data has attention for fresh prefills only. The importer fills those parts with a roofline:
time = max(flops / peak_flops, bytes / mem_bandwidth) at spec-sheet peaks (no efficiency
factor, so these parts are optimistic lower bounds). The source column of every such row says so.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    """Dense fp16/bf16 tensor peak and HBM bandwidth (vendor spec sheets)."""

    peak_flops: float
    mem_bytes_per_s: float


# A100 SXM 80GB: 312 TFLOPS, 2.039 TB/s; H100 SXM 80GB: 989 TFLOPS, 3.35 TB/s;
# A40: 149.7 TFLOPS (fp16 tensor, fp16 accumulate), 696 GB/s.
DEVICE_SPECS = {
    "a100-80g": DeviceSpec(312e12, 2.039e12),
    "h100": DeviceSpec(989e12, 3.35e12),
    "a40": DeviceSpec(149.7e12, 696e9),
}


@dataclass(frozen=True)
class ModelShape:
    """What the roofline terms need of a decoder-only transformer (per tensor-parallel rank)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tensor_parallel: int = 1
    bytes_per_param: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def attention_s(shape: ModelShape, dev: DeviceSpec, sum_context_tokens, kv_read_tokens):
    """Attention time of one pass over all layers.

    flops: QK^T and PV, 2 * 2 * head_dim per (query token, context token) pair per head;
    bytes: K and V of every distinct context token read once per layer (flash attention).
    """
    heads = shape.num_heads / shape.tensor_parallel
    kv_heads = shape.num_kv_heads / shape.tensor_parallel
    flops = 4.0 * shape.head_dim * heads * sum_context_tokens
    nbytes = 2.0 * kv_heads * shape.head_dim * shape.bytes_per_param * kv_read_tokens
    return shape.num_layers * max(flops / dev.peak_flops, nbytes / dev.mem_bytes_per_s)


def lm_head_s(shape: ModelShape, dev: DeviceSpec, num_seqs: int) -> float:
    """Logits for the last token of each sequence: a (num_seqs x hidden x vocab) GEMM."""
    params = shape.hidden_size * shape.vocab_size / shape.tensor_parallel
    return max(2.0 * params * num_seqs / dev.peak_flops,
               params * shape.bytes_per_param / dev.mem_bytes_per_s)
