"""``probe_ms``: how fast this machine computes right now, from one fixed kernel.

Why: the 2-core CPU machine runs in two speed states about 11 % apart on the live pair's
steps and flips between them on a scale of seconds (README, "Simulator fidelity"), so a live
repeat's level depends on when it ran, and a twin, which predicts the average machine, is off
by what the states of a cell's few repeats happened to be. A fixed fp32 matrix product (one
SmolLM2-135M MLP projection over 384 tokens), timed a few times just before and after a
live repeat, reads the state: ~3.55 ms fast and 4.15-4.45 ms slow here, and its mean
tracked the steps' level over 16 short runs (rank correlation 0.63). It runs on torch's
threads, as the engine's CPU kernels do, between runs, never inside a timed one.
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
