"""The compiled epoch kernel's cases (tests/sim/cases_epochs_kernel.py) in their own process.

The kernel cases run in a child pytest (a fresh process compiles or loads the kernels as a
user's run does); numba next to vLLM is tested in tests/exec/test_numba_coexists.py.
"""
import subprocess
import sys
from pathlib import Path

from tests.sim.helpers import python_last_line

ROOT = Path(__file__).resolve().parents[2]


def test_compiled_epoch_kernel_cases_pass_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/sim/cases_epochs_kernel.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


def test_default_simulation_does_not_import_numba():
    """A default simulation imports no numba (its import and kernel loads cost ~1 s)."""
    code = ("import sys; from sim import simulate; from sim.core.config import SimConfig; "
            "from policies import make_policy; from traces.embedded import embedded_trace; "
            "simulate(embedded_trace(num_requests=50, seed=0), make_policy('fixed', k=3), "
            "SimConfig()); print('llvmlite' in ' '.join(sys.modules))")
    assert python_last_line(code) == "False"
