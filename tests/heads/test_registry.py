"""The registry: building heads by name, their options, and the spec that rebuilds them."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

from lm_heads import HEADS, HeadSpec, build_head, head_options


def test_counts_reach_exactly_the_heads_that_use_them() -> None:
    for name, cls in HEADS.items():
        takes = "counts" in inspect.signature(cls.__init__).parameters
        if cls.uses_counts:
            assert takes, f"{name} uses counts but its constructor takes none"
        elif name != "full":  # full still accepts and ignores counts (see its docstring)
            assert not takes, f"{name} takes counts but does not set uses_counts"


@pytest.mark.parametrize("name", ["class", "hierarchical", "adaptive", "importance", "full"])
def test_counts_must_be_one_dimensional(name) -> None:
    with pytest.raises(ValueError, match=r"counts must be 1-D.*\(10, 10\)"):
        build_head(name, 8, 100, counts=torch.ones(10, 10))


def test_numpy_integers_accepted_for_sizes_and_bools_refused() -> None:
    head = build_head(
        "class", np.int64(8), np.int64(100), counts=torch.ones(100), num_classes=np.int64(7)
    )
    assert head.in_features == 8 and head.num_classes == 7 and type(head.vocab_size) is int
    with pytest.raises(ValueError, match="in_features must be an int ≥ 1, got True"):
        build_head("full", True, 100)
    with pytest.raises(ValueError, match="num_samples must be an int ≥ 1"):
        build_head("nce", 8, 100, counts=torch.ones(100), num_samples=2.5)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("class", {"num_classes": np.int64(7)}),
        ("full", {"chunk_size": np.int32(16), "label_smoothing": np.float64(0.1)}),
        ("adaptive", {"cutoffs": np.array([10, 50])}),
        ("adaptive", {"cutoffs": torch.tensor([10, 50])}),
        ("hierarchical", {"tree": "kary", "branching": np.int16(4)}),
        ("nce", {"num_samples": np.int64(8), "seed": np.int64(3)}),
    ],
)
def test_numpy_and_tensor_options_are_stored_as_plain_data(name, options) -> None:
    head = build_head(name, np.int64(16), 100, counts=torch.arange(100, 0, -1), **options)
    assert head.build_spec is not None
    restored = HeadSpec.from_state(head.build_spec.to_state())
    assert restored.options == head.build_spec.options
    rebuilt = restored.build()
    rebuilt.load_state_dict(head.state_dict())
    hidden = torch.randn(5, 16)
    torch.testing.assert_close(rebuilt.log_prob(hidden), head.log_prob(hidden))


def test_a_numpy_chunk_size_is_accepted_as_an_int() -> None:
    head = build_head("full", 8, 100, chunk_size=np.int64(16))
    assert head.chunk_size == 16 and type(head.chunk_size) is int


# Another value for every option of every head. Loading a state dict saved with it into a head
# built with the defaults must either give the same distribution or raise: never another
# distribution in silence. A new head or option must be added here.
OTHER_VALUES: dict[str, dict[str, Any]] = {
    "full": {"bias": False, "chunk_size": 8, "label_smoothing": 0.1, "z_loss": 0.1},
    "class": {"num_classes": 5},
    "hierarchical": {"tree": "huffman", "branching": 3},
    "adaptive": {
        "cutoffs": [10, 40],
        "div_value": 2.0,
        "head_bias": True,
        "tail_bias": True,
        "bias_init": "unigram",
        "tail_dropout": 0.2,
        "tail_projection": False,
        "batch_tokens": 64,
    },
    "importance": {
        "num_samples": 8,
        "proposal": "uniform",
        "alpha": 0.5,
        "correct_target": True,
        "seed": 3,
        "bias": False,
        "chunk_size": 8,
    },
    "nce": {
        "num_samples": 8,
        "proposal": "uniform",
        "alpha": 0.5,
        "negative_sampling": True,
        "remove_accidental_hits": True,
        "seed": 3,
        "bias": False,
        "chunk_size": 8,
    },
    "spherical": {"gram": False, "eps": 0.5},
    "taylor": {"gram": False},
    "cosine": {
        "scale": 4.0,
        "margin": 0.3,
        "learn_scale": True,
        "label_smoothing": 0.1,
        "z_loss": 0.1,
    },
    "rbf": {"scale": 4.0, "gamma": 2.0, "label_smoothing": 0.1, "z_loss": 0.1},
    "prototypes": {
        "proto_dim": 4,
        "scale": 4.0,
        "ce_weight": 0.5,
        "proto_steps": 10,
        "seed": 3,
        "label_smoothing": 0.1,
        "z_loss": 0.1,
    },
}
NOT_FUNCTION = {"ignore_index", "cost_model"}  # padding id; a timing model for "auto" cutoffs


def test_every_option_has_another_value_to_try() -> None:
    for name in HEADS:
        options = set(head_options(name)) - NOT_FUNCTION
        assert options == set(OTHER_VALUES[name]), f"{name}: update OTHER_VALUES"


@pytest.mark.parametrize(
    ("name", "option"),
    [(name, option) for name, values in OTHER_VALUES.items() for option in values],
)
def test_a_state_dict_of_other_options_loads_the_same_distribution_or_raises(name, option) -> None:
    d, vocab = 8, 60
    counts = torch.arange(vocab, 0, -1) ** 2
    torch.manual_seed(0)
    saved = build_head(name, d, vocab, counts=counts, **{option: OTHER_VALUES[name][option]})
    with torch.no_grad():
        for param in saved.parameters():
            param.add_(0.3 * torch.randn_like(param))
    fresh = build_head(name, d, vocab, counts=counts)
    try:
        fresh.load_state_dict(saved.state_dict())
    except (RuntimeError, ValueError):
        return  # differs loudly
    hidden = torch.randn(6, d)
    torch.testing.assert_close(
        fresh.eval().log_prob(hidden), saved.eval().log_prob(hidden), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("rbf", {"gamma": 2.0}, r"gamma=2\.0 \(this head: 8\.0\)"),
        ("rbf", {"scale": 4.0}, r"scale=4\.0 \(this head: 16\.0\)"),
        ("spherical", {"eps": 0.5}, r"eps=0.5 \(this head: 0.01\)"),
    ],
)
def test_options_that_change_the_distribution_are_checked_before_loading(
    name, options, match
) -> None:
    saved = build_head(name, 8, 60, **options)
    fresh = build_head(name, 8, 60)
    before = {key: value.clone() for key, value in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(saved.state_dict())
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    # The same options load, and in float64 too (the stored options are not cast).
    build_head(name, 8, 60, **options).double().load_state_dict(saved.double().state_dict())


def test_a_state_dict_from_before_the_options_were_stored_still_loads() -> None:
    saved = build_head("rbf", 8, 60).state_dict()
    del saved["_extra_state"]
    build_head("rbf", 8, 60).load_state_dict(saved)
