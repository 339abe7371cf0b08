"""Small traces and configs shared by the simulator tests."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from sim.core.config import AcceptanceConfig, EngineConfig, SimConfig
from traces.schema import Trace


def poisson_trace(n=200, rate=20.0, seed=1, prompt_med=300, out_med=60, name="t", dataset="d"):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt = np.clip(rng.lognormal(np.log(prompt_med), 0.7, n), 1, 4000).astype(np.int64)
    out = np.clip(rng.lognormal(np.log(out_med), 0.8, n), 1, 1000).astype(np.int64)
    return Trace.from_columns(arrival, prompt, out, dataset=dataset, name=name)


def fixed_rate(a):
    """Beta with a huge concentration: every request's acceptance rate is ~a."""
    return AcceptanceConfig(default=(a * 1e8, (1 - a) * 1e8))


def config(seed=0, acceptance=None, **engine):
    return SimConfig(seed=seed, engine=EngineConfig(**engine),
                     acceptance=acceptance or AcceptanceConfig())


def python_last_line(code: str, timeout: int = 300) -> str:
    """Run ``python -c code`` in a fresh process at the repository root (what it imports
    stays out of the test process); its last line of output, after checking it succeeded."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def cases_pass_in_a_subprocess(path: str, timeout: int = 900) -> None:
    """Run the pytest cases file ``path`` (from the repository root) in a fresh process, as
    a user's run compiles or loads the kernels, and check that they passed."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           path], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
