"""torch.compile: heads trace without graph breaks where their shapes are static; smoke tests."""

from __future__ import annotations

import pytest
import torch

from lm_heads import build_head

VOCAB, DIM = 200, 16
COUNTS = torch.arange(VOCAB, 0, -1).double()
# Heads whose training step has static shapes. adaptive and class sort tokens by cluster (sizes
# read on the host), sampled heads create their noise generator at the first step: those break.
STATIC = ["full", "cosine", "hierarchical", "prototypes", "rbf", "spherical", "taylor"]


def _graph_breaks(name: str) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    head = build_head(name, DIM, VOCAB, counts=COUNTS)
    hidden, target = torch.randn(4, 8, DIM), torch.randint(0, VOCAB, (4, 8))
    target[0, :3] = -100
    explained = torch._dynamo.explain(lambda h, t: head(h, t).loss)(hidden, target)
    return explained.graph_break_count, [str(b.reason) for b in explained.break_reasons]


def test_full_head_traces_as_one_graph() -> None:
    """The id check used to break the graph (`if bool(bad.any())`) in every head."""
    count, reasons = _graph_breaks("full")
    assert count == 0, reasons


@pytest.mark.slow
@pytest.mark.parametrize("name", STATIC)
def test_static_heads_trace_as_one_graph(name: str) -> None:
    count, reasons = _graph_breaks(name)
    assert count == 0, reasons


@pytest.mark.slow
def test_compiled_full_head_matches_eager_in_loss_and_gradients() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    head = build_head("full", DIM, VOCAB)
    hidden, target = torch.randn(4, 8, DIM), torch.randint(0, VOCAB, (4, 8))
    target[1, 2:] = -100
    compiled = torch.compile(lambda h, t: head(h, t).loss, fullgraph=True)
    losses, grads = [], []
    for fn in (lambda h, t: head(h, t).loss, compiled):
        head.zero_grad()
        h = hidden.clone().requires_grad_()
        loss = fn(h, target)
        loss.backward()
        losses.append(loss.detach())
        grads.append((h.grad, head.weight.grad.clone()))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
