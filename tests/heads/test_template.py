"""The template every head fills in (``Head`` in base.py): what it owns, so heads need not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from lm_heads import build_head
from lm_heads._check import check_bool, check_float, check_int
from lm_heads.base import Head, check_finite
from lm_heads.heads.full import FullSoftmaxHead
from lm_heads.heads.linear import LinearVocabularyHead
from lm_heads.heads.sampled import ImportanceSamplingHead, NCEHead


class _OffsetHead(Head):
    """A new head in the fewest lines: a softmax whose training loss is its NLL plus one, and
    which never looks at ``self.training``."""

    def __init__(self, in_features: int, vocab_size: int) -> None:
        super().__init__(in_features, vocab_size)
        self.weight = torch.nn.Parameter(torch.randn(vocab_size, in_features))

    def loss_is_exact(self, training: bool) -> bool:
        return not training

    def _log_prob(self, hidden: Tensor) -> Tensor:
        return (hidden @ self.weight.t()).log_softmax(-1)

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return 1.0 - self._target_log_prob(hidden, target)


def test_evaluation_is_exact_without_the_head_testing_its_mode() -> None:
    head = _OffsetHead(6, 11)
    hidden, target = torch.randn(7, 6), torch.randint(0, 11, (7,))
    target[2] = -100
    kept = target != -100
    nll = -head.target_log_prob(hidden, target)[kept].mean()
    train = head.train()(hidden, target)
    torch.testing.assert_close(train.loss, nll + 1.0)
    assert train.nll_sum is None
    evaluation = head.eval()(hidden, target)
    torch.testing.assert_close(evaluation.loss, nll)
    assert evaluation.nll_sum is not None
    torch.testing.assert_close(evaluation.nll_sum, nll * kept.sum())


def test_full_and_sampled_heads_are_siblings_over_one_linear_base() -> None:
    for cls in (FullSoftmaxHead, ImportanceSamplingHead, NCEHead):
        assert issubclass(cls, LinearVocabularyHead)
    assert not issubclass(ImportanceSamplingHead, FullSoftmaxHead)
    assert not issubclass(NCEHead, FullSoftmaxHead)


def test_is_exact_reads_loss_is_exact() -> None:
    cosine = build_head("cosine", 8, 20, margin=0.0).train()
    assert cosine.is_exact and cosine.loss_is_exact(training=True)
    out = cosine(torch.randn(5, 8), torch.arange(5))
    assert out.nll_sum is not None
    margin = build_head("cosine", 8, 20, margin=0.2)
    assert not margin.loss_is_exact(training=True) and margin.loss_is_exact(training=False)
    assert margin.train()(torch.randn(5, 8), torch.arange(5)).nll_sum is None


def test_check_finite_names_the_problem() -> None:
    hidden = torch.randn(2, 5, 4)
    assert check_finite(hidden) is hidden
    hidden[1, 3, 0] = float("nan")
    hidden[0, 0, 2] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite values in 2 position"):
        check_finite(hidden)


def test_shared_checks_refuse_bools_and_accept_numpy_numbers() -> None:
    for check in (check_int, check_float):
        for value in (True, np.True_, "3", None):
            with pytest.raises(ValueError, match=r"^x must be"):
                check("x", value)
    assert check_int("x", np.int16(3), minimum=1) == 3
    assert check_float("x", np.float32(0.5), minimum=0.0, maximum=1.0) == 0.5
    with pytest.raises(ValueError, match=r"x must be a positive finite number \(e.g. 1\), got nan"):
        check_float("x", float("nan"), positive=True, hint="e.g. 1")
    with pytest.raises(ValueError, match="x must be True or False, got 1"):
        check_bool("x", 1)
