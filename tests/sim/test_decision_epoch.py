"""Decision epochs' cases (tests/sim/cases_decision_epoch.py) in their own process, as the
compiled epoch kernel's are (tests/sim/test_epochs_kernel.py)."""
from tests.sim.helpers import cases_pass_in_a_subprocess


def test_decision_epoch_cases_pass_in_a_subprocess():
    cases_pass_in_a_subprocess("tests/sim/cases_decision_epoch.py")
