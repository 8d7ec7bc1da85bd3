"""lm_heads: output layers for large-vocabulary language modelling, behind one contract."""

from typing import Any

from lm_heads.adaptive_input import AdaptiveInput
from lm_heads.base import Head, HeadOutput
from lm_heads.registry import HEADS, HeadSpec, build_head, head_options
from lm_heads.tying import tie_weights

__all__ = [
    "HEADS",
    "AdaptiveInput",
    "Head",
    "HeadOutput",
    "HeadSpec",
    "LMHeadMixin",
    "Perplexity",
    "build_head",
    "head_options",
    "tie_weights",
]
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
