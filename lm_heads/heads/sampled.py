r"""Sampled heads: train on the target and ``K`` noise words, evaluate with the exact full softmax.

Both heads keep the full head's ``W [V, d]`` and ``b [V]`` and draw ``K`` words ``s_1..s_K``
i.i.d. from a proposal ``q`` (:mod:`lm_heads.heads.samplers`), shared by the whole batch, so a
training step costs one ``[n, d] × [d, K]`` matmul plus ``n`` target dot products instead of
``[n, d] × [d, V]``. With ``o_w = W_w·h + b_w`` and ``log(K·q_w)`` the log expected count of ``w``
among the samples:

- **Importance sampling / sampled softmax** (Bengio & Senécal 2008; Jean et al. 2015):
  ``Z = Σ_w e^{o_w}`` is estimated by the exact target term plus an importance-sampling estimate
  of the rest, and the loss is

      loss = logsumexp([o_t, o_{s_1} − log(K q_{s_1}), …, o_{s_K} − log(K q_{s_K})]) − o_t,

  with accidental hits (``s_j = t``) masked to ``−∞`` since the target is already counted
  exactly. The sum is an unbiased estimate of ``Z``, so the loss tends to the full-softmax NLL as
  ``K`` grows (and is always ≥ 0). TensorFlow's ``sampled_softmax_loss`` also subtracts
  ``log(K q_t)`` from the target logit; that version (``correct_target=True``) has a gradient
  close to the exact one when ``p(t)`` is small but a value off by about ``log(K q_t)``.
- **NCE** (Gutmann & Hyvärinen 2010; Mnih & Teh 2012): logistic regression of data against noise
  with ``s_w = o_w − log(K q_w)`` (``o`` is taken as a self-normalised log-probability):

      loss = −log σ(s_t) − Σ_j log(1 − σ(s_{s_j})).

  ``negative_sampling=True`` drops the ``log(K q)`` correction (word2vec, Mikolov et al. 2013).
  Noise words equal to the target stay by default: they are legitimate noise draws in NCE's
  estimator (as in Mnih & Teh and TensorFlow's ``nce_loss``); ``remove_accidental_hits=True``
  drops them. The bias starts at ``−log V`` so that ``Z ≈ 1`` from the first step.

In eval mode ``forward`` returns the exact full-softmax loss (``is_exact`` is ``not training``);
``log_prob``, ``target_log_prob``, ``predict`` and ``sample`` are always the exact full softmax,
with the full head's chunked machinery when ``chunk_size`` is set.

Negatives come from the head's own ``torch.Generator``, created at the first training step on
the weight's device and seeded ``seed + global rank`` (when ``torch.distributed`` is
initialised), so DDP ranks draw different negatives even after ``seed_everything``. Its state is
not part of the ``state_dict``: a resumed run draws a fresh noise stream.

DDP: ``W`` and ``b`` are gathered at the target and noise rows, so both get a (mostly zero) dense
gradient on every step.

Shape:
    - hidden: ``[..., d]``; target: ``[...]``; noise: ``[K]`` shared by all tokens
    - training logits: ``[n, K]`` sampled plus ``[n]`` target
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_bool, check_float, check_int
from lm_heads.base import at_least_float32, linear_f32
from lm_heads.chunked_ce import ChunkSize
from lm_heads.heads.linear import LinearVocabularyHead
from lm_heads.heads.samplers import PROPOSALS, CategoricalSampler, proposal_probs


class _SampledHead(LinearVocabularyHead):
    """The full softmax's parameters and evaluation, a sampled training loss (see the module
    docstring)."""

    uses_counts = True
    registered_name = "sampled"

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        num_samples: int = 1024,
        proposal: str = "unigram",
        alpha: float = 0.75,
        seed: int = 0,
        bias: bool = True,
        chunk_size: ChunkSize | None = None,
    ) -> None:
        super().__init__(
            in_features,
            vocab_size,
            ignore_index=ignore_index,
            bias=bias,
            chunk_size=chunk_size,
        )
        self.num_samples = check_int(
            "num_samples", num_samples, minimum=1, hint="noise words per step"
        )
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}; got {proposal!r}")
        alpha = check_float("alpha", alpha, minimum=0.0, hint="0.75 is usual")
        self.proposal_name = proposal
        self.seed = check_int("seed", seed)
        self.proposal = CategoricalSampler(
            proposal_probs(proposal, vocab_size, counts, alpha, head=self.registered_name)
        )
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device | None = None

    def loss_is_exact(self, training: bool) -> bool:
        return not training

    def score_shape(self, tokens: int) -> tuple[int, int]:
        return tokens, self.num_samples + 1  # the target and the shared noise words

    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        noise = self.proposal.sample(self.num_samples, self.noise_generator())
        return self._sampled_token_loss(hidden, target, noise)

    def noise_generator(self) -> torch.Generator:
        """The generator for negatives, on the weight's device, seeded ``seed + global rank``."""
        device = self.weight.device
        if self._generator is None or self._generator_device != device:
            rank = 0
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank = torch.distributed.get_rank()
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed + rank)
            self._generator_device = device
        return self._generator

    def _sampled_token_loss(self, hidden: Tensor, target: Tensor, noise: Tensor) -> Tensor:
        """Per-token sampled loss ``[n]`` for given noise ids ``[K]``."""
        n = target.shape[0]
        # One gather for target and noise rows: a single dense [V, d] gradient in backward.
        ids = torch.cat([target, noise])
        rows = self.weight.index_select(0, ids)
        row_bias = None if self.bias is None else self.bias.index_select(0, ids)
        target_logit = (at_least_float32(hidden) * at_least_float32(rows[:n])).sum(-1)
        noise_logit = linear_f32(hidden, rows[n:], None if row_bias is None else row_bias[n:])
        if row_bias is not None:
            target_logit = target_logit + row_bias[:n]
        log_expected = self.proposal.log_prob(ids) + math.log(self.num_samples)
        hits = noise.unsqueeze(0) == target.unsqueeze(1)
        return self._loss_from_logits(
            target_logit, noise_logit, log_expected[:n], log_expected[n:], hits
        )

    def _loss_from_logits(
        self,
        target_logit: Tensor,
        noise_logit: Tensor,
        target_log_expected: Tensor,
        noise_log_expected: Tensor,
        hits: Tensor,
    ) -> Tensor:
        """``[n]`` loss from target logits ``[n]``, noise logits ``[n, K]``, ``log(K·q)``, hits."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_samples={self.num_samples}, "
            f"proposal={self.proposal_name!r}, seed={self.seed}"
        )


class ImportanceSamplingHead(_SampledHead):
    """Sampled softmax over ``{target} ∪ K`` noise words (Bengio & Senécal 2008; Jean et al. 2015).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: corpus frequency per word id (any id order); required by ``proposal="unigram"``,
            gives the frequency ranks of ``"log_uniform"`` (``None``: ids are assumed sorted by
            descending frequency), ignored by ``"uniform"``.
        ignore_index: padding target id.
        num_samples: ``K``, noise words per step, drawn with replacement (``K ≥ V`` is allowed).
        proposal: ``"unigram"`` (``count^α``), ``"log_uniform"`` (Zipf over rank) or ``"uniform"``.
        alpha: exponent of the unigram proposal.
        correct_target: also subtract ``log(K q_t)`` from the target logit, as TensorFlow's
            ``sampled_softmax_loss`` does (see the module docstring).
        seed: base seed of the noise generator (plus the global rank under DDP).
        bias: learn a per-word bias.
        chunk_size: evaluation mode of the exact softmax (see :mod:`lm_heads.heads.linear`).
    """

    registered_name = "importance"

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        num_samples: int = 1024,
        proposal: str = "unigram",
        alpha: float = 0.75,
        correct_target: bool = False,
        seed: int = 0,
        bias: bool = True,
        chunk_size: ChunkSize | None = None,
    ) -> None:
        super().__init__(
            in_features,
            vocab_size,
            counts=counts,
            ignore_index=ignore_index,
            num_samples=num_samples,
            proposal=proposal,
            alpha=alpha,
            seed=seed,
            bias=bias,
            chunk_size=chunk_size,
        )
        self.correct_target = check_bool("correct_target", correct_target)

    def _loss_from_logits(
        self,
        target_logit: Tensor,
        noise_logit: Tensor,
        target_log_expected: Tensor,
        noise_log_expected: Tensor,
        hits: Tensor,
    ) -> Tensor:
        if self.correct_target:
            target_logit = target_logit - target_log_expected
        # The target enters exactly once: a noise draw equal to it would count it twice.
        noise_logit = (noise_logit - noise_log_expected).masked_fill(hits, -math.inf)
        logits = torch.cat([target_logit.unsqueeze(1), noise_logit], 1)
        return torch.logsumexp(logits, 1) - target_logit


class NCEHead(_SampledHead):
    """Noise-contrastive estimation, or negative sampling (Mnih & Teh 2012; Mikolov et al. 2013).

    Args:
        in_features: ``d``.
        vocab_size: ``V``.
        counts: as for :class:`ImportanceSamplingHead`.
        ignore_index: padding target id.
        num_samples: ``K``, noise words per step, drawn with replacement.
        proposal: ``"unigram"`` (``count^α``), ``"log_uniform"`` (Zipf over rank) or ``"uniform"``.
        alpha: exponent of the unigram proposal.
        negative_sampling: drop the ``log(K q)`` correction (word2vec's negative sampling); the
            logits then no longer self-normalise, but evaluation normalises them anyway.
        remove_accidental_hits: drop noise words equal to the token's target from its loss.
        seed: base seed of the noise generator (plus the global rank under DDP).
        bias: learn a per-word bias (initialised to ``−log V`` so that ``Z ≈ 1`` at the start).
        chunk_size: evaluation mode of the exact softmax (see :mod:`lm_heads.heads.linear`).
    """

    registered_name = "nce"

    def __init__(
        self,
        in_features: int,
        vocab_size: int,
        *,
        counts: Tensor | Sequence[float] | None = None,
        ignore_index: int = -100,
        num_samples: int = 1024,
        proposal: str = "unigram",
        alpha: float = 0.75,
        negative_sampling: bool = False,
        remove_accidental_hits: bool = False,
        seed: int = 0,
        bias: bool = True,
        chunk_size: ChunkSize | None = None,
    ) -> None:
        super().__init__(
            in_features,
            vocab_size,
            counts=counts,
            ignore_index=ignore_index,
            num_samples=num_samples,
            proposal=proposal,
            alpha=alpha,
            seed=seed,
            bias=bias,
            chunk_size=chunk_size,
        )
        self.negative_sampling = check_bool("negative_sampling", negative_sampling)
        self.remove_accidental_hits = check_bool("remove_accidental_hits", remove_accidental_hits)

    def reset_parameters(self) -> None:
        """As the full head, but ``b = −log V``: NCE treats ``o`` as normalised, so start at
        ``Z ≈ 1``."""
        super().reset_parameters()
        if self.bias is not None:
            nn.init.constant_(self.bias, -math.log(self.vocab_size))

    def _loss_from_logits(
        self,
        target_logit: Tensor,
        noise_logit: Tensor,
        target_log_expected: Tensor,
        noise_log_expected: Tensor,
        hits: Tensor,
    ) -> Tensor:
        if not self.negative_sampling:
            target_logit = target_logit - target_log_expected
            noise_logit = noise_logit - noise_log_expected
        # −log σ(s) = softplus(−s) and −log(1 − σ(s)) = softplus(s), stable for any s.
        noise_loss = F.softplus(noise_logit)
        if self.remove_accidental_hits:
            noise_loss = noise_loss.masked_fill(hits, 0.0)
        return F.softplus(-target_logit) + noise_loss.sum(1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, negative_sampling={self.negative_sampling}, "
            f"remove_accidental_hits={self.remove_accidental_hits}"
        )
