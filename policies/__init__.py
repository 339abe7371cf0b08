"""Speculation policies: one interface (interface.py), a registry (registry.py)."""
from policies.interface import (CostModel, Decision, DraftState, Feedback, Observation,
                                Policy)
from policies.registry import (known_policies, make_policy, policies_of_kind, policy_class,
                               register)

__all__ = ["CostModel", "Decision", "DraftState", "Feedback", "Observation", "Policy",
           "known_policies", "make_policy", "policies_of_kind", "policy_class", "register"]
