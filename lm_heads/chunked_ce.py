r"""The one home of linear + cross-entropy: ``cross_entropy(h Wᵀ + b, t)`` without ``[n, V]``.

The naive loss ``F.cross_entropy(h @ Wᵀ + b, t)`` keeps three ``[n, V]`` float32 tensors alive
around backward (the log-softmax it saves, its gradient, the logits' gradient): 8192 tokens × 267k
words × 4 B = 8.7 GB each. Here the tokens are cut into chunks of ``c`` rows; each chunk's
``[c, V]`` logits live in one preallocated buffer that the softmax and its gradient overwrite in
place, so the extra memory is ``O(c·V)`` on top of ``∂W`` (the idea of Liger-Kernel's fused linear
cross-entropy, of Cut Cross-Entropy, Wijmans et al. 2024, and of torch's own
``F.linear_cross_entropy``). Per chunk, with ``o = h_c Wᵀ + b``, ``lse = logsumexp(o)``, ``p =
softmax(o)`` and token weights ``a`` (the padding mask):

    nll_i  = lse_i − o_{i,t_i}
    loss_i = (1 − ε)·nll_i + ε·(lse_i − mean_j o_ij) + λ·lse_i²     (label smoothing ε, z-loss λ)
    G      = a·[(1 + 2λ·lse)·p − (1 − ε)·onehot(t) − ε/V]
    ∂h_c = G W,    ∂W += Gᵀ h_c,    ∂b += Σ_rows G

The loss is a weighted *sum*, so ``∂loss/∂loss_i = a_i`` up to the scalar upstream gradient: the
gradients are formed *during the forward pass* while the chunk's softmax is at hand, and backward
only scales them. Three ``[n, V, d]`` matmul passes, like the naive loss; recomputing the logits
in backward would cost a fourth. The price is ``∂W`` (``[V, d]``, what ``weight.grad`` becomes
anyway) held from forward to backward, then scaled in place and handed to autograd as the
gradient itself (no second ``[V, d]``); a retained graph can backward twice (the second time
forms the gradients again). ``c = None`` is one chunk: the adaptive head's per-cluster softmaxes.

torch ≥ 2.13 ships the same algorithm as ``F.linear_cross_entropy(..., options=...)``; this module
stays because that kernel has neither label smoothing (it falls back to materialising ``[n, V]``)
nor the z-loss, and needs no newer torch (see BENCHMARKS.md for the measured comparison).

Evaluation (:func:`linear_nll`, :func:`linear_argmax`, :func:`linear_sample`) runs chunk by
chunk too; :func:`linear_nll` is differentiable by recomputing each chunk in backward.

Under autocast the matmuls run in the autocast dtype; softmax, logsumexp, losses and the
``∂W``/``∂b`` accumulators stay in float32 (float64 inputs stay float64, for gradcheck).

Shape:
    - hidden: ``[n, d]``; weight: ``[V, d]``; bias: ``[V]`` or ``None``; target: ``[n]`` int64
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lm_heads._check import check_float, check_int
from lm_heads.base import add_gumbel_

AUTO_MIN_ROWS = 256
"""``chunk_size="auto"`` takes ``max(256, d)`` rows: one chunk's float32 logits (``c·V·4`` bytes)
are then no larger than ``∂W`` (``V·d·4``, the memory floor of any exact loss), so the loss needs
about twice the floor plus ``[n, d]``, at any ``V``. Fewer rows re-read ``W`` and ``∂W`` once per
chunk too often: 64 rows ran 1.6× slower than 512 on a 2-core CPU (BENCHMARKS.md)."""

ChunkSize = int | Literal["auto"]

_Options = tuple[int, torch.dtype, tuple[bool, bool, bool], float, float]
"""What the fused kernel needs besides tensors: rows per chunk, matmul dtype, which of ``(h, W,
b)`` need gradients, label smoothing ``ε``, z-loss ``λ``."""


class LossSums(NamedTuple):
    """What :func:`linear_cross_entropy` returns."""

    loss: Tensor
    """``Σ_i a_i·loss_i``: the training objective (differentiable)."""
    nll: Tensor
    """``Σ_i a_i·nll_i``: the exact NLL whatever ``ε`` and ``λ`` (detached)."""


def resolve_chunk_size(chunk_size: ChunkSize | None, in_features: int) -> int:
    """Token rows per chunk: an int as given; ``"auto"`` → ``max(256, d)``
    (:data:`AUTO_MIN_ROWS`); ``None`` → one chunk (all rows)."""
    if chunk_size is None:
        return 2**62
    if chunk_size == "auto":
        return max(AUTO_MIN_ROWS, in_features)
    return int(chunk_size)


def check_chunk_size(chunk_size: object) -> ChunkSize | None:
    """``chunk_size`` as ``None``, ``"auto"`` or a positive ``int`` (numpy and tensor integers
    too); ``ValueError`` otherwise."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, str) and chunk_size == "auto":
        return "auto"
    return check_int(
        "chunk_size", chunk_size, minimum=1, hint="None (naive), 'auto' or tokens per chunk"
    )


def check_loss_options(label_smoothing: object, z_loss: object) -> tuple[float, float]:
    """Validate label smoothing ``ε ∈ [0, 1]`` and z-loss weight ``λ ≥ 0``; return floats."""
    return (
        check_float("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0, hint="e.g. 0.1"),
        check_float("z_loss", z_loss, minimum=0.0, hint="PaLM uses 1e-4"),
    )


def regularised_loss(
    nll: Tensor, lse: Tensor, mean_logit: Tensor | None, label_smoothing: float, z_loss: float
) -> Tensor:
    """``(1 − ε)·nll + ε·(lse − mean_j o_j) + λ·lse²`` per token: ``F.cross_entropy``'s label
    smoothing (uniform over the ``V`` words) plus PaLM's z-loss, from ``[n]`` statistics."""
    loss = nll
    if label_smoothing:
        assert mean_logit is not None, "label smoothing needs the mean logit"
        loss = (1.0 - label_smoothing) * nll + label_smoothing * (lse - mean_logit)
    if z_loss:
        loss = loss + z_loss * lse.square()
    return loss


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    *,
    token_weight: Tensor | None = None,
    chunk_size: ChunkSize | None = "auto",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> LossSums:
    """``Σ_i a_i·loss_i`` of ``hidden @ weightᵀ + bias`` against ``target``, gradients fused.

    Args:
        hidden: ``[n, d]`` hidden states.
        weight: ``[V, d]`` output embeddings.
        bias: ``[V]`` or ``None``.
        target: ``[n]`` word ids, all in ``[0, V)`` (mask padding with ``token_weight``).
        token_weight: ``[n]`` weights ``a`` (the padding mask; default all ones). Rows of weight
            0 are replaced by zeros before the matmul, so NaN or inf there changes nothing.
        chunk_size: token rows per chunk, ``"auto"`` (:func:`resolve_chunk_size`) or ``None``
            (one chunk).
        label_smoothing: ``ε``, as ``F.cross_entropy(label_smoothing=ε)``.
        z_loss: ``λ`` of the z-loss ``λ·(log Z)²`` (PaLM, Chowdhery et al. 2022).

    Returns:
        :class:`LossSums`: training objective and exact NLL, float32 (float64 for float64).
        Not twice differentiable: a backward with ``create_graph=True`` raises.
    """
    chunk = resolve_chunk_size(chunk_size, weight.shape[1])
    if token_weight is None:
        token_weight = torch.ones(target.shape, device=target.device)
    # ctx.needs_input_grad ignores no_grad mode, so decide here whether to form gradients.
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    options: _Options = (chunk, _compute_dtype(hidden, weight), needs, label_smoothing, z_loss)
    return LossSums(*_LinearCrossEntropy.apply(hidden, weight, bias, target, token_weight, options))


def linear_nll(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    *,
    chunk_size: ChunkSize | None = "auto",
) -> Tensor:
    """Per-token ``−log softmax(hidden @ weightᵀ + bias)[target]`` ``[n]``, chunk by chunk.

    Differentiable: with gradients on, each chunk is recomputed in backward (activation
    checkpointing), so memory stays ``O(c·V)`` either way.
    """
    chunk = resolve_chunk_size(chunk_size, weight.shape[1])
    # One chunk needs no checkpoint: autograd's own graph is as small.
    grad = (
        torch.is_grad_enabled()
        and hidden.shape[0] > chunk
        and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    )
    parts = []
    for start in range(0, max(hidden.shape[0], 1), chunk):  # an empty batch: one empty chunk
        rows = slice(start, start + chunk)
        args = (hidden[rows], weight, bias, target[rows])
        parts.append(
            checkpoint(_chunk_nll, *args, use_reentrant=False) if grad else _chunk_nll(*args)
        )
    return torch.cat(parts)


def _chunk_nll(hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor) -> Tensor:
    logits = F.linear(hidden, weight, bias)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, target, reduction="none")


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
    chunk = resolve_chunk_size(chunk_size, weight.shape[1])
    work = _Workspace(min(chunk, hidden.shape[0]), weight, compute_dtype)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        yield rows, work.logits_of(hidden[rows], bias)


# --------------------------------------------------------------------------------------------
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
        grads: tuple[Tensor | None, Tensor | None, Tensor | None],
        first: bool,
    ) -> None:
        """``∂h = G W`` into ``grads[0]``; ``∂W += Gᵀ h``; ``∂b += Σ_rows G`` (``=`` if ``first``:
        no zero fill and no read of the accumulator for the first or only chunk)."""
        grad_hidden, grad_weight, grad_bias = grads
        h = h.to(self.compute_dtype)
        if self.low is None:
            grad = grad_logits
        else:
            grad = self.low[: grad_logits.shape[0]]
            grad.copy_(grad_logits)
        if grad_hidden is not None:
            torch.mm(grad, self.weight, out=grad_hidden)
        if grad_weight is not None:
            if grad.dtype != grad_weight.dtype:
                # Low-precision matmul, float32 accumulation across chunks.
                product = torch.mm(grad.t(), h)
                grad_weight.copy_(product) if first else grad_weight.add_(product)
            elif first:
                torch.mm(grad.t(), h, out=grad_weight)
            else:
                grad_weight.addmm_(grad.t(), h)
        if grad_bias is not None:
            if first:
                torch.sum(grad_logits, 0, out=grad_bias)
            else:
                grad_bias.add_(grad_logits.sum(0))


def _exp_shifted_(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Overwrite ``logits`` with ``exp(o − max)`` (no second buffer); return ``(max, sum)``."""
    row_max = logits.amax(1, keepdim=True)
    logits.sub_(row_max).exp_()
    return row_max, logits.sum(1, keepdim=True)


def _grad_buffers(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, ...], work: _Workspace
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    # Uninitialised: the first chunk writes them (zeros only when no chunk runs: no rows).
    new = torch.empty if hidden.shape[0] else torch.zeros

    def buffer(like: Tensor, dtype: torch.dtype, need: bool) -> Tensor | None:
        return new(like.shape, device=like.device, dtype=dtype) if need else None

    return (
        buffer(hidden, work.compute_dtype, needs[0]),
        buffer(weight, work.acc_dtype, needs[1]),
        None if bias is None else buffer(bias, work.acc_dtype, needs[2]),
    )


def _fused_pass(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    token_weight: Tensor,
    options: _Options,
) -> tuple[Tensor, Tensor, tuple[Tensor | None, Tensor | None, Tensor | None]]:
    """``(Σ a·loss, Σ a·nll, (∂h, ∂W, ∂b))`` chunk by chunk; the gradients for upstream 1."""
    chunk, compute_dtype, needs, smoothing, z_loss = options
    with torch.autocast(hidden.device.type, enabled=False):
        n, vocab = hidden.shape[0], weight.shape[0]
        work = _Workspace(min(chunk, n), weight, compute_dtype)
        grads = _grad_buffers(hidden, weight, bias, needs, work)
        loss_sum = torch.zeros((), device=hidden.device, dtype=work.acc_dtype)
        nll_sum = torch.zeros((), device=hidden.device, dtype=work.acc_dtype)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            t, a = target[rows, None], token_weight[rows, None].to(work.acc_dtype)
            # Ignored rows become zeros: NaN there (padding after fully masked attention)
            # would otherwise reach the loss as 0·NaN and every gradient through W.
            h = torch.where(a != 0, hidden[rows], 0.0)
            logits = work.logits_of(h, bias)
            target_logit = logits.gather(1, t)
            mean_logit = logits.mean(1, keepdim=True) if smoothing else None
            row_max, row_sum = _exp_shifted_(logits)
            lse = row_max + row_sum.log()
            nll = lse - target_logit
            loss = regularised_loss(nll, lse, mean_logit, smoothing, z_loss)
            loss_sum += (a * loss).sum()
            nll_sum += (a * nll).sum()
            if any(needs):
                # The gradient, in place over exp(o − max): see the module docstring.
                scale = a / row_sum if not z_loss else a * (1 + 2 * z_loss * lse) / row_sum
                logits.mul_(scale).scatter_add_(1, t, -(1.0 - smoothing) * a)
                if smoothing:
                    logits.sub_(a * (smoothing / vocab))
                work.accumulate(logits, h, (_rows(grads[0], rows), grads[1], grads[2]), start == 0)
    return loss_sum, nll_sum, grads


class _LinearCrossEntropy(torch.autograd.Function):
    """``(Σ a·loss, Σ a·nll)`` with the gradients formed in forward (three matmul passes)."""

    # ctx is Any: forward leaves the gradients and options on it for backward, and FunctionCtx
    # declares neither them nor saved_tensors.
    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        token_weight: Tensor,
        options: _Options,
    ) -> tuple[Tensor, Tensor]:
        loss_sum, nll_sum, grads = _fused_pass(hidden, weight, bias, target, token_weight, options)
        # The gradients are a ctx attribute, not saved tensors: backward scales them in place and
        # hands them over, so autograd can take ∂W as weight.grad without a copy (peak memory
        # stays at one ∂W). A second backward through a retained graph forms them again.
        ctx.grads = grads
        ctx.options = options
        ctx.save_for_backward(hidden, weight, bias, target, token_weight)
        ctx.mark_non_differentiable(nll_sum)
        return loss_sum, nll_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, _: Tensor) -> tuple:
        # Grad mode is on in backward exactly under create_graph=True. The gradients formed in
        # forward are constants, so a gradient penalty would silently get no second-order terms
        # (once_differentiable only raises when the incoming gradient itself requires grad).
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the fused linear cross-entropy (FullSoftmaxHead with chunk_size, "
                "AdaptiveSoftmaxHead) is not twice differentiable: create_graph=True (e.g. a "
                "gradient penalty) would drop the second-order terms. Use the naive full head "
                "(chunk_size=None) or a head without a fused kernel for double backward"
            )
        hidden, weight, bias, target, token_weight = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            grads = _fused_pass(hidden, weight, bias, target, token_weight, ctx.options)[2]
        scaled = [
            None if grad is None else grad.mul_(grad_loss.to(grad.dtype)).to(like.dtype)
            for grad, like in zip(grads, (hidden, weight, bias), strict=True)
        ]
        del grads
        return (*scaled, None, None, None)


def _rows(grad: Tensor | None, rows: slice) -> Tensor | None:
    return None if grad is None else grad[rows]
