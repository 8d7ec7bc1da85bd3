"""A head's stored structure (``HeadSpec``) and options: what a checkpoint restores, and refuses.

Issue 23, items 2–4: a checkpoint of another head type, checkpoints saved by older releases (a
spec without format version, whose options held only those passed), float32 and tensor options.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

import lm_heads.heads.adaptive
from lm_heads import build_head, head_options
from lm_heads.base import RELEASE_DEFAULTS, SPEC_FORMAT, Head, HeadSpec
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.spherical import TaylorSoftmaxHead
from lm_heads.mixin import STRUCTURE_KEY, LMHeadMixin

VOCAB, DIM = 60, 32
COUNTS = (600.0 / torch.arange(1, VOCAB + 1)).round()[
    torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))
]
SPEC = STRUCTURE_KEY + "spec"


class HeadLM(LMHeadMixin, L.LightningModule):
    def __init__(self, head: str | Head, counts: torch.Tensor | None = None, **options: Any):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        if isinstance(head, Head):
            self.configure_head(head)
        else:
            self.configure_head(head, DIM, VOCAB, counts=counts, **options)


def _log_prob(model: HeadLM) -> torch.Tensor:
    tokens = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.eval().head.log_prob(model.embed(tokens))


# ---------------------------------------------------------------------------------------------
# Item 2: a checkpoint of another head type, with the same shapes.
def test_a_checkpoint_of_another_head_type_is_refused_naming_both() -> None:
    saved = HeadLM("full").state_dict()  # weight [V, d] and bias [V], as taylor's
    taylor = HeadLM("taylor")
    before = {key: value.clone() for key, value in taylor.state_dict().items()}
    with pytest.raises(ValueError, match=r"holds a 'full' head.*configures a 'taylor' head"):
        taylor.load_state_dict(saved)
    for key, value in taylor.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"
    # A head configured as an instance: named by its class.
    with pytest.raises(ValueError, match=r"holds a 'full' head.*TaylorSoftmaxHead"):
        HeadLM(TaylorSoftmaxHead(DIM, VOCAB)).load_state_dict(saved)
    # The same type loads, an instance of it (or of a subclass) too.
    HeadLM("full").load_state_dict(saved)
    HeadLM(FullSoftmaxHead(DIM, VOCAB)).load_state_dict(saved)


# ---------------------------------------------------------------------------------------------
# Item 3: every option saved, with a format version; older specs with their release's defaults.
def _unversioned(state_dict: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with its spec as lm_heads 0.1 to 0.3 stored it: no format version, and
    only the options passed plus those the head resolved (adaptive: cutoffs, cost_model)."""
    meta = {"name": "adaptive", "in_features": DIM, "vocab_size": VOCAB, "options": options}
    text = json.dumps(meta, allow_nan=True)
    return {**state_dict, SPEC: torch.tensor(list(text.encode()), dtype=torch.uint8)}


@pytest.mark.parametrize("passed", [{}, {"head_bias": True}, {"div_value": 2.0}], ids=str)
def test_a_0_2_adaptive_checkpoint_loads_its_distribution(passed: dict[str, Any]) -> None:
    # 0.2.0's defaults: div_value=4, head_bias=False, and its tails had no bias at all.
    as_0_2 = {"div_value": 4.0, "head_bias": False, "tail_bias": False, **passed}
    torch.manual_seed(0)
    saved = HeadLM("adaptive", COUNTS, cutoffs=[10, 30], **as_0_2)
    state = _unversioned(saved.state_dict(), {**passed, "cutoffs": [10, 30], "cost_model": None})
    for restored in (HeadLM("adaptive"), HeadLM("adaptive", COUNTS, cutoffs=[10, 30])):
        with pytest.warns() if restored.head.build_spec else _no_warning():
            restored.load_state_dict(state)  # strict
        assert restored.head.head_bias == as_0_2["head_bias"] and not restored.head.tail_bias
        assert restored.head.div_value == as_0_2["div_value"]
        torch.testing.assert_close(_log_prob(restored), _log_prob(saved), rtol=0, atol=0)


def test_a_0_3_adaptive_checkpoint_still_loads_its_distribution() -> None:
    torch.manual_seed(0)
    saved = HeadLM("adaptive", COUNTS, cutoffs=[10, 30])  # 0.3's defaults are today's
    restored = HeadLM("adaptive")
    restored.load_state_dict(_unversioned(saved.state_dict(), {"cutoffs": [10, 30]}))
    torch.testing.assert_close(_log_prob(restored), _log_prob(saved), rtol=0, atol=0)


def test_an_unversioned_spec_without_weights_takes_the_newest_release_with_a_warning() -> None:
    state = _unversioned({}, {"cutoffs": [10, 30]})
    with pytest.warns(UserWarning, match="Pass weights="):
        spec = HeadSpec.from_state({"spec": state[SPEC], "counts": COUNTS.double()})
    assert spec.options["head_bias"] is True
    # When its options leave no default open, there is nothing to guess.
    complete = {"cutoffs": [10, 30], "div_value": 4.0, "head_bias": False, "tail_bias": False}
    state = _unversioned({}, complete)
    with _no_warning():
        assert HeadSpec.from_state({"spec": state[SPEC]}).options == complete


def test_an_unversioned_checkpoint_that_fits_no_release_is_refused() -> None:
    saved = HeadLM("adaptive", COUNTS, cutoffs=[10, 30], div_value=1.0)  # not a default anywhere
    state = _unversioned(saved.state_dict(), {"cutoffs": [10, 30]})
    with pytest.raises(ValueError, match=r"releases 0\.3, 0\.1-0\.2"):
        HeadLM("adaptive").load_state_dict(state)


def test_every_option_is_saved_with_the_format_version(monkeypatch) -> None:
    torch.manual_seed(0)
    saved = HeadLM("adaptive", COUNTS, cutoffs=[10, 30])
    meta = json.loads(bytes(saved.state_dict()[SPEC].tolist()).decode())
    assert meta["format"] == SPEC_FORMAT
    assert set(meta["options"]) == set(head_options("adaptive"))
    assert meta["options"]["div_value"] == 2.0  # the value its rule chose, not None
    assert build_head("class", DIM, VOCAB, counts=COUNTS).build_spec.options["num_classes"] > 0
    # So a later release with other defaults rebuilds the same head.
    monkeypatch.setattr(lm_heads.heads.adaptive, "default_div_value", lambda in_features: 8.0)
    restored = HeadLM("adaptive")
    restored.load_state_dict(saved.state_dict())
    assert restored.head.div_value == 2.0
    torch.testing.assert_close(_log_prob(restored), _log_prob(saved), rtol=0, atol=0)


def test_a_spec_from_a_newer_format_is_refused() -> None:
    meta = {"format": SPEC_FORMAT + 1, "name": "full", "in_features": 4, "vocab_size": 9}
    spec = torch.tensor(list(json.dumps({**meta, "options": {}}).encode()), dtype=torch.uint8)
    with pytest.raises(ValueError, match="newer lm_heads"):
        HeadSpec.from_state({"spec": spec})


# Every head's defaults in 0.3.0 (git show 1cd9eaa:lm_heads/*.py), the last release whose specs
# stored only the options passed; 0.2.0 (504826c) and 0.1 differ only in the adaptive head's.
DEFAULTS_0_3: dict[str, dict[str, Any]] = {
    "full": {"ignore_index": -100, "bias": True, "chunk_size": None, "label_smoothing": 0.0,
             "z_loss": 0.0},
    "class": {"ignore_index": -100, "num_classes": None},
    "hierarchical": {"ignore_index": -100, "tree": "kary", "branching": None},
    "adaptive": {"ignore_index": -100, "cutoffs": None, "div_value": None, "head_bias": True,
                 "tail_bias": True, "bias_init": "default", "batch_tokens": 4096,
                 "cost_model": None},
    "importance": {"ignore_index": -100, "num_samples": 1024, "proposal": "unigram",
                   "alpha": 0.75, "correct_target": False, "seed": 0, "bias": True,
                   "chunk_size": None},
    "nce": {"ignore_index": -100, "num_samples": 1024, "proposal": "unigram", "alpha": 0.75,
            "negative_sampling": False, "remove_accidental_hits": False, "seed": 0, "bias": True,
            "chunk_size": None},
    "spherical": {"ignore_index": -100, "gram": True, "eps": 0.01},
    "taylor": {"ignore_index": -100, "gram": True},
    "cosine": {"ignore_index": -100, "scale": 16.0, "margin": 0.1, "learn_scale": False,
               "label_smoothing": 0.0, "z_loss": 0.0},
    "rbf": {"ignore_index": -100, "scale": 16.0, "gamma": None, "label_smoothing": 0.0,
            "z_loss": 0.0},
    "prototypes": {"ignore_index": -100, "proto_dim": None, "scale": 16.0, "ce_weight": 0.0,
                   "proto_steps": 200, "seed": 0, "label_smoothing": 0.0, "z_loss": 0.0},
}  # fmt: skip
DEFAULTS_0_2 = {
    **DEFAULTS_0_3,
    "adaptive": {"ignore_index": -100, "cutoffs": None, "div_value": 4.0, "head_bias": False,
                 "batch_tokens": 4096, "cost_model": None},
}  # fmt: skip


@pytest.mark.parametrize(
    ("release", "defaults"), [("0.3", DEFAULTS_0_3), ("0.1-0.2", DEFAULTS_0_2)]
)
def test_every_default_changed_since_an_unversioned_release_is_recorded(release, defaults) -> None:
    # A default changed without its old value in RELEASE_DEFAULTS would rebuild that release's
    # checkpoints as another head.
    for name, options in defaults.items():
        recorded = dict(RELEASE_DEFAULTS.get(name, ())).get(release, {})
        today = head_options(name)
        for option, value in options.items():
            assert recorded.get(option, today[option]) == value, f"{name}.{option} in {release}"


# ---------------------------------------------------------------------------------------------
# Item 4: float32 and tensor options.
def test_a_float32_option_is_the_decimal_it_rounds_from() -> None:
    # Was: eps stored as 0.10000000149011612 and refused as "eps=0.1 (this head: 0.1)".
    saved = build_head("spherical", 8, VOCAB, eps=np.float32(0.1))
    assert saved.eps == 0.1 and saved.build_spec.options["eps"] == 0.1
    build_head("spherical", 8, VOCAB, eps=0.1).load_state_dict(saved.state_dict())
    for value in (torch.tensor(0.1), torch.tensor(0.1, dtype=torch.float16)):
        assert build_head("spherical", 8, VOCAB, eps=value).eps == 0.1


def test_a_float32_option_saved_by_an_older_release_loads() -> None:
    state = build_head("spherical", 8, VOCAB, eps=0.1).state_dict()
    state["_extra_state"] = torch.tensor([float(np.float32(0.1))], dtype=torch.float64)
    build_head("spherical", 8, VOCAB, eps=0.1).load_state_dict(state)


def test_a_real_difference_is_printed_as_one() -> None:
    saved = build_head("spherical", 8, VOCAB, eps=0.1000005).state_dict()
    with pytest.raises(ValueError, match=r"eps=0\.1000005 \(this head: 0\.1\)"):
        build_head("spherical", 8, VOCAB, eps=0.1).load_state_dict(saved)


@pytest.mark.parametrize(
    ("name", "option"), [("cosine", "scale"), ("rbf", "scale"), ("rbf", "gamma"),
                         ("prototypes", "scale"), ("spherical", "eps")],
)  # fmt: skip
def test_0_dim_tensor_options_are_accepted_as_numbers(name: str, option: str) -> None:
    # Was: scale=torch.tensor(7) accepted, scale=torch.tensor(7.0) refused.
    for value in (torch.tensor(7), torch.tensor(7.0), torch.tensor(7.0, dtype=torch.float64)):
        spec = build_head(name, 8, VOCAB, **{option: value}).build_spec
        assert spec is not None
        assert spec.options[option] == 7.0 and type(spec.options[option]) in (int, float)
    with pytest.raises(ValueError, match=rf"{option} must be a positive finite number"):
        build_head(name, 8, VOCAB, **{option: torch.tensor([7.0])})


def test_float_arrays_in_options_are_stored_as_their_decimals() -> None:
    from lm_heads.base import plain_data

    stored = plain_data({"a": np.array([0.1, 0.3], dtype=np.float32), "b": torch.tensor([[0.2]])})
    assert stored == {"a": [0.1, 0.3], "b": [[0.2]]}
    assert math.isnan(plain_data(torch.tensor(float("nan"))))


@contextlib.contextmanager
def _no_warning() -> Iterator[None]:
    """Fails if a warning is raised inside (``pytest.warns`` would demand one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
