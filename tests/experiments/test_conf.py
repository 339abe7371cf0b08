"""Config groups: typed schemas reject bad keys/types while composing, values are validated,
unknown options list the valid ones, every group option composes."""
import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ValidationError

from conf import GROUPS, compose_run, options
from conf.validate import ConfigError
from policies import known_policies


def test_default_config_composes_typed():
    cfg = compose_run([])
    assert cfg.policy.name == "none"
    assert cfg.trace.name == "embedded" and cfg.hardware.name == "a100-80g"
    assert cfg.model.target == "llama-2-7b" and cfg.model.draft == "draft-68m"


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group):
    for option in options(group):
        if group == "policy" and option not in known_policies():
            continue  # a config file written ahead of its class; see the next test
        cfg = compose_run([f"{group}={option}"])
        assert cfg[group].name


def test_required_option_files_exist():
    want = {"policy": {"none", "fixed", "batch_schedule", "smartspec", "adaspec", "threshold",
                       "adaserve", "vllm_dynamic", "vllm_adaptive_verify", "oracle",
                       "slo_goodput"},
            "trace": {"embedded", "azure_conv", "azure_code", "mooncake_conv"},
            "model": {"llama2_7b_68m", "vicuna7b_68m", "vicuna33b_160m", "llama70b_1b",
                      "llama31_70b_1b", "qwen25_32b_05b", "embedded_pair", "smollm2_135m",
                      "smollm2_135m_ngram"},
            "hardware": {"a100_80g", "h100", "l40", "cpu"},
            "slo": {"none", "mixed", "adaserve"}, "backend": {"sim", "live"}}
    for group, names in want.items():
        assert names <= set(options(group)), (group, names - set(options(group)))


def test_policy_params_are_typed_from_the_class():
    cfg = compose_run(["policy=fixed", "policy.k=5"])
    assert cfg.policy.k == 5
    with pytest.raises(ConfigCompositionException) as err:
        compose_run(["policy=fixed", "policy.k=abc"])
    assert isinstance(err.value.__cause__, ValidationError)
    assert "policy.k" in str(err.value.__cause__)


@pytest.mark.parametrize("override", ["policy.kk=1", "trace.rte=3", "engine.max_seqs=4",
                                      "model.acceptance.alfa=2"])
def test_wrong_key_fails_while_composing(override):
    with pytest.raises(ConfigCompositionException) as err:
        compose_run([override])
    assert override.split("=")[0] in str(err.value)


@pytest.mark.parametrize("override", ["trace.rate=fast", "engine.max_num_seqs=1.5",
                                      "engine.chunked_prefill=maybe", "seed=x"])
def test_wrong_type_fails_while_composing(override):
    with pytest.raises(ConfigCompositionException):
        compose_run([override])


@pytest.mark.parametrize("group,value", [("policy", "foo"), ("hardware", "bar"),
                                         ("trace", "nope"), ("model", "gpt5")])
def test_unknown_option_lists_valid_ones(group, value):
    with pytest.raises(MissingConfigException) as err:
        compose_run([f"{group}={value}"])
    text = str(err.value)
    assert f"Available options in '{group}'" in text
    for option in options(group):
        assert option in text


@pytest.mark.parametrize("override,needle", [
    ("trace.rate=-1", "trace.rate"),
    ("trace.rate=0", "trace.rate"),
    ("trace.num_requests=0", "trace.num_requests"),
    ("slo.classes.0.proportion=0.5", "sum to 1"),
    ("slo.classes.0.tpot_slo_ms=-5", "tpot_slo_ms"),
    ("engine.gpu_memory_utilization=1.5", "gpu_memory_utilization"),
    ("model.acceptance.alpha=0", "alpha"),
    ("model.acceptance.step_correlation=1.0", "step_correlation: must be in [0, 1)"),
    ("model.acceptance.confidence_reject_mean=1.0", "confidence_reject_mean: must be in (0, 1)"),
    ("hardware.tensor_parallel_size=0", "tensor_parallel_size"),
    ("trace.name=nosuchtrace", "unknown trace"),
    ("model.target=gpt-9", "unknown sim model"),
    ("hardware.name=tpu", "unknown sim hardware"),
    ("backend.name=cloud", "backend.name"),
])
def test_bad_values_fail_before_running(override, needle):
    with pytest.raises(ConfigError) as err:
        compose_run([override])
    assert needle in str(err.value)


def test_policy_constructor_checks_values():
    with pytest.raises(ConfigError) as err:
        compose_run(["policy=fixed", "policy.k=-1"])
    assert "k must be >= 0" in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as err:
        compose_run(["trace.rate=-1", "engine.k_max=-2"])
    assert "trace.rate" in str(err.value) and "engine.k_max" in str(err.value)


def test_unregistered_policy_names_registered_ones():
    import conf.validate as v

    cfg = compose_run(["policy=fixed"])
    cfg.policy.name = "not_a_policy"  # e.g. a config file whose class is not written yet
    with pytest.raises(ConfigError) as err:
        v.validate(cfg)
    assert "no registered class" in str(err.value)
    for name in known_policies():
        assert name in str(err.value)


def test_none_simulates_an_engine_without_a_drafter():
    """As live (build_live_config), policy none gets no draft model in the simulator: no
    draft passes and the draft's memory for KV; any other policy keeps the model's draft."""
    from experiments.build import build_sim_config
    from sim.core.kv_cache import derive_num_kv_blocks

    spec = build_sim_config(compose_run(["policy=fixed", "model=llama2_7b_68m"]))
    plain = build_sim_config(compose_run(["policy=none", "model=llama2_7b_68m"]))
    assert spec.draft and plain.draft == ""
    assert derive_num_kv_blocks(plain) > derive_num_kv_blocks(spec)


def test_realistic_pair_carries_its_fitted_drift_into_the_simulator():
    """conf/model/smollm2_135m.yaml's acceptance (fitted by sim.tools.fit_acceptance on the
    head's m(p)) reaches the simulator's config, drift included, and runs."""
    from experiments.build import build_sim_config
    from policies import make_policy
    from sim import simulate
    from traces.embedded import embedded_trace
    cfg = build_sim_config(compose_run(["model=smollm2_135m", "hardware=cpu"]))
    acc = cfg.acceptance
    assert acc.kind == "parametric" and 0 < acc.step_correlation < 1
    assert 0 < acc.correlated_share <= 1
    assert acc.confidence_reject_mean < acc.confidence_accept_mean < 0.85  # fitted, not default
    res = simulate(embedded_trace(num_requests=20, seed=0), make_policy("fixed", k=3), cfg)
    assert res.meta["num_epochs"] == 0 and (res.requests["status"] == "finished").any()
