"""The compiled epoch kernel's cases (tests/sim/cases_epochs_kernel.py) in their own process.

numba loads llvmlite, whose ``ffi.lib`` object breaks vLLM 0.32's CPU kernel registration
for any engine started later in the same process (sim/fast/epoch_compiled.py); the live tests
share this pytest process, so the kernel cases run in a child pytest.
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
    """A default simulation must leave vLLM startable in the same process."""
    code = ("import sys; from sim import simulate; from sim.core.config import SimConfig; "
            "from policies import make_policy; from traces.embedded import embedded_trace; "
            "simulate(embedded_trace(num_requests=50, seed=0), make_policy('fixed', k=3), "
            "SimConfig()); print('llvmlite' in ' '.join(sys.modules))")
    assert python_last_line(code) == "False"
