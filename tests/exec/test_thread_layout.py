"""exec/ pins OpenMP's threads before torch loads, unless the user set the layout."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import os, exec; print(os.environ['OMP_PROC_BIND'], os.environ['OMP_PLACES'])"


def _layout(**env_extra) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
    env.update(env_extra)
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, text=True,
                         capture_output=True, check=True)
    return res.stdout.strip()


def test_exec_applies_the_pinned_layout():
    assert _layout() == "close cores"


def test_a_layout_the_user_set_wins():
    assert _layout(OMP_PROC_BIND="false", OMP_PLACES="threads") == "false threads"
