"""Label smoothing and z-loss on the logit-softmax heads, against ``F.cross_entropy`` and PaLM's
formula ``λ·(log Z)²``; the full head's are in ``test_full.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lm_heads import build_head

D, V, N = 8, 40, 25
OPTIONS = {"label_smoothing": 0.2, "z_loss": 0.01}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    target = torch.randint(V, (N,))
    target[::6] = -100
    return torch.randn(N, D), target


def _regularisation(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over counted tokens of (smoothed CE − CE) + λ·lse², from the training logits."""
    smoothed = F.cross_entropy(logits, target, label_smoothing=OPTIONS["label_smoothing"])
    plain = F.cross_entropy(logits, target)
    keep = target != -100
    return smoothed - plain + OPTIONS["z_loss"] * logits.logsumexp(-1)[keep].square().mean()


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rbf", {}),
        ("cosine", {"margin": 0.0}),
        ("cosine", {"margin": 0.2}),
        ("prototypes", {"ce_weight": 1.0, "proto_steps": 0}),
    ],
)
def test_loss_is_the_plain_loss_plus_smoothing_and_z_loss(name: str, options: dict) -> None:
    plain = build_head(name, D, V, **options)
    head = build_head(name, D, V, **options, **OPTIONS)
    head.load_state_dict(plain.state_dict())
    hidden, target = _batch()
    logits = head._logits(hidden)
    if name == "cosine":  # the margin lowers the target logit while training
        shift = head.scale() * head.margin
        logits = logits - shift * F.one_hot(target.clamp_min(0), V)
    expected = plain(hidden, target).loss + _regularisation(logits, target)
    out = head(hidden, target)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert not head.is_exact and out.nll_sum is None
    # Evaluation: the exact NLL, as without the options.
    head.eval(), plain.eval()
    assert head.is_exact
    torch.testing.assert_close(head(hidden, target).loss, plain(hidden, target).loss)


@pytest.mark.parametrize("name", ["adaptive", "hierarchical", "spherical", "nce"])
def test_heads_without_the_options_name_those_that_have_them(name: str) -> None:
    counts = torch.arange(V, 0, -1).float()
    with pytest.raises(TypeError, match=r"label_smoothing is an option of full, .*cosine, rbf"):
        build_head(name, D, V, counts=counts, label_smoothing=0.1)
    with pytest.raises(TypeError, match="z_loss is an option of full"):
        build_head(name, D, V, counts=counts, z_loss=1e-4)
