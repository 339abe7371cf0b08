"""Name -> policy class. ``make_policy("fixed", k=3)``; unknown names list the known ones."""
from __future__ import annotations

from typing import Callable

from policies.interface import Policy

_POLICIES: dict[str, type[Policy]] = {}


def register(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _POLICIES and _POLICIES[name] is not cls:
            raise ValueError(f"policy name {name!r} registered twice")
        cls.name = name
        _POLICIES[name] = cls
        return cls
    return wrap


def known_policies() -> list[str]:
    _load_builtin()
    return sorted(_POLICIES)


def policies_of_kind(kind: str) -> list[str]:
    """Registered names whose class declares ``kind`` ("static", "adaptive", "oracle")."""
    _load_builtin()
    if kind not in ("static", "adaptive", "oracle"):
        raise ValueError(f"unknown policy kind {kind!r}; kinds: static, adaptive, oracle")
    return [n for n in sorted(_POLICIES) if _POLICIES[n].kind == kind]


def shape_class(name: str) -> str:
    """"tree" when the registered policy ``name`` declares ``makes_trees`` (token trees,
    simulator only), else "chain"; names that are not registered (table labels such as
    fixed_k3) are chains."""
    _load_builtin()
    cls = _POLICIES.get(name)
    return "tree" if cls is not None and cls.makes_trees else "chain"


def policy_class(name: str) -> type[Policy]:
    _load_builtin()
    if name not in _POLICIES:
        raise KeyError(f"unknown policy {name!r}; known policies: {', '.join(sorted(_POLICIES))}")
    return _POLICIES[name]


def make_policy(name: str, **params) -> Policy:
    cls = policy_class(name)
    try:
        return cls(**params)
    except TypeError as err:
        raise TypeError(f"bad parameters for policy {name!r}: {err}") from err


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import policies.static  # noqa: F401
    try:
        import policies.adaptive  # noqa: F401  (added by the adaptive-policies work)
    except ModuleNotFoundError as err:
        if err.name != "policies.adaptive":
            raise
