"""Decision epochs' cases (tests/sim/cases_decision_epoch.py) in their own process, as the
compiled epoch kernel's are (tests/sim/test_epochs_kernel.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_decision_epoch_cases_pass_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/sim/cases_decision_epoch.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
