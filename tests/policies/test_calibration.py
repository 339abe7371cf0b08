"""ConfidenceCalibrator: learns P(accept | confidence) from chain-verification outcomes."""
import numpy as np
import pytest

from policies import make_policy
from policies.adaptive.calibration import ConfidenceCalibrator
from tests.policies.helpers import feedback, make_obs


def _chain_steps(rng, n, K, rate, conf_of):
    """Random chain steps: per position pass w.p. rate, confidence drawn by conf_of(passed)."""
    passed = rng.random((n, K)) < rate
    conf = np.where(passed, conf_of(True, (n, K)), conf_of(False, (n, K)))
    m = np.where(passed.all(axis=1), K, passed.argmin(axis=1))
    return conf, np.full(n, K), m


def test_informative_confidences_separate_and_match_bayes():
    rng = np.random.default_rng(0)
    cal = ConfidenceCalibrator(num_bins=10, decay=1.0)

    def conf_of(ok, shape):      # accepted tokens at 0.85, rejected at 0.25 (bins 8 and 2)
        return np.full(shape, 0.85 if ok else 0.25)

    for _ in range(200):
        cal.observe(*_chain_steps(rng, 16, 4, 0.7, conf_of))
    lr = cal.likelihood_ratio(np.array([0.85, 0.25, 0.55]))
    assert lr[0] > 20 and lr[1] < 0.05          # the two bins tell pass from fail
    assert lr[2] == pytest.approx(1.0)          # an unseen bin carries no evidence
    post = cal.posterior(np.array([[0.85, 0.25]]), np.array([0.7]))
    assert post[0, 0] > 0.97 and post[0, 1] < 0.1


def test_uninformative_confidences_fall_back_to_the_request_rate():
    rng = np.random.default_rng(1)
    cal = ConfidenceCalibrator(decay=1.0)

    def flat(ok, shape):         # a flat drafter (the live tiny pair): ~0.07 whatever happens
        return rng.uniform(0.06, 0.08, shape)

    for _ in range(300):
        cal.observe(*_chain_steps(rng, 16, 4, 0.8, flat))
    post = cal.posterior(np.full((3, 2), 0.07), np.array([0.3, 0.6, 0.9]))
    assert post[:, 0] == pytest.approx([0.3, 0.6, 0.9], abs=0.03)


def test_only_compared_positions_count():
    cal = ConfidenceCalibrator(num_bins=10, decay=1.0)
    conf = np.array([[0.95, 0.15, 0.95, 0.95]])
    cal.observe(conf, np.array([4]), np.array([1]))     # pos 0 accepted, pos 1 rejected
    assert cal.accepted.sum() == 1 and cal.accepted[9] == 1
    assert cal.rejected.sum() == 1 and cal.rejected[1] == 1   # pos 2, 3 never compared
    cal.observe(conf, np.array([1]), np.array([1]))     # verified 1, accepted it: no rejection
    assert cal.rejected.sum() == 1 and cal.accepted.sum() == 2
    nan_conf = np.array([[np.nan, np.nan]])
    cal.observe(nan_conf, np.array([2]), np.array([0]))  # no confidences recorded: ignored
    assert cal.rejected.sum() == 1


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="num_bins"):
        ConfidenceCalibrator(num_bins=0)
    with pytest.raises(ValueError, match="decay"):
        ConfidenceCalibrator(decay=1.5)


def test_slo_goodput_learns_calibration_from_feedback_and_stops_on_low_confidence():
    """After steps where 0.3-confidence drafts always failed, a 0.3 draft stops drafting and
    is not verified, while a 0.9 draft goes on."""
    p = make_policy("slo_goodput", prior_rate=0.6, chain_only=True)
    K = 4
    for step in range(60):
        obs = make_obs(4)
        p.decide(obs)
        conf = np.full((4, obs.k_max), np.nan)
        conf[:, :K] = 0.9
        conf[:2, 2] = 0.3                   # requests 0, 1: third draft weak -> rejected
        accepted = np.array([2, 2, K, K])
        p.observe(feedback(obs, np.full(4, K), accepted, conf=conf))
    lr = p.calibrator.likelihood_ratio(np.array([0.9, 0.3]))
    assert lr[0] > 1 > lr[1]
    obs = make_obs(4)
    p.decide(obs)
    assert p.planned_k is not None
    from policies.interface import DraftState
    conf = np.full((4, obs.k_max), np.nan)
    conf[:, :3] = 0.9
    conf[0, 2] = 0.3
    d = p.decide(obs)
    state = DraftState(obs=obs, decision=d, num_drafted=np.full(4, 3), confidences=conf,
                       draft_time_s=1e-3)
    go_on = p.continue_drafting(state)
    assert not go_on[0] and go_on[1:].all()
    verified = p.select_verify(state)
    assert verified[0] <= 2 and (verified[1:] >= 3).all()


def test_raw_confidence_until_enough_outcomes():
    cal = ConfidenceCalibrator(min_observations=10, decay=1.0)
    conf = np.array([[0.9, 0.2, np.nan]])
    assert cal.posterior(conf, np.array([0.6]))[0] == pytest.approx([0.9, 0.2, 0.6])
    for _ in range(10):
        cal.observe(np.array([[0.9, 0.9]]), np.array([2]), np.array([2]))
    assert cal.num_observations == 20
    assert cal.posterior(conf, np.array([0.6]))[0, 0] != pytest.approx(0.9)
