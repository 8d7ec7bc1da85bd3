"""lm_heads: output layers for large-vocabulary language modelling, behind one contract."""

from lm_heads.base import Head, HeadOutput
from lm_heads.registry import HEADS, build_head, head_options

__all__ = ["HEADS", "Head", "HeadOutput", "build_head", "head_options"]
__version__ = "0.1.0"
