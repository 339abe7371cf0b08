"""One typed schema per registered policy, generated from its ``__init__`` signature.

Generating keeps configs and classes in step: a new parameter on a policy class becomes a
typed, overridable config key (``policy.k=4``) without editing conf/. A parameter with no
annotation takes the type of its default; one whose type OmegaConf cannot hold becomes Any.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from conf.schema import PolicyConf

_PRIMITIVE = (int, float, bool, str)


def _config_type(hint, default) -> Any:
    """A type OmegaConf can enforce, or Any."""
    if hint is inspect.Parameter.empty or hint is None:
        if default is None or default is inspect.Parameter.empty:
            return Any
        if isinstance(default, _PRIMITIVE):
            return type(default)
        return Any
    if hint in _PRIMITIVE:
        return hint
    args = typing.get_args(hint)
    # ``X | None`` / Optional[X] with a primitive X
    if len(args) == 2 and type(None) in args:
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in _PRIMITIVE:
            return inner | None
    return Any


def _config_default(value):
    """Dataclass-safe default: tuples become (nested) lists behind a default_factory."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    if isinstance(value, (tuple, list, dict)):
        frozen = plain(value) if not isinstance(value, dict) else dict(value)
        return dataclasses.field(default_factory=lambda: plain(frozen))
    return value


def policy_schema(name: str, cls: type) -> type:
    """Dataclass ``<Name>PolicyConf(PolicyConf)`` with ``name`` fixed to ``name``."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    fields = [("name", str, dataclasses.field(default=name))]
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        ctype = _config_type(hints.get(pname, param.annotation), param.default)
        if param.default is inspect.Parameter.empty:
            fields.append((pname, ctype, dataclasses.field(default="???")))
        else:
            fields.append((pname, ctype, _config_default(param.default)))
    cname = "".join(p.capitalize() for p in name.split("_")) + "PolicyConf"
    return dataclasses.make_dataclass(cname, fields, bases=(PolicyConf,))


def policy_params(node) -> dict:
    """Keyword arguments for ``make_policy`` from a composed policy node (all but ``name``)."""
    from omegaconf import OmegaConf
    plain = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else node
    return {k: v for k, v in plain.items() if k != "name"}
