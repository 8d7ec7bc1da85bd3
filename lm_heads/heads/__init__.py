"""The heads, one family a module, each keeping the contract of :class:`lm_heads.base.Head`.

``lm_heads.HEADS`` names them for ``build_head``; ``tree`` and ``samplers`` are the structure
and the noise some of them are built from.
"""

from lm_heads.heads.adaptive import AdaptiveSoftmaxHead
from lm_heads.heads.class_based import ClassBasedSoftmaxHead
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.hierarchical import HierarchicalSoftmaxHead, TreeSoftmaxHead
from lm_heads.heads.margin import CosineSoftmaxHead, RBFSoftmaxHead
from lm_heads.heads.prototypes import HypersphericalPrototypeHead
from lm_heads.heads.sampled import ImportanceSamplingHead, NCEHead
from lm_heads.heads.spherical import SphericalSoftmaxHead, TaylorSoftmaxHead

MODULES = ("adaptive", "class_based", "full", "hierarchical", "linear", "margin", "prototypes",
           "sampled", "samplers", "spherical", "tree")  # fmt: skip
"""This package's modules: up to 0.3 each was ``lm_heads.<name>``, and still answers to it."""

__all__ = [
    "AdaptiveSoftmaxHead",
    "ClassBasedSoftmaxHead",
    "CosineSoftmaxHead",
    "FullSoftmaxHead",
    "HierarchicalSoftmaxHead",
    "HypersphericalPrototypeHead",
    "ImportanceSamplingHead",
    "NCEHead",
    "RBFSoftmaxHead",
    "SphericalSoftmaxHead",
    "TaylorSoftmaxHead",
    "TreeSoftmaxHead",
]
