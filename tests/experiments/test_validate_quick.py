"""``python -m experiments.validate --quick`` end to end (live repeats, twins, fidelity)."""
import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm")

from exec.config import ASSETS_PAIR  # noqa: E402


@pytest.mark.live
@pytest.mark.slow
def test_validate_quick_bounds_its_errors(tmp_path_factory, tmp_path, capsys):
    from analysis.workload import workload
    from experiments.validate import main
    pair = ASSETS_PAIR
    if not (pair / "draft" / "config.json").exists():
        from exec.tiny_pair import make_tiny_pair
        pair = make_tiny_pair(tmp_path_factory.mktemp("pair"), noise=0.05)
    def run(out):
        main(["--quick", "--pair", str(pair), "--out", str(out)])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    out = tmp_path
    res = run(out)
    if not _within_noise_bounds(res):
        # One run on a loaded shared machine lands outside them (CI, once: mean TPOT 1.003
        # off with the live repeats 34 % apart); a twin that lost the plot does so on every
        # run, so a second run in a fresh folder must hold them.
        first = {k: res[k] for k in ("max_mean_tpot_err", "live_noise")}
        out = tmp_path / "again"
        res = run(out)
        assert _within_noise_bounds(res), (first, res["max_mean_tpot_err"],
                                           res["live_noise"], res["step_latency"])
    assert len(res["cells"]) == 2 and len(res["details"]) == 2 and res["repeats"] == 2
    for cell in res["details"]:
        assert cell["live"]["num_failed"] == 0 and cell["sim"]["num_failed"] == 0
        # `none` runs plain vLLM (no drafter, nothing to replay); speculative cells replay
        assert cell["acceptance"] == ("none needed (plain vLLM, no drafter)"
                                      if cell["policy"] == "none" else "replay")
        assert len(cell["live_repeats"]) == 2
        # every live repeat and the twin served the same request list
        d = out / "cells" / f"load2_{cell['policy'].replace(':', '')}"
        ref = workload(pd.read_parquet(d / "live_r0" / "requests.parquet"))
        for other in ("live_r1", "sim"):
            assert ref.equals(workload(pd.read_parquet(d / other / "requests.parquet"))), other
    fixed = next(c for c in res["details"] if c["policy"] == "fixed:3")
    assert fixed["acceptance_replay"]["num_verifies"] > 10
    assert fixed["acceptance_replay"]["agreement"] >= 0.95    # exact m(p) of the draft model
    assert fixed["k_distribution"]["live"][3] > 0.5           # it really verified k = 3
    assert res["step_latency"]["draft"]["num_steps"] > 10
    assert res["ranking_tau_min"] == 1.0     # none (5-6 ms) beats fixed k=3 (9-11 ms) in both
    assert res["decision_replay_identical"] is True
    # one load: no cell has another on its engine to be calibrated on, so the twins run on
    # the profile as measured, and say so
    assert all(c["twin_calibration"]["source"].startswith("none") for c in res["details"])
    assert res["profile_only"]["max_mean_tpot_err"] == res["max_mean_tpot_err"]
    assert all(np.isfinite(v) for v in res["live_noise"].values())
    # the machine probe read before and after every live repeat, and compared with its level
    for cell in res["details"]:
        probes = cell["machine_probe_ms"]
        assert len(probes) == 2 and all(len(p) == 2 and min(p) > 0 for p in probes), probes
    assert res["machine_probe"]["num_repeats"] == 4
    assert 0 < res["machine_probe"]["min_ms"] <= res["machine_probe"]["max_ms"]
    table = (out / "validate_table.md").read_text()
    assert table.startswith("| load") and "[" in table     # live means with their ranges
    # --resume with the same arguments keeps every finished live repeat and its replay input
    runs = sorted(out.glob("cells/*/live_r*/requests.parquet"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    main(["--quick", "--pair", str(pair), "--out", str(out), "--resume"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p.stat().st_mtime_ns for p in runs] == stamps          # nothing ran again
    assert again["max_mean_tpot_err"] == res["max_mean_tpot_err"]
    assert again["decision_replay_identical"] == res["decision_replay_identical"]
    with pytest.raises(SystemExit, match="other arguments.*seed"):
        main(["--quick", "--pair", str(pair), "--out", str(out), "--resume",
              "--seed", "1"])


def _within_noise_bounds(res: dict) -> bool:
    """Bounds, not goals (goals: README): a shared 2-core CI machine varies 10-20 % between
    repeats of these 8-request cells; a twin that lost the plot (wrong limits, wrong
    acceptance, a twin failing requests) lands far outside them.
    The toy pair's plain-vLLM step is ~5 ms of framework overhead, and the profile taken at
    the start of the run drifts from the live repeats minutes later: its twin read 0.38 to
    0.71 off the live mean TPOT on these 2-core machines (0.52 with the repeats agreeing
    within 7 %), so 0.5 failed on ordinary days. A twin that lost the plot (wrong limits
    or acceptance, failed requests) is off by 1 or more; or within twice the spread the
    live repeats themselves showed in this run."""
    return (res["max_mean_tpot_err"] < max(0.75, 2 * res["live_noise"]["mean_tpot"])
            and res["step_latency"]["target"]["median"] < 0.5)
