"""Hydra config groups and their typed schemas.

``register_configs()`` stores the schemas in hydra's ConfigStore; the YAML option files in
this folder (policy/, trace/, model/, hardware/, engine/, slo/, backend/) pull them in via
their defaults lists. ``compose_run(overrides)`` builds one run's config without a CLI.
"""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
GROUPS = ("policy", "trace", "model", "hardware", "engine", "slo", "backend")


def options(group: str) -> list[str]:
    """The YAML option names of a config group (``policy`` -> ['adaserve', 'fixed', ...])."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def register_configs() -> None:
    """Store the run schema and one schema per policy option. Safe to call repeatedly."""
    from hydra.core.config_store import ConfigStore

    from conf.policy_schema import policy_schema
    from conf.schema import RunConf
    from policies import known_policies, policy_class

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConf)
    registered = set(known_policies())
    for name in sorted(registered | set(options("policy"))):
        if name in registered:
            node = policy_schema(name, policy_class(name))
        else:
            # A config file written ahead of its class: compose it untyped, and let
            # conf.validate say that the class is missing (listing the registered ones).
            node = {"name": name}
        cs.store(group="schema/policy", name=name, node=node)


def compose_run(overrides=(), config_name: str = "config"):
    """Compose a run config in-process (tests, experiments.main) and validate its values."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conf.validate import validate

    register_configs()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    validate(cfg)
    return cfg
