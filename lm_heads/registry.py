"""Heads by name: a plain dict, and ``build_head`` that turns a name and options into a head.

A head from ``build_head`` remembers how it was made in ``head.build_spec`` (a :class:`HeadSpec`:
name, sizes, counts and every option, the defaults included, with the choices the head made
itself, such as the cutoffs of ``cutoffs="auto"``), so ``head.build_spec.build()`` makes the same
structure again without the corpus, a new measurement or today's defaults. ``HeadSpec.to_state``
/ ``from_state`` store it as tensors next to a state dict (``LMHeadMixin`` does this in every
checkpoint), in a versioned format that still reads the specs of older releases.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from lm_heads.base import Head, HeadSpec
from lm_heads.counts import as_counts
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead
from lm_heads.heads.class_based import ClassBasedSoftmaxHead
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.hierarchical import HierarchicalSoftmaxHead
from lm_heads.heads.margin import CosineSoftmaxHead, RBFSoftmaxHead
from lm_heads.heads.prototypes import HypersphericalPrototypeHead
from lm_heads.heads.sampled import ImportanceSamplingHead, NCEHead
from lm_heads.heads.spherical import SphericalSoftmaxHead, TaylorSoftmaxHead

HEADS: dict[str, type[Head]] = {
    "full": FullSoftmaxHead,
    "class": ClassBasedSoftmaxHead,
    "hierarchical": HierarchicalSoftmaxHead,
    "adaptive": AdaptiveSoftmaxHead,
    "importance": ImportanceSamplingHead,
    "nce": NCEHead,
    "spherical": SphericalSoftmaxHead,
    "taylor": TaylorSoftmaxHead,
    "cosine": CosineSoftmaxHead,
    "rbf": RBFSoftmaxHead,
    "prototypes": HypersphericalPrototypeHead,
}


def build_head(
    name: str,
    in_features: int,
    vocab_size: int,
    counts: Tensor | Sequence[float] | None = None,
    **options: Any,
) -> Head:
    """Build the head registered as ``name``; ``options`` are that head's keyword arguments.

    ``counts`` (corpus frequency per word id, any id order) is validated for every head and
    passed to those whose ``uses_counts`` is set (they build structure or proposals from it).
    """
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; valid heads: {', '.join(sorted(HEADS))}")
    cls = HEADS[name]
    accepted = _keyword_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        # Name the heads that do take an option (label_smoothing, z_loss, chunk_size, ...).
        takers = {k: [h for h, c in HEADS.items() if k in _keyword_options(c)] for k in unknown}
        hint = "".join(f"; {k} is an option of {', '.join(v)}" for k, v in takers.items() if v)
        raise TypeError(
            f"head {name!r} got unknown option(s) {unknown}; valid options: "
            f"{', '.join(sorted(accepted)) or '(none)'}{hint}"
        )
    if counts is not None:
        counts = as_counts(counts, vocab_size, name)
    if not cls.uses_counts:
        counts = None  # validated above; the head's structure does not depend on them
    extra: dict[str, Any] = {"counts": counts} if cls.uses_counts else {}
    head = cls(in_features, vocab_size, **extra, **options)
    head.build_spec = HeadSpec(name, in_features, vocab_size, counts, _built_with(head, options))
    return head


def _built_with(head: Head, options: dict[str, Any]) -> dict[str, Any]:
    """Every keyword option of ``head`` as it was built, so that a rebuild does not depend on
    the defaults of the version that rebuilds it: the options passed, the defaults, and the
    values the head chose itself (``resolved_options``; an option left ``None`` for a rule, such
    as ``num_classes=None`` for about √V, as the head's attribute of that name)."""
    built = {**_defaults(type(head)), **options}
    for key, value in built.items():
        chosen = getattr(head, key, None) if value is None else None
        if isinstance(chosen, (bool, int, float, str)):
            built[key] = chosen
    return {**built, **head.resolved_options()}


# The spec lives beside the template in base.py, which cannot import the heads by name.
HeadSpec.builder = build_head


def head_options(name: str) -> dict[str, Any]:
    """The options of head ``name`` with their defaults (for CLIs and configs)."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; valid heads: {', '.join(sorted(HEADS))}")
    return _defaults(HEADS[name])


def _defaults(cls: type[Head]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        key: param.default
        for key, param in params.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and key != "counts"
    }


def _keyword_options(cls: type[Head]) -> set[str]:
    return set(_defaults(cls))
