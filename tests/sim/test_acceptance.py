import numpy as np
import pytest

from policies import make_policy
from sim import simulate_with
from sim.models.acceptance import ParametricAcceptance, make_acceptance_model
from sim.models.acceptance_replay import AcceptanceTraces, load_acceptance_traces
from sim.core.config import AcceptanceConfig
from sim.models.cost import ConstantCostModel
from tests.sim.helpers import config
from traces.schema import Trace


def test_parametric_match_lengths_per_dataset_and_decay():
    cfg = AcceptanceConfig(default=(9.0, 1.0), per_dataset=(("hard", 1.0, 9.0),),
                           position_decay=0.9)
    model = ParametricAcceptance(cfg, k_max=6, seed=3)
    tags = np.array(["easy"] * 2000 + ["hard"] * 2000, dtype=object)
    trace = Trace.from_columns(np.zeros(4000), np.ones(4000), np.ones(4000), dataset=tags)
    model.prepare(trace)
    assert model.rate[:2000].mean() == pytest.approx(0.9, abs=0.02)
    assert model.rate[2000:].mean() == pytest.approx(0.1, abs=0.02)
    rows = np.arange(4000)
    draw = model.draw(rows, np.zeros(4000, np.int64))
    m = draw.match_len
    assert m.min() >= 0 and m.max() <= 6
    assert m[:2000].mean() > 2.5 > 0.2 > m[2000:].mean()
    # position 0 is accepted with probability a: mean over requests ~ E[a]
    assert (m[:2000] > 0).mean() == pytest.approx(0.9, abs=0.03)
    # confidences separate accepted from rejected positions
    acc_pos = np.arange(6)[None, :] < m[:, None]
    rej_pos = np.arange(6)[None, :] == m[:, None]
    assert draw.confidences[acc_pos].mean() > 0.75 > 0.4 > draw.confidences[rej_pos].mean()


def test_parametric_is_seeded_and_validates():
    cfg = AcceptanceConfig()
    trace = Trace.from_columns(np.zeros(50), np.ones(50), np.ones(50))
    a, b, c = (ParametricAcceptance(cfg, 4, s) for s in (1, 1, 2))
    for mdl in (a, b, c):
        mdl.prepare(trace)
    rows = np.arange(50)
    assert np.array_equal(a.draw(rows, rows).match_len, b.draw(rows, rows).match_len)
    assert not np.array_equal(a.rate, c.rate)
    with pytest.raises(ValueError, match="alpha, beta > 0"):
        ParametricAcceptance(AcceptanceConfig(default=(0.0, 1.0)), 4, 0)
    with pytest.raises(KeyError, match="parametric, replay"):
        make_acceptance_model(AcceptanceConfig(kind="magic"), 4, 0)
    with pytest.raises(ValueError, match="replay_path"):
        make_acceptance_model(AcceptanceConfig(kind="replay"), 4, 0)


def _position_passes(rho, steps=60, n=1500, seed=4):
    """(steps, n, k) pass indicators of ``steps`` successive draws of the same requests."""
    model = ParametricAcceptance(AcceptanceConfig(default=(3.0, 2.0), position_decay=0.9,
                                                  step_correlation=rho), 3, seed)
    model.prepare(Trace.from_columns(np.zeros(n), np.ones(n), np.ones(n)))
    rows = np.arange(n)
    draws = [model.draw(rows, rows) for _ in range(steps)]
    return model, np.stack([d.uniforms < d.rates for d in draws]), draws


def test_step_correlation_ties_successive_steps_and_keeps_each_steps_chances():
    independent, ok0, _ = _position_passes(0.0)
    model, ok, draws = _position_passes(0.8)
    # same per-request rates (their stream is untouched), same pass chances per position
    assert np.array_equal(model.rate, independent.rate)
    expected = model.rate[:, None] * 0.9 ** np.arange(3)
    assert np.abs(ok0.mean(axis=0) - expected).mean() < 0.06
    for passes in (ok0, ok):         # (correlated steps: a request's mean is noisier)
        assert passes.mean(axis=(0, 1)) == pytest.approx(expected.mean(axis=0), abs=0.02)
        high = model.rate > np.median(model.rate)
        assert passes[:, high].mean() - passes[:, ~high].mean() == pytest.approx(
            expected[high].mean() - expected[~high].mean(), abs=0.03)
    # uniforms stay uniform
    u = np.concatenate([d.uniforms.ravel() for d in draws])
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 0.09 * u.size
    # a position's pass now follows its pass one step before, beyond the request's rate
    def lag1(passes):
        dev = passes - passes.mean(axis=0)
        return float((dev[1:] * dev[:-1]).mean() / (dev * dev).mean())
    assert abs(lag1(ok0)) < 0.03
    assert lag1(ok) > 0.3
    # match lengths too; requests not drawn keep their latents
    m = np.stack([d.match_len for d in draws]).astype(float)
    dev = m - m.mean(axis=0)
    assert (dev[1:] * dev[:-1]).mean() / (dev * dev).mean() > 0.2
    held = model._latent[5].copy()
    model.draw(np.arange(5), np.zeros(5, np.int64))
    assert np.array_equal(model._latent[5], held)


def test_step_correlation_is_seeded_validated_and_refuses_blocks():
    trace = Trace.from_columns(np.zeros(30), np.ones(30), np.ones(30))
    cfg = AcceptanceConfig(step_correlation=0.5)
    a, b = ParametricAcceptance(cfg, 4, 7), ParametricAcceptance(cfg, 4, 7)
    for mdl in (a, b):
        mdl.prepare(trace)
    rows = np.arange(30)
    for _ in range(3):
        assert np.array_equal(a.draw(rows, rows).uniforms, b.draw(rows, rows).uniforms)
    assert not a.steps_independent and ParametricAcceptance(AcceptanceConfig(), 4, 7).steps_independent
    with pytest.raises(RuntimeError, match="independent steps"):
        a.draw_block(rows, 2)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="step_correlation must be in"):
            ParametricAcceptance(AcceptanceConfig(step_correlation=bad), 4, 0)
    with pytest.raises(ValueError, match="correlated_share must be in"):
        ParametricAcceptance(AcceptanceConfig(step_correlation=0.5, correlated_share=0.0), 4, 0)


def test_correlated_share_keeps_a_slow_part_and_draws_the_rest_anew():
    """Latents l steps apart correlate share * rho^l: a slow part with a small share stays
    about as correlated 6 steps apart as 1; a fast AR(1) with share 1 decays."""
    n, steps = 3000, 8
    def passes(rho, share):
        model = ParametricAcceptance(AcceptanceConfig(default=(3.0, 2.0), step_correlation=rho,
                                                      correlated_share=share), 2, 9)
        model.prepare(Trace.from_columns(np.zeros(n), np.ones(n), np.ones(n)))
        rows = np.arange(n)
        ok = np.stack([(lambda d: d.uniforms < d.rates)(model.draw(rows, rows))
                       for _ in range(steps)])
        return ok - model.rate[None, :, None]      # deviations from each request's chance
    def corr(dev, lag):
        dev = dev[:, :, 0]
        return float((dev[lag:] * dev[:-lag]).mean() / (dev * dev).mean())
    slow, fast = passes(0.99, 0.3), passes(0.5, 1.0)
    assert 0.1 < corr(slow, 6) and corr(slow, 6) > 0.7 * corr(slow, 1)
    assert corr(fast, 1) > 0.2 and abs(corr(fast, 6)) < 0.06
    for dev in (slow, fast):        # still each position's chance
        assert dev.mean() == pytest.approx(0.0, abs=0.02)


def test_engine_runs_correlated_steps_without_epochs():
    from tests.sim.helpers import poisson_trace
    trace = poisson_trace(n=120, rate=25.0)
    runs = {rho: simulate_with(trace, make_policy("fixed", k=3), config(
        acceptance=AcceptanceConfig(step_correlation=rho), seed=1)) for rho in (0.0, 0.9)}
    assert runs[0.0].meta["num_epochs"] > 0 and runs[0.9].meta["num_epochs"] == 0
    for res in runs.values():
        assert (res.requests["status"] == "finished").all()
    # the same pass chances: mean accepted per verified draft alike; the sequence not
    acc = {rho: r.steps["num_accepted"].sum() / r.steps["num_spec_tokens"].sum()
           for rho, r in runs.items()}
    assert acc[0.9] == pytest.approx(acc[0.0], abs=0.06)
    again = simulate_with(trace, make_policy("fixed", k=3), config(
        acceptance=AcceptanceConfig(step_correlation=0.9), seed=1))
    assert again.requests.equals(runs[0.9].requests)


def _record(tmp_path, n_out=60):
    """Request 7 has m(p) = p % 4 at every output position p; request 9 only at p = 1."""
    pos = np.arange(1, n_out)
    ids = np.concatenate([np.full(pos.shape, 7), [9]])
    positions = np.concatenate([pos, [1]])
    m = np.concatenate([pos % 4, [5]])
    conf = np.full((ids.shape[0], 3), 0.5)
    path = tmp_path / "acc.parquet"
    AcceptanceTraces(ids, positions, m, conf).save(path)
    return path


def test_replay_loader_and_missing_columns(tmp_path):
    rec = load_acceptance_traces(_record(tmp_path))
    assert rec.request_ids.tolist()[0] == 7 and rec.confidences.shape[1] == 3
    import pandas as pd
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"request_id": [1], "position": [0]}).to_parquet(bad)
    with pytest.raises(ValueError, match="missing columns"):
        load_acceptance_traces(bad)


def test_replay_gives_min_k_and_recorded_match(tmp_path):
    path = _record(tmp_path)
    trace = Trace.from_columns([0.0, 0.0], [20, 20], [60, 30])
    trace = Trace(**{**trace.__dict__, "request_ids": np.array([7, 9])})
    cfg = config(acceptance=AcceptanceConfig(kind="replay", replay_path=str(path)))
    res = simulate_with(trace, make_policy("fixed", k=2), cfg,
                        cost_model=ConstantCostModel(0.01, 0.001))
    ids = np.concatenate([np.asarray(x) for x in res.steps["spec_request_ids"]])
    acc = np.concatenate([np.asarray(x) for x in res.steps["accepted"]])
    seven = acc[ids == 7]
    # replay by hand: position p starts at 1 (the prefill's token), gains min(2, p%4)+1
    p, expect = 1, []
    while p < 60:
        a = min(2, p % 4)
        expect.append(a)
        p += a + 1
    assert seven.tolist() == expect
    # request 9 has one record at p=1 (m=5): later positions shift it, then 0
    nine = acc[ids == 9]
    assert nine[:3].tolist() == [2, 2, 0]
    missing = Trace.from_columns([0.0], [20], [5])
    missing = Trace(**{**missing.__dict__, "request_ids": np.array([123])})
    with pytest.raises(ValueError, match="no records"):
        simulate_with(missing, make_policy("fixed", k=2), cfg)


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_tree_pass_table_holds_the_steps_powers_and_compiled_lookups_match(decay):
    """The TreePassTable's chances are the very floats a step's numpy rule forms (both its
    forms: min widths' broadcast exponents, tree_accepted's integer width array), and the
    compiled lookups give StepDraw's answers (and a tree's verified nodes), rows filled on
    first use, a wider table cut at the asked width, widths past the table on the numpy
    rule."""
    from types import SimpleNamespace

    from sim.fast import step_kernel
    from sim.fast.step_compiled import compiled_tree_min_widths, compiled_tree_outcome
    if step_kernel.TREE_MIN_WIDTHS_KERNEL is None:
        pytest.skip("numba is not importable")
    kernels = SimpleNamespace(tree_min_widths=step_kernel.TREE_MIN_WIDTHS_KERNEL,
                              tree_outcome=step_kernel.TREE_OUTCOME_KERNEL)
    model = ParametricAcceptance(AcceptanceConfig(position_decay=decay), k_max=6, seed=5)
    model.prepare(Trace.from_columns(np.zeros(400), np.ones(400), np.ones(400)))
    rng = np.random.default_rng(0)
    checked = 0
    for step in range(400):
        rows = np.sort(rng.choice(400, int(rng.integers(1, 24)), replace=False))
        draw = model.draw(rows, np.zeros(rows.shape[0], np.int64))
        width = int(rng.choice([1, 2, 4, 8]))
        minw = compiled_tree_min_widths(model, kernels, rows, draw, width)
        assert (minw == draw.tree_min_widths(width)).all()
        widths = rng.integers(0, 10, draw.uniforms.shape)    # 9: past the table's 8
        verified = rng.integers(0, widths.shape[1] + 1, rows.shape[0])
        cut = np.where(np.arange(widths.shape[1])[None, :] < verified[:, None], widths, 0)
        nodes, depths = compiled_tree_outcome(model, kernels, rows, draw, widths, verified)
        assert (nodes == cut.sum(axis=1)).all()
        assert (depths == draw.tree_accepted(cut)).all()
        table = model.tree_pass_table(width)
        chances = table.chances[rows]
        fail = np.broadcast_to(1.0 - draw.rates, draw.uniforms.shape)
        for w in range(1, table.max_width + 1):
            same_w = np.full(draw.uniforms.shape, w)
            assert (chances[..., w - 1] == np.broadcast_to(
                1.0 - (1.0 - draw.rates) ** same_w, same_w.shape)).all()
            assert (chances[..., w - 1] == (1.0 - fail[..., None] ** np.arange(1, w + 1))
                    [..., -1]).all()
        checked += int((minw <= width).sum())
    assert checked > 1000 and model.tree_pass_table(8).filled.sum() == 400
    with pytest.raises(RuntimeError, match="prepare"):
        ParametricAcceptance(AcceptanceConfig(), 4, 1).tree_pass_table(4)


def test_rate_oracle_needs_the_parametric_models_rates(tmp_path):
    """Replayed match lengths have no per-request rate to tell ``oracle_rate``: refused
    before the run, naming the fix."""
    trace = Trace.from_columns([0.0, 0.0], [20, 20], [60, 30])
    trace = Trace(**{**trace.__dict__, "request_ids": np.array([7, 9])})
    cfg = config(acceptance=AcceptanceConfig(kind="replay", replay_path=str(_record(tmp_path))))
    with pytest.raises(ValueError, match=r"'oracle_rate'.*acceptance.kind='replay'.*parametric"):
        simulate_with(trace, make_policy("oracle_rate"), cfg)
