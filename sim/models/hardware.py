"""Named accelerators for the roofline cost model (spec-sheet peaks, dense bf16).

Efficiency factors turn spec-sheet peaks into what a serving engine reaches: large GEMMs reach
roughly 60-70 % of peak FLOP/s and decode reaches roughly 80 % of the HBM bandwidth. The fixed
per-step overhead stands for scheduling, sampling, kernel launches and Python in a vLLM step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

GIB = 1024 ** 3


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    peak_flops: float                # dense bf16 FLOP/s of one device
    mem_bandwidth_bytes_s: float     # HBM (or DRAM) bytes/s of one device
    memory_gib: float                # device memory
    flops_efficiency: float = 0.65
    bandwidth_efficiency: float = 0.8
    step_overhead_s: float = 2.0e-3        # fixed cost of one target forward + sampling step
    draft_step_overhead_s: float = 0.4e-3  # fixed cost of one draft forward pass
    allreduce_latency_s: float = 8.0e-6    # one all-reduce; 2 per layer under tensor parallel
    tensor_parallel: int = 1

    @property
    def effective_flops(self) -> float:
        return self.peak_flops * self.flops_efficiency * self.tensor_parallel

    @property
    def effective_bandwidth(self) -> float:
        return self.mem_bandwidth_bytes_s * self.bandwidth_efficiency * self.tensor_parallel

    @property
    def total_memory_bytes(self) -> float:
        return self.memory_gib * GIB * self.tensor_parallel


_SPECS: dict[str, dict] = {
    "a100-80g": dict(peak_flops=312e12, mem_bandwidth_bytes_s=2.039e12, memory_gib=80),
    "a100-40g": dict(peak_flops=312e12, mem_bandwidth_bytes_s=1.555e12, memory_gib=40),
    "l40": dict(peak_flops=181e12, mem_bandwidth_bytes_s=0.864e12, memory_gib=48),
    "h100": dict(peak_flops=989e12, mem_bandwidth_bytes_s=3.35e12, memory_gib=80,
                 step_overhead_s=1.5e-3, draft_step_overhead_s=0.3e-3),
    "h200": dict(peak_flops=989e12, mem_bandwidth_bytes_s=4.8e12, memory_gib=141,
                 step_overhead_s=1.5e-3, draft_step_overhead_s=0.3e-3),
    # Two AVX2 cores at ~3 GHz with FMA (fp32 ~190 GFLOP/s peak), dual-channel DRAM; the
    # Python/vLLM step overhead dominates small models on CPU.
    "cpu-2core": dict(peak_flops=190e9, mem_bandwidth_bytes_s=20e9, memory_gib=16,
                      flops_efficiency=0.35, bandwidth_efficiency=0.6,
                      step_overhead_s=15e-3, draft_step_overhead_s=4e-3,
                      allreduce_latency_s=0.0),
}


def known_hardware() -> list[str]:
    return sorted(_SPECS)


def get_hardware(name: str, tensor_parallel: int = 1, **overrides) -> HardwareSpec:
    """A named device, optionally sharded ``tensor_parallel`` ways; ``overrides`` replace
    fields (e.g. ``step_overhead_s=1e-3``). Unknown names raise KeyError listing known ones."""
    if name not in _SPECS:
        raise KeyError(f"unknown hardware {name!r}; known hardware: {', '.join(known_hardware())}")
    if int(tensor_parallel) < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    spec = HardwareSpec(name=name, tensor_parallel=int(tensor_parallel), **_SPECS[name])
    bad = set(overrides) - set(HardwareSpec.__dataclass_fields__)
    if bad:
        raise TypeError(f"unknown hardware fields {sorted(bad)}")
    return replace(spec, **overrides) if overrides else spec
