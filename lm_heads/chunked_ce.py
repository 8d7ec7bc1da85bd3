r"""Exact linear + cross-entropy without ``[n, V]`` logits: token chunks, in-place softmax.

The naive loss ``F.cross_entropy(h @ Wᵀ + b, t)`` keeps three ``[n, V]`` float32 tensors alive
around backward (the log-softmax it saves, its gradient, the logits' gradient): 8192 tokens × 267k
words × 4 B = 8.7 GB each. Here the tokens are cut into chunks of ``c`` rows; each chunk's
``[c, V]`` logits live in one preallocated buffer that the softmax and its gradient overwrite in
place, so the extra memory is ``O(c·V)`` (the idea of Liger-Kernel's fused linear cross-entropy
and of Cut Cross-Entropy, Wijmans et al. 2024). Per chunk, with ``o = h_c Wᵀ + b``:

    lse  = logsumexp(o),             loss_i = lse_i − o_{i,t_i}
    G    = (softmax(o) − onehot(t)) · g_i          (g_i = ∂L/∂loss_i)
    ∂h_c = G W,    ∂W += Gᵀ h_c,    ∂b += Σ_rows G

Two reductions, two ways to get ``g``:

- ``reduction="sum"`` (training): the loss is ``Σ_i a_i · loss_i`` for known token weights ``a``
  (the padding mask), so ``g_i = a_i`` up to the scalar upstream gradient, and the gradients are
  formed *during the forward pass* while the chunk's softmax is at hand; backward only scales
  them. Three ``[n, V, d]`` matmul passes, like the naive loss. Recomputing the logits in
  backward would cost a fourth (≈ 1.33× the FLOPs), which is why training does not. The price
  is ``∂W`` (``[V, d]`` float32, what ``weight.grad`` becomes anyway) held from forward to
  backward; it is saved for backward, so a retained graph can backward twice.
- ``reduction="none"`` (per-token losses, ``target_log_prob``): ``g`` is only known in backward,
  so forward saves ``lse [n]`` and backward recomputes each chunk's logits (four passes).

Chunking the vocabulary as well would need an online (two-pass) logsumexp, hence more passes over
``W``; the token chunks alone already bound the memory, so this module chunks tokens only.

Under autocast the matmuls run in the autocast dtype; softmax, logsumexp, losses and the
``∂W``/``∂b`` accumulators stay in float32 (float64 inputs stay float64, for gradcheck).

Shape:
    - hidden: ``[n, d]``; weight: ``[V, d]``; bias: ``[V]`` or ``None``; target: ``[n]`` int64
    - output: scalar (``"sum"``) or ``[n]`` (``"none"``), float32 (float64 for float64 inputs)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lm_heads.base import add_gumbel_

AUTO_CHUNK_BYTES = 512 * 2**20
"""``chunk_size="auto"`` sizes a chunk so that its float32 logits take about this many bytes."""

ChunkSize = int | Literal["auto"]


def resolve_chunk_size(chunk_size: ChunkSize, vocab_size: int) -> int:
    """Token rows per chunk: an int as given, ``"auto"`` → ``AUTO_CHUNK_BYTES / (4·V)`` rows."""
    if chunk_size == "auto":
        return max(1, AUTO_CHUNK_BYTES // (4 * vocab_size))
    return int(chunk_size)


def check_chunk_size(chunk_size: object) -> None:
    """Raise ``ValueError`` unless ``chunk_size`` is ``None``, ``"auto"`` or a positive int."""
    if chunk_size is None or chunk_size == "auto":
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be None (naive), 'auto' or a positive int (tokens per chunk), "
            f"got {chunk_size!r}"
        )


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    *,
    chunk_size: ChunkSize = "auto",
    reduction: Literal["none", "sum"] = "none",
    token_weight: Tensor | None = None,
) -> Tensor:
    """Exact ``cross_entropy(hidden @ weightᵀ + bias, target)`` without materialising ``[n, V]``.

    Args:
        hidden: ``[n, d]`` hidden states.
        weight: ``[V, d]`` output embeddings.
        bias: ``[V]`` or ``None``.
        target: ``[n]`` word ids, all in ``[0, V)`` (mask padding with ``token_weight``).
        chunk_size: token rows per chunk, or ``"auto"`` (see :func:`resolve_chunk_size`).
        reduction: ``"none"`` → per-token NLL ``[n]``; ``"sum"`` → ``Σ_i token_weight_i·NLL_i``.
        token_weight: ``[n]`` weights for ``"sum"`` (e.g. the padding mask); default all ones.

    Returns:
        float32 (float64 for float64 inputs) per-token NLL ``[n]`` or their weighted sum.
    """
    if reduction not in ("none", "sum"):
        raise ValueError(f"reduction must be 'none' or 'sum', got {reduction!r}")
    if reduction == "none" and token_weight is not None:
        raise ValueError("token_weight only applies to reduction='sum'")
    chunk = resolve_chunk_size(chunk_size, weight.shape[0])
    compute_dtype = _compute_dtype(hidden, weight)
    # ctx.needs_input_grad ignores no_grad mode, so decide here whether to form gradients.
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    if reduction == "sum":
        if token_weight is None:
            token_weight = torch.ones(target.shape, device=target.device)
        return _FusedLinearCrossEntropySum.apply(
            hidden, weight, bias, target, token_weight, chunk, compute_dtype, needs
        )
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, chunk, compute_dtype)


def linear_argmax(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, *, chunk_size: ChunkSize = "auto"
) -> Tensor:
    """``argmax(hidden @ weightᵀ + bias, -1)`` chunk by chunk: ``[n]`` int64."""
    out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.long)
    dtype = _compute_dtype(hidden, weight)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for rows, logits in _forward_chunks(hidden, weight, bias, chunk_size, dtype):
            out[rows] = logits.argmax(1)
    return out


def linear_sample(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    chunk_size: ChunkSize = "auto",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One draw per row from ``softmax(hidden @ weightᵀ + bias)`` by Gumbel-max, chunked."""
    out = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.long)
    dtype = _compute_dtype(hidden, weight)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for rows, logits in _forward_chunks(hidden, weight, bias, chunk_size, dtype):
            # Gumbel-max needs no normaliser: argmax(o + g) ~ softmax(o).
            out[rows] = add_gumbel_(logits, generator).argmax(1)
    return out


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _forward_chunks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    chunk_size: ChunkSize,
    compute_dtype: torch.dtype,
) -> Iterator[tuple[slice, Tensor]]:
    """Yield ``(rows, logits)`` per chunk; ``logits`` is one reused float32 buffer (callers run
    this under ``no_grad`` with autocast off)."""
    chunk = resolve_chunk_size(chunk_size, weight.shape[0])
    work = _Workspace(min(chunk, hidden.shape[0]), weight, compute_dtype)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        yield rows, work.logits_of(hidden[rows], bias)


# --------------------------------------------------------------------------------------------
# The per-chunk kernels shared by both autograd functions.
class _Workspace:
    """Preallocated ``[c, V]`` buffers: float32 logits, plus one in the matmul dtype if lower."""

    def __init__(self, rows: int, weight: Tensor, compute_dtype: torch.dtype) -> None:
        vocab = weight.shape[0]
        self.acc_dtype = torch.promote_types(compute_dtype, torch.float32)
        self.compute_dtype = compute_dtype
        self.weight = weight.to(compute_dtype)
        self.logits = torch.empty(rows, vocab, device=weight.device, dtype=self.acc_dtype)
        self.low = (
            torch.empty(rows, vocab, device=weight.device, dtype=compute_dtype)
            if compute_dtype != self.acc_dtype
            else None
        )

    def logits_of(self, h: Tensor, bias: Tensor | None) -> Tensor:
        """``h Wᵀ + b`` for one chunk, written into (a view of) the logits buffer."""
        rows = h.shape[0]
        out = self.logits[:rows]
        h = h.to(self.compute_dtype)
        if self.low is None:
            if bias is None:
                torch.mm(h, self.weight.t(), out=out)
            else:
                torch.addmm(bias.to(self.acc_dtype), h, self.weight.t(), out=out)
            return out
        low = self.low[:rows]
        torch.mm(h, self.weight.t(), out=low)
        out.copy_(low)
        if bias is not None:
            out.add_(bias.to(self.acc_dtype))
        return out

    def accumulate(
        self,
        grad_logits: Tensor,
        h: Tensor,
        grad_hidden: Tensor | None,
        grad_weight: Tensor | None,
        grad_bias: Tensor | None,
    ) -> None:
        """``∂h = G W`` into ``grad_hidden``; ``∂W += Gᵀ h``; ``∂b += Σ_rows G``."""
        h = h.to(self.compute_dtype)
        if self.low is None:
            grad = grad_logits
        else:
            grad = self.low[: grad_logits.shape[0]]
            grad.copy_(grad_logits)
        if grad_hidden is not None:
            torch.mm(grad, self.weight, out=grad_hidden)
        if grad_weight is not None:
            if grad.dtype == grad_weight.dtype:
                grad_weight.addmm_(grad.t(), h)
            else:
                # Low-precision matmul, float32 accumulation across chunks.
                grad_weight.add_(torch.mm(grad.t(), h))
        if grad_bias is not None:
            grad_bias.add_(grad_logits.sum(0))


def _exp_shifted_(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Overwrite ``logits`` with ``exp(o − max)`` (no second buffer); return ``(max, sum)``."""
    row_max = logits.amax(1, keepdim=True)
    logits.sub_(row_max).exp_()
    return row_max, logits.sum(1, keepdim=True)


def _chunks(n: int, chunk: int) -> range:
    return range(0, n, chunk)


def _grad_buffers(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    needs: tuple[bool, bool, bool],
    work: _Workspace,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    grad_hidden = (
        torch.empty(hidden.shape, device=hidden.device, dtype=work.compute_dtype)
        if needs[0]
        else None
    )
    grad_weight = (
        torch.zeros(weight.shape, device=weight.device, dtype=work.acc_dtype) if needs[1] else None
    )
    grad_bias = (
        torch.zeros(bias.shape, device=bias.device, dtype=work.acc_dtype)
        if needs[2] and bias is not None
        else None
    )
    return grad_hidden, grad_weight, grad_bias


def _cast_like(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    if grad is None or like is None:
        return None
    return grad.to(like.dtype)


# --------------------------------------------------------------------------------------------
class _FusedLinearCrossEntropySum(torch.autograd.Function):
    """``Σ_i a_i·NLL_i`` with the gradients formed in forward (three matmul passes)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        token_weight: Tensor,
        chunk: int,
        compute_dtype: torch.dtype,
        needs: tuple[bool, bool, bool],
    ) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            n = hidden.shape[0]
            work = _Workspace(min(chunk, n), weight, compute_dtype)
            grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs, work)
            any_grad = any(needs)
            total = torch.zeros((), device=hidden.device, dtype=work.acc_dtype)
            for start in _chunks(n, chunk):
                rows = slice(start, start + chunk)
                h, t = hidden[rows], target[rows, None]
                a = token_weight[rows, None].to(work.acc_dtype)
                logits = work.logits_of(h, bias)
                target_logit = logits.gather(1, t)
                row_max, row_sum = _exp_shifted_(logits)
                nll = row_max + row_sum.log() - target_logit
                total += (a * nll).sum()
                if any_grad:
                    # softmax·a − onehot·a, in place over exp(o − max).
                    logits.mul_(a / row_sum).scatter_add_(1, t, -a)
                    work.accumulate(
                        logits,
                        h,
                        None if grad_hidden is None else grad_hidden[rows],
                        grad_weight,
                        grad_bias,
                    )
        # Saved as intermediates (not ctx attributes): autograd frees them right after backward
        # unless the graph is retained, so a retained graph can backward again.
        ctx.save_for_backward(_cast_like(grad_hidden, hidden), grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor) -> tuple:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        scaled = []
        for grad, dtype in (
            (grad_hidden, None),
            (grad_weight, weight_dtype),
            (grad_bias, bias_dtype),
        ):
            if grad is not None:
                grad = (grad * grad_output).to(dtype or grad.dtype)
            scaled.append(grad)
        return (*scaled, None, None, None, None, None)


class _LinearCrossEntropy(torch.autograd.Function):
    """Per-token NLL ``[n]``; saves ``lse [n]`` and recomputes chunk logits in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        chunk: int,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            n = hidden.shape[0]
            work = _Workspace(min(chunk, n), weight, compute_dtype)
            nll = torch.empty(n, device=hidden.device, dtype=work.acc_dtype)
            lse = torch.empty(n, device=hidden.device, dtype=work.acc_dtype)
            for start in _chunks(n, chunk):
                rows = slice(start, start + chunk)
                logits = work.logits_of(hidden[rows], bias)
                target_logit = logits.gather(1, target[rows, None]).squeeze(1)
                row_max, row_sum = _exp_shifted_(logits)
                lse[rows] = (row_max + row_sum.log()).squeeze(1)
                nll[rows] = lse[rows] - target_logit
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_nll: Tensor) -> tuple:
        hidden, weight, bias, target, lse = ctx.saved_tensors
        chunk, needs = ctx.chunk, ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            n = hidden.shape[0]
            work = _Workspace(min(chunk, n), weight, ctx.compute_dtype)
            grad_hidden, grad_weight, grad_bias = _grad_buffers(hidden, weight, bias, needs, work)
            for start in _chunks(n, chunk):
                rows = slice(start, start + chunk)
                h, t = hidden[rows], target[rows, None]
                g = grad_nll[rows, None].to(work.acc_dtype)
                logits = work.logits_of(h, bias)
                # softmax·g − onehot·g, in place, from the saved logsumexp.
                logits.sub_(lse[rows, None]).exp_().mul_(g).scatter_add_(1, t, -g)
                work.accumulate(
                    logits,
                    h,
                    None if grad_hidden is None else grad_hidden[rows],
                    grad_weight,
                    grad_bias,
                )
        return (
            _cast_like(grad_hidden, hidden),
            _cast_like(grad_weight, weight),
            _cast_like(grad_bias, bias),
            None,
            None,
            None,
        )
