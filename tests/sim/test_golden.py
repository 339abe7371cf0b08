"""Simulator results unchanged by refactors: fingerprints equal the recorded ones.

Computed in a subprocess, a fresh process as a user's run is (its compiled paths load numba
there, not here)."""
import json
import subprocess
import sys
from pathlib import Path

from tests.sim.golden import GOLDEN_PATH

ROOT = Path(__file__).resolve().parents[2]


def test_result_tables_match_recorded_fingerprints():
    want = json.loads(GOLDEN_PATH.read_text())
    proc = subprocess.run([sys.executable, "-m", "tests.sim.golden"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert sorted(got) == sorted(want)
    changed = [k for k in want if got[k] != want[k]]
    assert not changed, (f"{len(changed)} of {len(want)} result tables changed, first "
                         f"{changed[:5]}; if intended, re-record with "
                         "`python -m tests.sim.golden --write` and say why in the commit")
