r"""Class-based softmax: words in frequency-binned classes, a softmax over classes, then within.

References:
    - Goodman (2001), "Classes for fast maximum entropy training".
    - Mikolov, Kombrink, Burget, Černocký, Khudanpur (2011), "Extensions of recurrent neural
      network language model" (classes by frequency binning: each class holds about 1/C of the
      unigram mass).

.. math::

    p(w \mid h) = p(\mathrm{class}(w) \mid h)\; p(w \mid \mathrm{class}(w), h)

Words sorted by frequency are cut into ``C`` contiguous classes of about equal unigram mass
(:func:`~lm_heads.counts.equal_mass_bins`; default ``C = round(√V)``), so a token costs
``O(d (C + |class|))``. This is the depth-2 frequency-binned tree of
:mod:`lm_heads.heads.hierarchical` (``binned_tree(counts, C, max_depth=2)``) and shares all its
code: the root's children are the classes, each class node's children its words. A class
holding a single (very frequent) word is that word's leaf directly under the root, which gives
the same distribution (``p(w | class) = 1``) without a one-child softmax.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``; log_prob: ``[..., V]``
    - weight: ``[E, d]``, bias: ``[E]`` with ``E = V + (#classes of 2+ words)``: one row per class
      and one per word, all in one matrix

DDP: one ``weight``/``bias`` pair for every class and word, so every parameter gets a gradient on
every step, whatever the targets. ``output_embeddings`` is ``None`` (a word's row scores it only
within its class).
"""

from __future__ import annotations

import math

from torch import Tensor

from lm_heads._check import check_int
from lm_heads.counts import as_counts
from lm_heads.heads.hierarchical import TreeSoftmaxHead
from lm_heads.heads.tree import binned_tree

__all__ = ["ClassBasedSoftmaxHead"]


class ClassBasedSoftmaxHead(TreeSoftmaxHead):
    """Two-level softmax over ``num_classes`` equal-mass frequency classes (see module docstring).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: corpus frequency of each word id (any id order); required.
        ignore_index: target value that is ignored.
        num_classes: ``C`` in ``[1, V]``; default ``round(√V)``.
    """

    uses_counts = True

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | None = None,
        ignore_index: int = -100,
        num_classes: int | None = None,
    ) -> None:
        counts = as_counts(counts, vocab_size, "class")
        if num_classes is None:
            num_classes = max(1, round(math.sqrt(vocab_size)))
        num_classes = check_int("num_classes", num_classes, hint="or None for round(sqrt(V))")
        if not 1 <= num_classes <= vocab_size:
            raise ValueError(
                f"num_classes must lie in [1, {vocab_size}] (vocab_size), got {num_classes}; "
                "leave it None for round(sqrt(V))"
            )
        tree = binned_tree(counts, num_classes, max_depth=2)
        super().__init__(in_features, vocab_size, tree=tree, ignore_index=ignore_index)
        self.num_classes = num_classes

    @property
    def classes_built(self) -> int:
        """Classes actually made: fewer than ``num_classes`` when frequent words hold more than
        ``1/C`` of the mass each (each fills a class alone: on WikiText-2, 200 asked give 108)."""
        return self.node_width.numel() - 1  # every node but the root is a class

    def extra_repr(self) -> str:
        built = self.classes_built
        asked = f" ({built} built: frequent words fill classes)" if built < self.num_classes else ""
        return (
            f"in_features={self.in_features}, vocab_size={self.vocab_size}, "
            f"num_classes={self.num_classes}{asked}, largest class={int(self.node_width[1:].max())}"
        )
