"""Weight tying: one ``[V, d]`` Parameter for the input embedding and the head's output rows.

Press & Wolf (2017), "Using the output embedding to improve language models"; Inan et al. (2017).
Tying needs a head whose output layer *is* a ``[V, d]`` Parameter with row ``w`` for word id ``w``:
``full``, ``importance``, ``nce``, ``spherical``, ``taylor``, ``cosine`` and ``rbf``. The others
raise a clear error: ``class`` and ``hierarchical`` hold one row per tree edge in frequency order
(plus one per class or node), ``adaptive`` splits words over clusters whose rows live in
``d / div_value^i`` dims (tie it to an adaptive input embedding instead), and ``prototypes`` are
fixed, not learned.

Initialisation matters. A default ``nn.Embedding`` draws ``N(0, 1)``: as output rows that gives
logits of standard deviation ``‖h‖`` (16 for unit-variance ``h`` at ``d = 256``). Issue 9 measured
a small Transformer on WikiText-2 tied this way start at perplexity 4e8 and end at 359, against
115 untied and 115.6 tied with ``U(±1/√d)``, the ``full`` head's own initialisation. So by
default (``init="head"``) the embedding takes the head's Parameter, with the head's
initialisation; ``init="embedding"`` keeps the embedding's values (a pretrained embedding, or one
the model initialised on purpose).

Shape:
    - ``embedding.weight``: ``[V, d]`` with ``d`` the head's ``in_features``: a backbone whose
      hidden size differs projects its output to ``d`` first.
"""

from __future__ import annotations

from torch import nn

from lm_heads.base import Head
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead

__all__ = ["tie_weights"]

INITS = ("head", "embedding")


def tie_weights(embedding: nn.Embedding, head: Head, *, init: str = "head") -> str:
    """Make ``embedding.weight`` and ``head``'s output rows one Parameter.

    Args:
        embedding: the input ``nn.Embedding`` ``[V, d]``.
        head: a head with one learned output row per word id (see the module docstring).
        init: ``"head"``: the shared Parameter is the head's, initialised as the head does
            (``U(±1/√d)`` for ``full``); ``"embedding"``: it is the embedding's, values kept.

    Returns the name of the head's parameter that is shared (``"weight"``). Raises ValueError
    when the head has no such rows or the shapes differ, TypeError for a non-embedding.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(
            f"tie_weights ties an nn.Embedding, got {type(embedding).__name__}; an adaptive "
            "input embedding ties to the adaptive head by its own method"
        )
    if embedding.sparse:
        raise ValueError(
            "cannot tie a sparse nn.Embedding: the head's gradient for the shared rows is dense"
        )
    name = _output_parameter_name(head)
    param = head.get_parameter(name)
    if tuple(param.shape) != tuple(embedding.weight.shape):
        raise ValueError(
            f"cannot tie weights: {type(head).__name__} output rows are {tuple(param.shape)} but "
            f"the embedding is {tuple(embedding.weight.shape)}; the embedding must be "
            "[vocab_size, in_features]: when they differ, the backbone must project its hidden "
            "states to the embedding size"
        )
    if init == "head":
        embedding.weight = param
    else:
        owner_name, _, attr = name.rpartition(".")
        owner = head.get_submodule(owner_name) if owner_name else head
        setattr(owner, attr, embedding.weight)
    return name


def _output_parameter_name(head: Head) -> str:
    """Name of ``head``'s ``[V, d]`` Parameter whose row ``w`` is word ``w``'s output vector."""
    if isinstance(head, AdaptiveSoftmaxHead):
        raise ValueError(
            "cannot tie an nn.Embedding to the adaptive head: it has no output embedding per word "
            "in one [V, d] matrix (rows in frequency order, tail clusters in d / div_value^i "
            "dims); tie it to an adaptive input embedding (same clusters) instead, or use a head "
            "with one row per word (full, importance, nce)"
        )
    rows = head.output_embeddings()
    if rows is None:
        raise ValueError(
            f"cannot tie weights: {type(head).__name__} has no output embedding per word id "
            "(class and hierarchical score tree edges in frequency order, prototypes are fixed); "
            "use full, importance, nce, spherical, taylor, cosine or rbf"
        )
    for name, param in head.named_parameters():
        if param is rows:
            return name
    raise ValueError(
        f"cannot tie weights: {type(head).__name__}.output_embeddings() is computed, not one of "
        "its parameters, so there is no single Parameter to share with the embedding"
    )
