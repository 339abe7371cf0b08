"""``probe_ms``: how fast this machine computes right now, from one fixed kernel.

Why: on the 2-core CPU machine the live pair's steps run in two levels about 11 % apart
that change within seconds (README, "Simulator fidelity"), so a live repeat's figures
depend on when it ran. validate reads this probe, a fixed fp32 matrix product (one
SmolLM2-135M MLP projection over 384 tokens), just before and after every live repeat and
reports how it ranks with the repeats' step level (``machine_probe``). It is a record, not a
correction: over 16 short runs in one hour its mean tracked their level (rank correlation
0.63), over the 27 repeats of one validate run only 0.25, and the two readings around one
repeat often differ as much as the two levels do. It runs on torch's threads, as the
engine's CPU kernels do, between runs, never inside a timed one.
"""
from __future__ import annotations

import time

import numpy as np

PROBE_SHAPE = (384, 576, 1536)     # (tokens, hidden, MLP width): one projection's product
PROBE_REPEATS = 15


def probe_ms(repeats: int = PROBE_REPEATS) -> float:
    """Median milliseconds of ``repeats`` runs of the probe's matrix product (fixed inputs)."""
    import torch

    if repeats < 1:
        raise ValueError(f"probe_ms: repeats must be >= 1, got {repeats}")
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a, w = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        (a @ w).sum().item()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3
