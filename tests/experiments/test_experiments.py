"""Entry points: hydra sweeps with a local launcher, resumable never-overwriting runs,
validation before anything runs, the main job."""
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conf import compose_run
from experiments import store
from experiments.build import build_trace, shift_load
from experiments.runner import execute

REPO = Path(__file__).resolve().parents[2]
TINY = ["trace=embedded", "trace.num_requests=30"]


def cli(*args, timeout=120):
    env = dict(os.environ, HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def complete_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/summary.json"))


def fingerprint(run_dir: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in run_dir.iterdir()}


def test_multirun_sweep_with_local_launcher_and_report(tmp_path):
    root = tmp_path / "results"
    res = cli("-m", "experiments.run", "-m", "hydra/launcher=local",
              "policy=none,fixed,batch_schedule", "trace.rate=2,6,12", *TINY,
              f"results_root={root}")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = complete_runs(root)
    assert len(runs) == 9
    for run in runs:
        assert {"config.yaml", "requests.parquet", "steps.parquet", "meta.json",
                "summary.json"} <= {p.name for p in run.iterdir()}
    ledgers = list(root.glob("sweeps/*/runs-*.txt"))
    assert len(ledgers) == 1
    assert len(set(ledgers[0].read_text().split())) == 9
    assert "batch_schedule" in res.stdout and "SLO %" in res.stdout  # end-of-sweep table

    from analysis.report import build_report
    from analysis.runs import load_runs

    frame = load_runs(ledgers[0])
    assert sorted(frame["policy"].unique()) == ["batch_schedule", "fixed", "none"]
    assert sorted(frame["trace.rate"].unique()) == [2.0, 6.0, 12.0]
    report = build_report(ledgers[0], tmp_path / "report")
    html = report.read_text()
    for name in ("latency_vs_load", "goodput_vs_load", "slo_vs_load", "speedup"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / "report" / f"{name}.pdf").stat().st_size > 1_000
        assert f"{name}.pdf" in html
    assert html.count("data:image/png;base64,") == 4


def test_resume_skips_complete_runs_and_never_overwrites(tmp_path):
    cfgs = [compose_run([*TINY, f"policy={p}", "trace.rate=4", f"results_root={tmp_path}"])
            for p in ("none", "fixed")]
    first = [execute(c, verbose=False) for c in cfgs]
    assert [s["skipped"] for s in first] == [False, False]
    before = {s["run_dir"]: fingerprint(Path(s["run_dir"])) for s in first}

    again = [execute(c, verbose=False) for c in cfgs]
    assert [s["skipped"] for s in again] == [True, True]
    assert {s["run_dir"]: fingerprint(Path(s["run_dir"])) for s in again} == before

    # A half-finished run (no summary.json, a stale partial file) is redone from scratch.
    half = Path(first[1]["run_dir"])
    (half / "summary.json").unlink()
    (half / "stale.tmp").write_text("left by a killed job")
    redo = execute(cfgs[1], verbose=False)
    assert redo["skipped"] is False and not (half / "stale.tmp").exists()
    assert fingerprint(Path(first[0]["run_dir"])) == before[first[0]["run_dir"]]
    # Same config + seed => identical results.
    old_hash = before[str(half)]["requests.parquet"][1]
    assert hashlib.sha256((half / "requests.parquet").read_bytes()).hexdigest() == old_hash
    with pytest.raises(FileExistsError):
        store.clear_partial(half)


def test_run_key_depends_on_semantics_only(tmp_path):
    a = compose_run([*TINY, "results_root=/x"])
    b = compose_run([*TINY, "results_root=/y"])
    c = compose_run([*TINY, "trace.rate=5"])
    d = compose_run([*TINY, "seed=1"])
    assert store.run_key(a) == store.run_key(b)
    assert len({store.run_key(a), store.run_key(c), store.run_key(d)}) == 3
    assert store.run_key(a).startswith("none_embedded_")


@pytest.mark.parametrize("override,needle", [("policy.kk=1", "policy.kk"),
                                             ("trace.rate=abc", "trace.rate"),
                                             ("trace.rate=-3", "trace.rate: must be > 0")])
def test_bad_config_fails_before_running(tmp_path, override, needle):
    res = cli("-m", "experiments.run", override, f"results_root={tmp_path / 'r'}")
    assert res.returncode != 0
    assert needle in res.stdout + res.stderr
    assert not (tmp_path / "r").exists()  # not even an output folder


def test_bad_job_stops_whole_sweep_before_any_job(tmp_path):
    res = cli("-m", "experiments.run", "-m", "policy=none,fixed", "trace.rate=2,-8", *TINY,
              f"results_root={tmp_path}")
    assert res.returncode != 0
    assert "not started" in res.stdout + res.stderr and "trace.rate" in res.stderr
    assert complete_runs(tmp_path) == []


def test_unknown_value_lists_valid_ones(tmp_path):
    res = cli("-m", "experiments.run", "hardware=bar", f"results_root={tmp_path}")
    assert res.returncode != 0
    for option in ("a100_80g", "h100", "l40", "cpu"):
        assert option in res.stderr


def test_build_trace_rate_slos_and_load_shift():
    cfg = compose_run(["trace.num_requests=400", "trace.rate=5", "slo=mixed"])
    trace = build_trace(cfg)
    assert len(trace) == 400
    assert abs((len(trace) - 1) / (trace.arrival_s[-1] - trace.arrival_s[0]) - 5.0) < 1e-6
    counts = pd.Series(trace.slo_class).value_counts().to_dict()
    assert counts == {"normal": 160, "tight": 120, "loose": 120}
    assert np.allclose(sorted(set(trace.tpot_slo_s)), [0.03, 0.06, 0.15])
    shifted = shift_load(trace, 4.0, 0.25, 0.75)
    gaps, new = np.diff(trace.arrival_s), np.diff(shifted.arrival_s)
    assert np.allclose(new[110:290], gaps[110:290] / 4.0)
    assert np.allclose(new[:90], gaps[:90]) and np.allclose(new[310:], gaps[310:])
    assert build_trace(cfg).arrival_s.tolist() == trace.arrival_s.tolist()  # seeded


def test_adaserve_slo_relative_to_baseline():
    from experiments.build import baseline_tpot_s

    cfg = compose_run(["slo=adaserve", "trace.num_requests=100"])
    trace = build_trace(cfg)
    coding = trace.tpot_slo_s[trace.slo_class == "coding"]
    assert len(coding) == 60 and np.all(coding > 0) and np.all(np.isfinite(coding))
    ctx = float(np.mean(trace.num_prompt_tokens + trace.num_output_tokens / 2))
    assert np.allclose(coding, 1.2 * baseline_tpot_s(cfg, ctx))


def test_live_config_mapping():
    from experiments.build import build_live_config

    cfg = compose_run(["backend=live", "model=embedded_pair", "hardware=cpu", "engine=small",
                       "policy=fixed", "hardware.tensor_parallel_size=2",
                       "+backend.extra.max_requests=12"])
    live = build_live_config(cfg)
    assert live.tensor_parallel_size == 2 and live.max_requests == 12
    assert live.target_model.endswith("target") and live.draft_model.endswith("draft")
    assert live.max_model_len == 1024    # the target's window, not the simulated GPUs' 32k
    assert build_live_config(compose_run(["backend=live", "model=embedded_pair"])
                             ).draft_model is None  # policy none: no draft model
    bad = compose_run(["backend=live", "+backend.extra.not_a_field=1"])
    with pytest.raises(ValueError, match="not_a_field"):
        build_live_config(bad)
    ngram = build_live_config(compose_run(["backend=live", "model=smollm2_135m_ngram",
                                           "policy=fixed"]))
    assert ngram.draft_method == "ngram" and ngram.draft_model is None and ngram.speculative
    plain = build_live_config(compose_run(["backend=live", "model=smollm2_135m_ngram"]))
    assert not plain.speculative  # policy none: plain vLLM, not the n-gram engine at k=0
    with pytest.raises(Exception, match="draft_method"):
        compose_run(["backend=live", "model=smollm2_135m", "model.draft_method=medusa"])


def test_live_config_smollm2_eagle():
    from experiments.build import build_live_config
    pytest.importorskip("gguf")
    from exec.smollm2 import gguf_path
    try:
        gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    live = build_live_config(compose_run(["backend=live", "model=smollm2_135m",
                                          "policy=fixed"]))
    assert live.draft_method == "eagle" and live.draft_model.endswith("smollm2_eagle")
    assert live.record_acceptance          # m(p) traces for the run's twin (experiments/twin.py)
    plain = build_live_config(compose_run(["backend=live", "model=smollm2_135m", "policy=none"]))
    assert plain.draft_model is None and not plain.record_acceptance
    assert (Path(live.target_model) / "config.json").is_file()  # the converted checkpoint
    assert live.default_prompts_path().is_file()  # held-out code prompts, not beside the target


def test_trace_caps_reach_both_twins():
    from experiments.build import build_trace
    cfg = compose_run(["trace.num_requests=50", "trace.max_prompt_tokens=128",
                       "trace.max_output_tokens=48"])
    trace = build_trace(cfg)
    assert trace.num_prompt_tokens.max() == 128 and trace.num_output_tokens.max() <= 48
    assert len(trace) == 50
    with pytest.raises(Exception, match="max_prompt_tokens"):
        compose_run(["trace.max_prompt_tokens=0"])


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
                    reason="hydra-submitit-launcher not installed")
def test_submitit_local_launcher(tmp_path):
    res = cli("-m", "experiments.run", "-m", "hydra/launcher=submitit_ci", "policy=none,fixed",
              "trace.rate=4", *TINY, f"results_root={tmp_path}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(complete_runs(tmp_path)) == 2


def test_main_job_small(tmp_path):
    from experiments.main import main

    report = main(["--out", str(tmp_path), "--rates", "2,8", "--num-requests", "20",
                   "--shift-requests", "60", "--jobs", "1", "--policies",
                   "none,fixed,batch_schedule", "--no-live"])
    assert report.is_file()
    assert len(complete_runs(tmp_path / "runs")) == 2 * 7 + 1  # none, k=1..5, batch; shift
    for name in ("latency_vs_load", "slo_vs_load", "speedup", "load_shift"):
        assert (tmp_path / "report" / f"{name}.png").is_file()
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert {"none", "fixed k=1", "fixed k=5", "batch_schedule"} <= set(summary["policy"])


def test_live_hook_reports_why_it_cannot_run():
    from experiments.main import live_available, live_overrides

    jobs = live_overrides([])
    # none, fixed k=3 and smartspec live; each twin is made from its live run (run_twins)
    assert sorted(o for j in jobs for o in j if o.startswith("backend=")) == ["backend=live"] * 3
    assert {o for j in jobs for o in j if o.startswith("policy=")} == \
        {"policy=none", "policy=fixed", "policy=smartspec"}
    assert all("model=smollm2_135m" in j for j in jobs)  # the realistic pair
    ok, why = live_available()
    head = Path(REPO / "exec" / "assets" / "smollm2_eagle" / "config.json")
    if importlib.util.find_spec("vllm") is not None and head.exists():
        assert ok, why
    else:
        assert not ok and why.startswith("live check skipped")


def test_sweep_precheck_honours_config_searchpath(tmp_path):
    """An option from a folder added with hydra.searchpath passes the sweep's pre-check."""
    extra = tmp_path / "myconf" / "slo"
    extra.mkdir(parents=True)
    text = (REPO / "conf" / "slo" / "adaserve.yaml").read_text()
    (extra / "my_mix.yaml").write_text(text.replace("name: adaserve", "name: my_mix"))
    res = cli("-m", "experiments.run", "-m", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
              "slo=my_mix", "policy=none,fixed", *TINY, f"results_root={tmp_path / 'r'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(complete_runs(tmp_path / "r")) == 2


def test_malformed_trace_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.68,100,20\n2023-11-16 18:15:47.00,abc,20\n")
    res = cli("-m", "experiments.run", f"trace.name=file:{bad}", f"results_root={tmp_path / 'r'}")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {bad}, line 3: column 'ContextTokens': non-numeric token count "
                     "'abc'  (HYDRA_FULL_ERROR=1 shows the traceback)"]


@pytest.mark.live
def test_live_run_keeps_engine_output_in_the_run_folder(tmp_path):
    pytest.importorskip("vllm")
    res = cli("-m", "experiments.run", "backend=live", "model=embedded_pair", "trace=embedded",
              "trace.num_requests=4", "policy=fixed", f"results_root={tmp_path}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = complete_runs(tmp_path)
    log = (Path(run) / "engine.log").read_text()
    assert "Initializing a V1 LLM engine" in log          # vLLM's own lines went there
    terminal = res.stdout + res.stderr
    assert "INFO" not in terminal and len(terminal.splitlines()) < 12, terminal[-2000:]
