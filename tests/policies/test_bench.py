"""``python -m policies.bench``'s last line: its keys, and the per-pass figures for exactly
the policies that offer a compiled drafting rule."""
import json

from policies import bench


def test_bench_json(capsys):
    out = bench.main(["--policies", "fixed,threshold,slo_goodput", "--batches", "1,64",
                      "--steps", "3", "--warmup", "2"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == out
    assert set(out["us_per_step"]) == {"fixed", "threshold", "slo_goodput"}
    assert all(set(v) == {"1", "64"} and min(v.values()) > 0
               for v in out["us_per_step"].values())
    # fixed has no drafting hook: no rule, no second figure
    assert set(out["us_per_step_hook_per_pass"]) == {"slo_goodput", "threshold"}
    assert out["worst_policy_at_64"] in out["us_per_step"] and "worst_us_at_256" not in out
    assert bench.has_compiled_rule("threshold") and not bench.has_compiled_rule("fixed")
