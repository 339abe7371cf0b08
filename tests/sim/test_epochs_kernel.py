"""The compiled epoch kernel's cases (tests/sim/cases_epochs_kernel.py) in their own process.

The kernel cases run in a child pytest (a fresh process compiles or loads the kernels as a
user's run does); numba next to vLLM is tested in tests/exec/test_numba_coexists.py.
"""
from tests.sim.helpers import cases_pass_in_a_subprocess, python_last_line


def test_compiled_epoch_kernel_cases_pass_in_a_subprocess():
    cases_pass_in_a_subprocess("tests/sim/cases_epochs_kernel.py", timeout=600)


def test_default_simulation_does_not_import_numba():
    """A default simulation imports no numba (its import and kernel loads cost ~1 s)."""
    code = ("import sys; from sim import simulate; from sim.core.config import SimConfig; "
            "from policies import make_policy; from traces.embedded import embedded_trace; "
            "simulate(embedded_trace(num_requests=50, seed=0), make_policy('fixed', k=3), "
            "SimConfig()); print('llvmlite' in ' '.join(sys.modules))")
    assert python_last_line(code) == "False"
