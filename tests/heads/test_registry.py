"""The registry: building heads by name, their options, and the spec that rebuilds them."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from lm_heads import HEADS, HeadSpec, build_head


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
