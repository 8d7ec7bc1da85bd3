"""Small backbones for the recipes: token ids ``[B, T]`` → hidden states ``[B, T, d]``.

Neither model has an output layer: the head (``lm_heads``) owns it. Both can tie their input
embedding to the head's output embedding (Press & Wolf 2017; Inan et al. 2017) when the head has
one output row per word, by making the head's ``[V, e]`` weight *the same Parameter* as the
embedding's; if the backbone's hidden size ``d`` differs from ``e``, a final linear projection
``d → e`` is added (as in AWD-LSTM's last layer of size ``e``).

Notation used for tensor shapes:
    - ``B``: batch, ``T``: time (BPTT length)
    - ``V``: vocabulary size, ``e``: ``embed_dim``, ``d``: ``d_model`` (hidden size)

Recurrent state across BPTT windows: ``forward(tokens, state)`` returns ``(hidden, state)``.
Feeding a window's returned state (detached) into the next window of the same streams is truncated
BPTT as in pytorch/examples' ``word_language_model``, AWD-LSTM and Grave et al. 2017: the model
sees unbounded left context at the cost of ``bptt``-long gradients. ``LanguageModel`` does the
carrying; ``TransformerLM`` takes no state (its context is the window) and returns ``None``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lm_heads._check import check_int
from lm_heads.adaptive_input import AdaptiveInput
from lm_heads.base import Head
from lm_heads.heads.adaptive import AdaptiveSoftmaxHead

__all__ = ["LSTMLM", "TransformerLM", "adaptive_input"]

LSTMState = tuple[Tensor, Tensor]
"""``(h, c)``, each ``[num_layers, B, d_model]``, as ``nn.LSTM`` takes and returns it."""


class LSTMLM(nn.Module):
    """Embedding → dropout → LSTM → dropout (→ linear ``d → out_features``).

    Under CPU autocast (``--precision bf16-mixed``) the LSTM itself runs in float32: oneDNN has
    no bfloat16 LSTM primitive, and the recurrence is a small share of the work.

    Args:
        vocab_size: ``V``.
        embed_dim: ``e``, size of the input word vectors.
        d_model: ``d``, LSTM hidden size.
        num_layers: stacked LSTM layers.
        dropout: dropout on embeddings, between layers and on the output.
        out_features: size of the returned hidden states; defaults to ``d_model``. When it differs,
            a linear projection is added (used to tie embeddings with ``e != d``).
        embedding: the input layer, ids ``[B, T]`` → ``[B, T, e]`` with ``embedding_dim == e``
            (e.g. :class:`~lm_heads.AdaptiveInput`); ``None``: an ``nn.Embedding(V, e)``.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_dim: int,
        d_model: int,
        num_layers: int,
        dropout: float,
        out_features: int | None = None,
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_backbone(vocab_size, embed_dim, d_model, num_layers, dropout)
        self.embedding = _input_layer(embedding, vocab_size, embed_dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(
            embed_dim,
            d_model,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.out_features = out_features or d_model
        self.proj = nn.Linear(d_model, self.out_features) if self.out_features != d_model else None
        if embedding is None:
            nn.init.uniform_(self.embedding.get_parameter("weight"), -0.1, 0.1)

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """``tokens [B, T]`` (and the previous window's state) → hidden ``[B, T, out]``, state."""
        inputs = self.drop(self.embedding(tokens))
        if inputs.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                hidden, state = self.rnn(inputs.float(), _float(state))
        else:
            hidden, state = self.rnn(inputs, state)
        hidden = self.drop(hidden)
        return (self.proj(hidden) if self.proj is not None else hidden), state


class TransformerLM(nn.Module):
    """A small causal (decoder-only) pre-LayerNorm Transformer.

    Args:
        vocab_size: ``V``.
        embed_dim: ``e``; projected to ``d_model`` when it differs.
        d_model: ``d``, width of the residual stream.
        num_layers: Transformer blocks.
        num_heads: attention heads (must divide ``d_model``).
        dropout: dropout in attention, feed-forward and on embeddings.
        max_len: longest sequence (learned positions have this many rows).
        positions: ``"learned"`` or ``"sinusoidal"`` (Vaswani et al. 2017).
        out_features: size of the returned hidden states (defaults to ``d_model``).
        embedding: the input layer (see :class:`LSTMLM`); ``None``: an ``nn.Embedding(V, e)``.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        embed_dim: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        max_len: int,
        positions: str,
        out_features: int | None = None,
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        _check_backbone(vocab_size, embed_dim, d_model, num_layers, dropout)
        if num_heads < 1 or d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', got {positions!r}")
        self.max_len = max_len
        self.embedding = _input_layer(embedding, vocab_size, embed_dim)
        if embedding is None:
            nn.init.normal_(self.embedding.get_parameter("weight"), std=0.02)
        self.in_proj = nn.Linear(embed_dim, d_model) if embed_dim != d_model else None
        self.positions = positions
        if positions == "learned":
            # A Parameter sliced to [:T] still gets a (dense) gradient every step: DDP-safe.
            self.pos = nn.Parameter(torch.zeros(max_len, d_model))
            nn.init.normal_(self.pos, std=0.02)
        else:
            self.register_buffer("pos", _sinusoidal(max_len, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=4 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.out_features = out_features or d_model
        self.proj = nn.Linear(d_model, self.out_features) if self.out_features != d_model else None

    def forward(self, tokens: Tensor, state: None = None) -> tuple[Tensor, None]:
        """``tokens [B, T]`` → hidden ``[B, T, out_features]`` (position t sees tokens ≤ t), None.

        ``state`` exists for a common backbone signature; a window's context is the window.
        """
        length = tokens.shape[1]
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds max_len={self.max_len}; "
                "raise max_len or lower bptt"
            )
        x = self.embedding(tokens)
        if self.in_proj is not None:
            x = self.in_proj(x)
        x = self.drop(x + self.pos[:length].to(x.dtype))
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(x, mask=mask, is_causal=True)
        return (self.proj(hidden) if self.proj is not None else hidden), None


def adaptive_input(
    head: Head, vocab_size: int, embed_dim: int, counts: Tensor | None, tie: bool
) -> AdaptiveInput:
    """Adaptive input on ``head``'s clusters (tied: words and projections, as Baevski & Auli's
    best models; words only when the head has no tail projections to share), or on the default
    clusters of ``counts`` when the head is not adaptive."""
    if isinstance(head, AdaptiveSoftmaxHead):
        tie_proj = tie and head.tail_projection
        return AdaptiveInput.from_head(
            head, embedding_dim=embed_dim, tie_weights=tie, tie_proj=tie_proj
        )
    if tie:
        raise ValueError(
            f"adaptive input ties only to the adaptive head, not {type(head).__name__}: use "
            "--head adaptive, or drop --tie-weights"
        )
    return AdaptiveInput(vocab_size, embed_dim, counts=counts)


def _sinusoidal(max_len: int, dim: int) -> Tensor:
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


def _input_layer(embedding: nn.Module | None, vocab_size: int, embed_dim: int) -> nn.Module:
    if embedding is None:
        return nn.Embedding(vocab_size, embed_dim)
    size = getattr(embedding, "embedding_dim", None)
    if size != embed_dim:
        raise ValueError(
            f"the input layer's embedding_dim ({size}) must equal embed_dim ({embed_dim})"
        )
    return embedding


def _check_backbone(
    vocab_size: int, embed_dim: int, d_model: int, num_layers: int, dropout: float
) -> None:
    """The arguments both backbones take."""
    for name, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim),
                        ("d_model", d_model), ("num_layers", num_layers)):  # fmt: skip
        check_int(name, value, minimum=1)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")


def _float(state: LSTMState | None) -> LSTMState | None:
    return None if state is None else (state[0].float(), state[1].float())
