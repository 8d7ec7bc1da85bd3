"""lm_heads: output layers for large-vocabulary language modelling, behind one contract."""

import sys
from typing import Any

from lm_heads.adaptive_input import AdaptiveInput
from lm_heads.base import Head, HeadOutput
from lm_heads.heads import MODULES as _HEAD_MODULES
from lm_heads.heads import (
    AdaptiveSoftmaxHead,
    ClassBasedSoftmaxHead,
    CosineSoftmaxHead,
    FullSoftmaxHead,
    HierarchicalSoftmaxHead,
    HypersphericalPrototypeHead,
    ImportanceSamplingHead,
    NCEHead,
    RBFSoftmaxHead,
    SphericalSoftmaxHead,
    TaylorSoftmaxHead,
    TreeSoftmaxHead,
)
from lm_heads.registry import HEADS, HeadSpec, build_head, head_options
from lm_heads.tying import tie_weights

__all__ = [
    "HEADS",
    "AdaptiveInput",
    "AdaptiveSoftmaxHead",
    "ClassBasedSoftmaxHead",
    "CosineSoftmaxHead",
    "FullSoftmaxHead",
    "Head",
    "HeadOutput",
    "HeadSpec",
    "HierarchicalSoftmaxHead",
    "HypersphericalPrototypeHead",
    "ImportanceSamplingHead",
    "LMHeadMixin",
    "NCEHead",
    "Perplexity",
    "RBFSoftmaxHead",
    "SphericalSoftmaxHead",
    "TaylorSoftmaxHead",
    "TreeSoftmaxHead",
    "build_head",
    "head_options",
    "tie_weights",
]

# The head modules lived at lm_heads.<name> before 0.4 (lm_heads.adaptive, ...): those names are
# the same module objects as lm_heads.heads.<name>, so old imports, pickles and patches still work.
for _name in _HEAD_MODULES:
    globals()[_name] = sys.modules.setdefault(
        f"{__name__}.{_name}", sys.modules[f"lm_heads.heads.{_name}"]
    )
__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    # The Lightning side is imported on first use, so `import lm_heads` (the heads alone) stays
    # light and never needs Lightning or torchmetrics.
    if name == "LMHeadMixin":
        from lm_heads.mixin import LMHeadMixin

        return LMHeadMixin
    if name == "Perplexity":
        from lm_heads.metrics import Perplexity

        return Perplexity
    raise AttributeError(f"module 'lm_heads' has no attribute {name!r}")
