"""Every head configuration on CUDA against a CPU float64 reference; bf16 autocast; 2-GPU DDP.

Marked ``cuda``: they skip where no CUDA device is present. ``scripts/bench_gpu.sh`` runs them
(``pytest -m cuda tests/cuda``) before it times the heads. ``LM_HEADS_TEST_DEVICE=cpu`` runs the
same comparisons with float32 on the CPU as the device under test, so that these tests are
themselves exercised on machines without a GPU (``scripts/bench_gpu.py``'s reduced mode does).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from lm_heads import Head, build_head
from tests.heads.cases import HEAD_CASES, case_id
from tests.heads.utils import zipf_counts, zipf_targets

D, V, SHAPE = 24, 203, (3, 7)
DEVICE = torch.device(os.environ.get("LM_HEADS_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"
    ),
]
cases = pytest.mark.parametrize("case", HEAD_CASES, ids=[case_id(c) for c in HEAD_CASES])


@pytest.fixture(autouse=True)
def _full_float32_matmuls() -> Iterator[None]:
    # TF32 (allowed by some setups) rounds matmul inputs to 10 mantissa bits: the float32
    # tolerances below are for true float32.
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def _pair(case: tuple[str, dict[str, Any]]) -> tuple[Head, Head]:
    """The same head twice: float64 on the CPU (reference) and float32 on the device."""
    name, options = case
    torch.manual_seed(0)
    reference = build_head(name, D, V, counts=zipf_counts(V), **options).double()
    return reference, copy.deepcopy(reference).float().to(DEVICE)


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*SHAPE, D, generator=generator, dtype=torch.float64)
    target = zipf_targets(zipf_counts(V), SHAPE, seed=seed)
    target[0, 0] = -100  # ignore_index travels too
    return hidden, target


def _step(head: Head, hidden: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Loss and the gradients of hidden and of every parameter, all as CPU float64."""
    x = hidden.detach().clone().requires_grad_(True)
    for p in head.parameters():
        p.grad = None
    loss = head(x, target).loss
    loss.backward()
    grads = [x.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "a parameter got no gradient"
    return tuple(t.detach().double().cpu() for t in (loss, *grads))  # type: ignore[union-attr]


def _draws_samples(head: Head, hidden: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the training loss is random (sampled heads): two seeds, two losses."""
    losses = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        losses.append(head(hidden, target).loss.detach())
    return not torch.equal(*losses)


@cases
def test_log_prob_and_target_log_prob_match_float64(case) -> None:
    reference, head = _pair(case)
    reference.eval(), head.eval()
    hidden, target = _batch()
    with torch.no_grad():
        expected = reference.log_prob(hidden)
        actual = head.log_prob(hidden.float().to(DEVICE))
        assert actual.device.type == DEVICE.type and actual.dtype == torch.float32
        torch.testing.assert_close(actual.double().cpu(), expected, rtol=1e-5, atol=2e-5)
        expected_t = reference.target_log_prob(hidden, target)
        actual_t = head.target_log_prob(hidden.float().to(DEVICE), target.to(DEVICE))
        torch.testing.assert_close(actual_t.double().cpu(), expected_t, rtol=1e-5, atol=2e-5)


@cases
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_loss_and_gradients_match_float64(case, training: bool) -> None:
    reference, head = _pair(case)
    reference.train(training), head.train(training)
    hidden, target = _batch()
    if training and _draws_samples(reference, hidden, target):
        # Device and CPU draw different samples: check the device's step is finite and complete.
        for value in _step(head, hidden.float().to(DEVICE), target.to(DEVICE)):
            assert torch.isfinite(value).all()
        return
    expected = _step(reference, hidden, target)
    actual = _step(head, hidden.float().to(DEVICE), target.to(DEVICE))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@cases
def test_bf16_autocast_is_finite_and_close(case) -> None:
    reference, head = _pair(case)
    hidden, target = _batch()
    reference.eval(), head.eval()  # exact in every head, so comparable
    expected = _step(reference, hidden, target)
    x = hidden.float().to(DEVICE).requires_grad_(True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = head(x, target.to(DEVICE))
        log_prob = head.log_prob(x.detach())
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and log_prob.dtype == torch.float32
    assert torch.isfinite(out.loss) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob.logsumexp(-1).cpu(), torch.zeros(SHAPE), atol=1e-3, rtol=0)
    # bf16 keeps 8 mantissa bits: logits are off by ~2⁻⁸ of their size.
    torch.testing.assert_close(out.loss.double().cpu(), expected[0], rtol=2e-2, atol=2e-2)
    grads = [x.grad] + [p.grad for p in head.parameters() if p.requires_grad]
    for g, e in zip(grads, expected[1:], strict=True):
        assert g is not None and torch.isfinite(g).all()
        error = (g.double().cpu() - e).norm() / e.norm().clamp_min(1e-12)
        assert error < 0.05, f"bf16 gradient off by {float(error):.3g} (relative)"
    if _draws_samples(head.train(), x.detach(), target.to(DEVICE)):
        return
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # the training path too
        loss = head(x.detach(), target.to(DEVICE)).loss
    assert torch.isfinite(loss)


@pytest.mark.skipif(
    DEVICE.type != "cuda" or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"
)
def test_every_head_trains_under_two_gpu_ddp() -> None:
    script = Path(__file__).with_name("ddp_cuda.py")
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    done = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")}
    from lm_heads import HEADS

    assert done == set(HEADS), f"missing: {sorted(set(HEADS) - done)}"
