"""The NLL decomposition: parts that add up, an adaptive head's own factors, the unigram's."""

from __future__ import annotations

import pytest
import torch

from lm_heads import build_head
from lm_heads.decomposition import NLLDecomposition

V, D = 60, 8
COUNTS = torch.arange(V, 0, -1, dtype=torch.float64) ** 2


def _adaptive() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_head("adaptive", D, V, counts=COUNTS, cutoffs=[10, 30], tail_bias=True).double()


def test_parts_add_up_to_the_nll() -> None:
    head = _adaptive()
    hidden, target = torch.randn(40, D, dtype=torch.float64), torch.randint(0, V, (40,))
    target[3] = -100
    dec = NLLDecomposition(COUNTS, [10, 30])
    dec.update_from_head(head, hidden, target, chunk=7)
    result = dec.compute()
    keep = target != -100
    nll = -head.target_log_prob(hidden[keep], target[keep])
    assert result["tokens"] == 39
    assert result["nll_per_token"] == pytest.approx(float(nll.mean()))
    assert sum(p["nll_share"] for p in result["parts"]) == pytest.approx(1.0)
    tokens = [p["tokens"] for p in result["parts"]]
    assert tokens[0] + tokens[1] == 39 and tokens[1] == tokens[2] + tokens[3]


def test_an_adaptive_heads_cluster_choice_is_its_head_softmax_entry() -> None:
    head = _adaptive()
    hidden = torch.randn(1, D, dtype=torch.float64)
    target = torch.tensor([45])  # rank 45: the second tail cluster
    dec = NLLDecomposition(COUNTS, [10, 30])
    dec.update(head.log_prob(hidden), target)
    choice = dec.compute()["parts"][1]["nll_per_token"]
    expected = -head.head(hidden).log_softmax(-1)[0, 10 + 1]
    assert choice == pytest.approx(float(expected))


def test_the_unigram_model_scores_its_own_reference() -> None:
    unigram = ((COUNTS + 1) / (COUNTS + 1).sum()).log()
    target = torch.randint(0, V, (50,))
    dec = NLLDecomposition(COUNTS, [10, 30])
    dec.update(unigram.expand(50, V), target)
    for part in dec.compute()["parts"]:
        if part["tokens"]:
            assert part["nll_per_token"] == pytest.approx(part["unigram_per_token"])


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="cutoffs must increase"):
        NLLDecomposition(COUNTS, [30, 10])
    dec = NLLDecomposition(COUNTS, [10])
    with pytest.raises(ValueError, match=r"log_prob must be \[n, 60\]"):
        dec.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="target ids must lie"):
        dec.update(torch.zeros(1, V), torch.tensor([V]))
