"""experiments/calibrate.py: a committed profile scaled to this machine's speed by a probe."""
import numpy as np
import pytest

from experiments.calibrate import scale_profile, speed_ratios
from profiles import PROFILES_DIR, load_profile

COMMITTED = PROFILES_DIR / "cpu-2core_smollm2_135m.csv"


def test_ratios_follow_the_probe_speed_and_scaling_applies_them():
    table = load_profile(COMMITTED)
    base, counts = speed_ratios(table, table)
    # the fit reproduces its own rows: their median measured/predicted ratio is about 1
    assert set(base) == {"target", "draft", "draft_sync"}
    assert all(0.9 < v < 1.1 for v in base.values())
    assert counts == table.groupby("role").size().to_dict()
    # a probe on a machine 1.3x slower for the target, 0.8x for the draft reads as such
    slower = scale_profile(table, {"target": 1.3, "draft": 0.8, "draft_sync": 0.8})
    ratios, _ = speed_ratios(table, slower)
    assert ratios["target"] == pytest.approx(1.3 * base["target"], rel=1e-9)
    assert ratios["draft"] == pytest.approx(0.8 * base["draft"], rel=1e-9)
    # scaling touches latencies of each role only, and says so in the source column
    t = table["role"] == "target"
    assert np.allclose(slower.loc[t, "latency_s"], 1.3 * table.loc[t, "latency_s"])
    assert slower.loc[~t, "source"].str.endswith("x0.800 (calibrated)").all()
    cols = ["role", "phase", "num_seqs", "num_tokens", "sum_context_tokens"]
    assert slower[cols].equals(table[cols])


def test_a_probe_without_a_role_of_the_profile_is_refused():
    table = load_profile(COMMITTED)
    with pytest.raises(ValueError, match=r"no \['draft', 'draft_sync'\] passes.*--reprofile"):
        speed_ratios(table, table[table.role == "target"])


@pytest.mark.live
def test_calibrated_profiles_of_the_toy_pair(tmp_path):
    pytest.importorskip("vllm")
    from exec.pairs import pair_config, sim_names
    from experiments.calibrate import calibrated_profiles
    from sim.models.fitted_cost import load_fitted_cost_model

    committed = PROFILES_DIR / "cpu-2core_embedded.csv"
    spec, plain = calibrated_profiles(pair_config("embedded"), committed, tmp_path,
                                      hardware="cpu-2core", model_names=sim_names("embedded"),
                                      grid=((1, 2), (16,), 8, (0, 2)))
    assert plain is not None and set(spec.ratio_by_role) == {"target", "draft", "draft_sync"}
    for cal in (spec, plain):
        assert all(0.2 < r < 5 for r in cal.ratio_by_role.values()), cal
        assert all(n >= 8 for n in cal.num_probe_passes_by_role.values()), cal
        scaled = load_profile(cal.scaled)
        assert len(scaled) == len(load_profile(cal.committed))
        load_fitted_cost_model(cal.scaled)          # a valid profile the twins can fit
