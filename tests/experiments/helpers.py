"""Shared by the experiments tests: run a command-line entry point in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, timeout: int = 900) -> tuple[dict, str]:
    """``python -m module args...`` at the repository root; (its last line parsed as the
    JSON object it must be, its stderr), after checking it exited 0."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr
