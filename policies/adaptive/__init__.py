"""Adaptive speculation policies. Importing this package registers every one of them:
smartspec, adaspec, threshold, adaserve, vllm_dynamic, vllm_adaptive_verify, oracle,
oracle_fixed, slo_goodput, slo_goodput_tree (see each class's docstring for the paper and
equations)."""
from policies.adaptive import (adaserve, adaspec, oracle, slo_goodput,  # noqa: F401
                               slo_goodput_tree, smartspec, threshold, vllm_profiled)
from policies.adaptive.tree_selection import TreeSelection, select_tree_nodes

__all__ = ["TreeSelection", "select_tree_nodes"]
