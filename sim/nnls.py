"""Non-negative least squares, min ||A x - y|| s.t. x >= 0 (numpy only, no scipy here).

Lawson & Hanson's active-set method (Solving Least Squares Problems, 1974, ch. 23):
move the variable with the largest positive gradient into the passive set, solve the
unconstrained problem on it, and step back toward feasibility while any passive variable
would turn negative.
"""
from __future__ import annotations

import numpy as np


def nnls(a: np.ndarray, y: np.ndarray, tol: float | None = None, max_iter: int | None = None):
    a = np.asarray(a, np.float64)
    y = np.asarray(y, np.float64)
    if a.ndim != 2 or y.shape != (a.shape[0],):
        raise ValueError(f"nnls: need A (m, n) and y (m,), got {a.shape} and {y.shape}")
    m, n = a.shape
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n) if tol is None else tol
    max_iter = 3 * n if max_iter is None else max_iter
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    grad = a.T @ (y - a @ x)
    for _ in range(max_iter):
        if passive.all() or grad[~passive].max(initial=-np.inf) <= tol:
            break
        j = int(np.argmax(np.where(passive, -np.inf, grad)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], y, rcond=None)[0]
            if (z[passive] > 0).all():
                break
            neg = passive & (z <= 0)
            denom = x[neg] - z[neg]  # > 0 unless both are 0 (then step 0)
            alpha = np.min(np.divide(x[neg], denom, out=np.zeros_like(denom), where=denom > 0))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                z = np.zeros(n)
                break
        x = z
        grad = a.T @ (y - a @ x)
    return x
