"""The contract every head keeps, and the template (``Head``) that keeps most of it for them.

A head maps hidden states to a normalised distribution over a vocabulary of ``V`` words and owns
its training objective. Heads are plain :class:`torch.nn.Module` s; Lightning never appears here.

Notation used for tensor shapes:
    - ``...``: any leading dims (batch, time); heads flatten them to ``n`` tokens internally
    - ``d``: ``in_features``
    - ``V``: ``vocab_size``

Subclasses implement on flattened tensors (``hidden [n, d]``, ``target [n]`` already validated):
    - ``_token_loss(hidden, target) -> [n]``: per-token training objective, float32
    - ``_log_prob(hidden) -> [n, V]``: normalised log-probabilities, float32
and override ``_target_log_prob``, ``_predict`` and ``_sample`` when they can do better than
going through ``[n, V]``; ``_loss_sums`` when their training kernel is fused (it gets the padding
mask) or reports the exact NLL beside a regularised objective (full, adaptive; the margin heads
cannot and report ``None``); ``loss_is_exact`` when their training loss is not the NLL; and set
``uses_counts`` when their constructor takes corpus ``counts`` (``build_head`` passes them then).

Evaluation is exact, and the template owns that: in eval mode ``forward`` calls
``_exact_loss_sums``, never the training objective. By default it is the training kernel when
that is exact (``loss_is_exact(True)``), else the sum of ``_token_nll`` (``−_target_log_prob``);
a head overrides either when it has a better exact kernel (the full and sampled heads' chunked
one). So ``_token_loss`` and ``_loss_sums`` run only while training, and no head tests
``self.training`` itself.

Non-finite hidden states: at ``ignore_index`` positions they are masked out before any matmul, so
they change neither loss nor gradient (padding after fully masked attention is often NaN). At
counted positions they give a non-finite loss, as in ``F.cross_entropy``: checking would cost a
host sync per step. Use :func:`check_finite` where that is affordable, e.g. when debugging.
"""

from __future__ import annotations

import json
import math
import numbers
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lm_heads._check import check_int, plain_float


class HeadOutput(NamedTuple):
    """What ``Head.forward`` returns."""

    loss: Tensor
    """Scalar float32 training objective: mean over tokens that are not ``ignore_index``."""
    nll_sum: Tensor | None
    """Scalar float32 ``Σ −log p(target)`` over counted tokens (exact heads; ``None`` otherwise).
    With ``num_tokens`` it gives a DDP-correct perplexity: sum both across ranks, then divide."""
    num_tokens: Tensor
    """Scalar int64: number of tokens that are not ``ignore_index``."""


class Head(nn.Module):
    """Base class of every output layer: ``hidden [..., d]`` → distribution over ``V`` words.

    Args:
        in_features: ``d``, the size of the hidden states.
        vocab_size: ``V``, the number of words.
        ignore_index: target value whose tokens change neither loss nor gradient (padding).
    """

    uses_counts: ClassVar[bool] = False
    """Whether the constructor takes ``counts`` (corpus frequency per word id): ``build_head``
    validates counts for every head but passes them only to heads that use them."""

    build_spec: HeadSpec | None = None
    """How :func:`~lm_heads.registry.build_head` made this head (``None``: built directly)."""

    def __init__(self, in_features: int, vocab_size: int, *, ignore_index: int = -100) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.ignore_index = check_int("ignore_index", ignore_index)

    # ----------------------------------------------------------------------------------------
    # What a head implements (on flattened, validated tensors).
    def _token_loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token training objective ``[n]`` (float32). ``target`` holds only valid ids."""
        raise NotImplementedError

    def _log_prob(self, hidden: Tensor) -> Tensor:
        """Normalised log-probabilities ``[n, V]`` (float32)."""
        raise NotImplementedError

    def _loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """``(Σ training objective, Σ exact NLL or None)`` over the tokens where ``keep``.

        Ignored tokens arrive with zero hidden rows and target 0. The default sums
        ``_token_loss``; a head overrides it to fuse the reduction into its kernel, or to report
        the exact NLL beside a regularised objective (``None`` when it cannot)."""
        loss_sum = torch.where(keep, at_least_float32(self._token_loss(hidden, target)), 0.0).sum()
        return loss_sum, (loss_sum.detach() if self.loss_is_exact(training=True) else None)

    def _exact_loss_sums(
        self, hidden: Tensor, target: Tensor, keep: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(Σ NLL, Σ NLL detached)`` over the tokens where ``keep``: the evaluation loss."""
        if self.loss_is_exact(training=True):
            loss_sum, nll_sum = self._loss_sums(hidden, target, keep)
            return loss_sum, loss_sum.detach() if nll_sum is None else nll_sum
        nll = torch.where(keep, at_least_float32(self._token_nll(hidden, target)), 0.0).sum()
        return nll, nll.detach()

    def _token_nll(self, hidden: Tensor, target: Tensor) -> Tensor:
        """Per-token exact NLL ``[n]`` for evaluation (heads whose training loss is not it)."""
        return -self._target_log_prob(hidden, target)

    def _target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._log_prob(hidden).gather(-1, target.unsqueeze(-1)).squeeze(-1)

    def _predict(self, hidden: Tensor) -> Tensor:
        return self._log_prob(hidden).argmax(-1)

    def _sample(self, hidden: Tensor, generator: torch.Generator | None) -> Tensor:
        return sample_categorical(self._log_prob(hidden), generator)

    def output_embeddings(self) -> Tensor | None:
        """``[V, d]`` output word vectors in id order, or ``None`` if the head has no such rows."""
        return None

    def resolved_options(self) -> dict[str, Any]:
        """Options whose value the head chose when built (e.g. ``cutoffs="auto"``), as they must
        be passed to rebuild the same structure without choosing again."""
        return {}

    def score_shape(self, tokens: int) -> tuple[int, int]:
        """``(rows, columns)`` of the widest score matrix a training step on ``tokens`` tokens
        builds at once: what its memory grows with (``lm_heads.memory``). The full softmax's
        ``(tokens, V)`` unless the head builds less."""
        return tokens, self.vocab_size

    def loss_is_exact(self, training: bool) -> bool:
        """Whether ``forward(h, t).loss == -target_log_prob(h, t).mean()`` in training or eval
        mode (False while training for sampled heads, margin heads and heads trained with label
        smoothing or the z-loss). The one source of truth: :attr:`is_exact` reads it."""
        return True

    @property
    def is_exact(self) -> bool:
        """Whether this instance's loss is currently the exact NLL (its current mode)."""
        return self.loss_is_exact(self.training)

    # ----------------------------------------------------------------------------------------
    # The public API: validation, flattening, ignore_index and float32 handled once, here.
    def forward(self, hidden: Tensor, target: Tensor) -> HeadOutput:
        """Training objective for ``hidden [..., d]`` and ``target [...]``."""
        h, t, keep = self._masked(hidden, target)
        if self.training:
            loss_sum, nll_sum = self._loss_sums(h, t, keep)
        else:
            loss_sum, nll_sum = self._exact_loss_sums(h, t, keep)
        num_tokens = keep.sum()
        return HeadOutput(loss_sum / num_tokens.clamp_min(1), nll_sum, num_tokens)

    def log_prob(self, hidden: Tensor) -> Tensor:
        """Normalised log-probabilities ``[..., V]`` (float32)."""
        h = self._check_hidden(hidden)
        return self._log_prob(h.reshape(-1, self.in_features)).reshape(*hidden.shape[:-1], -1)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        """``log p(target | hidden)`` as ``[...]`` (float32); 0 where target is ``ignore_index``."""
        h, t, keep = self._masked(hidden, target)
        out = torch.where(keep, at_least_float32(self._target_log_prob(h, t)), 0.0)
        return out.reshape(target.shape)

    def predict(self, hidden: Tensor) -> Tensor:
        """Most probable word ``[...]`` under the exact distribution."""
        h = self._check_hidden(hidden)
        return self._predict(h.reshape(-1, self.in_features)).reshape(hidden.shape[:-1])

    def sample(self, hidden: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw ``[...]`` from the exact distribution for each position."""
        h = self._check_hidden(hidden)
        flat = h.reshape(-1, self.in_features)
        return self._sample(flat, generator).reshape(hidden.shape[:-1])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, vocab_size={self.vocab_size}"

    # ----------------------------------------------------------------------------------------
    def _check_hidden(self, hidden: Tensor) -> Tensor:
        if not isinstance(hidden, Tensor):
            raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
        if not hidden.is_floating_point():
            raise TypeError(
                f"hidden must be a floating-point tensor, got dtype {hidden.dtype}; "
                "pass the model's hidden states, not token ids"
            )
        if hidden.dim() == 0 or hidden.shape[-1] != self.in_features:
            hint = ""
            if hidden.dim() and hidden.shape[-1] == self.vocab_size:
                hint = (
                    f"; its last dimension is vocab_size={self.vocab_size}: did you pass logits "
                    "instead of hidden states? The head computes the logits itself"
                )
            raise ValueError(
                f"hidden must have shape [..., {self.in_features}] (in_features), "
                f"got {tuple(hidden.shape)}{hint}"
            )
        if hidden.numel() == 0:
            raise ValueError(f"empty batch: hidden of shape {tuple(hidden.shape)} has no tokens")
        dtype = self._param_dtype()
        # Under autocast the matmuls cast both sides; otherwise torch's own error is opaque.
        mixed = dtype is not None and hidden.dtype != dtype
        if mixed and not torch.is_autocast_enabled(hidden.device.type):
            raise TypeError(
                f"hidden is {hidden.dtype} but the head's parameters are {dtype}: cast one "
                f"to the other (e.g. hidden.to({dtype}) or head.to({hidden.dtype})), or run "
                "under torch.autocast for mixed precision"
            )
        return hidden

    def _param_dtype(self) -> torch.dtype | None:
        """dtype of the first floating-point parameter (``None`` if there is none)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def _masked(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flat ``(hidden, target, keep)`` with ignored tokens' rows and targets set to 0.

        Masking with `where` (not boolean indexing) keeps shapes static: no host sync on GPU.
        Zeroing ignored hidden rows *before* any matmul keeps NaN/inf padding out of the loss
        and of every gradient (``0 · NaN`` would otherwise reach the weights' gradient)."""
        h, t = self._flatten(hidden, target)
        keep = t != self.ignore_index
        h = torch.where(keep.unsqueeze(1), h, 0.0)
        return h, torch.where(keep, t, torch.zeros_like(t)), keep

    def _flatten(self, hidden: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        self._check_hidden(hidden)
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target must hold integer word ids, got dtype {target.dtype}")
        if target.shape != hidden.shape[:-1]:
            raise ValueError(
                f"target shape {tuple(target.shape)} must equal hidden's leading shape "
                f"{tuple(hidden.shape[:-1])} (hidden is {tuple(hidden.shape)})"
            )
        t = target.reshape(-1).long()
        check_ids(t, self.vocab_size, self.ignore_index)
        return hidden.reshape(-1, self.in_features), t


_FLOAT32_TOLERANCE = 1e-6
"""Relative difference below which two saved option values are the same option (float32 keeps
about 7 significant digits)."""


class SavedOptions:
    """For a head with options that change its distribution without being a parameter or a
    buffer (RBF's ``gamma``, spherical's ``eps``): put it before the head's base class and name
    them in ``saved_options``.

    They travel in the state dict as the module's extra state (a float64 tensor, which
    ``module.to(dtype)`` leaves alone), and loading a state dict saved with other values raises
    before anything is copied: otherwise the weights would be read under another function, with
    no warning. A state dict saved before the options were stored loads as it did then."""

    saved_options: ClassVar[tuple[str, ...]] = ()

    def get_extra_state(self) -> Tensor:
        return torch.tensor(
            [getattr(self, name) for name in self.saved_options], dtype=torch.float64
        )

    def set_extra_state(self, state: Any) -> None:
        self._check_saved_options(state)

    def _check_saved_options(self, state: Any) -> None:
        values = torch.as_tensor(state, dtype=torch.float64).reshape(-1).tolist()
        ours = [float(getattr(self, name)) for name in self.saved_options]
        if len(values) != len(ours):
            raise ValueError(
                f"this state dict stores {len(values)} option value(s) for "
                f"{type(self).__name__}, which has {len(ours)} ({', '.join(self.saved_options)})"
            )
        # Equal to float32 precision is equal: a value saved as np.float32(0.1) is the 0.1 the
        # user meant. A real difference is printed in full (repr), never as two equal strings.
        differ = [
            f"{name}={theirs!r} (this head: {mine!r})"
            for name, theirs, mine in zip(self.saved_options, values, ours, strict=True)
            if not math.isclose(theirs, mine, rel_tol=_FLOAT32_TOLERANCE)
        ]
        if differ:
            raise ValueError(
                f"this state dict was saved by a {type(self).__name__} with {', '.join(differ)}; "
                "these options change the distribution, so the weights would mean something "
                "else here. Build the head with the checkpoint's options"
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "_extra_state"
        if key in state_dict:
            self._check_saved_options(state_dict[key])  # before any weight is copied
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)


SPEC_FORMAT = 1
"""Version of :meth:`HeadSpec.to_state`'s format. 1: the options hold every keyword option of the
head as it was built. Unversioned (lm_heads 0.1 to 0.3): only the options that were passed (and
those the head chose); the others were the defaults of the release that saved it."""

RELEASE_DEFAULTS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    # The options of an unversioned spec that it did not store, per release (newest first), for
    # every head whose defaults have changed since 0.1. Options added after a release take the
    # value that computes what that release did (0.2's tails had no bias). div_value=None is
    # 0.3's rule, still today's (default_div_value).
    "adaptive": (
        ("0.3", {"div_value": None, "head_bias": True, "tail_bias": True}),
        ("0.1-0.2", {"div_value": 4.0, "head_bias": False, "tail_bias": False}),
    ),
}


@dataclass
class HeadSpec:
    """The arguments of :func:`~lm_heads.registry.build_head` that rebuild a head's structure
    (tree, clusters, cutoffs, noise table) exactly; the weights come from its state dict."""

    name: str
    in_features: int
    vocab_size: int
    counts: Tensor | None = None
    """float64 ``[V]`` as :func:`~lm_heads.counts.as_counts` returns them, or ``None``."""
    options: dict[str, Any] = field(default_factory=dict)
    """Every keyword option of the head, with the values it chose itself
    (``Head.resolved_options``)."""

    builder: ClassVar[Callable[..., Head] | None] = None
    """:func:`~lm_heads.registry.build_head`, set when the registry is imported (``import
    lm_heads`` does): base.py, below every head, cannot import the table of heads by name."""

    def __post_init__(self) -> None:
        # numpy and tensor numbers (num_classes=np.int64(7), cutoffs=np.array(...)) become plain
        # Python data, so that the spec can be stored as JSON.
        self.in_features = check_int("in_features", self.in_features)
        self.vocab_size = check_int("vocab_size", self.vocab_size)
        self.options = {key: plain_data(value) for key, value in self.options.items()}

    def build(self) -> Head:
        """A fresh head of this structure (freshly initialised weights)."""
        if HeadSpec.builder is None:
            raise RuntimeError("import lm_heads.registry before building a head from its spec")
        return HeadSpec.builder(
            self.name, self.in_features, self.vocab_size, counts=self.counts, **self.options
        )

    def to_state(self) -> dict[str, Tensor]:
        """Tensors only (``spec``: the JSON of the format version, name, sizes and options as
        bytes; ``counts``), so a state dict holding them still loads with ``weights_only=True``.
        Raises TypeError when an option is not plain data (numbers, strings, lists, dicts)."""
        meta = {
            "format": SPEC_FORMAT,
            "name": self.name,
            "in_features": self.in_features,
            "vocab_size": self.vocab_size,
            "options": self.options,
        }
        try:
            text = json.dumps(meta, allow_nan=True)
        except TypeError as error:
            raise TypeError(
                f"head {self.name!r} options {self.options} cannot be stored with the weights "
                f"({error}); use plain values (numbers, strings, lists)"
            ) from None
        state = {"spec": torch.tensor(list(text.encode()), dtype=torch.uint8)}
        if self.counts is not None:
            state["counts"] = self.counts.detach().to("cpu", torch.float64)
        return state

    @classmethod
    def from_state(
        cls, state: Mapping[str, Tensor], weights: Mapping[str, Tensor] | None = None
    ) -> HeadSpec:
        """Inverse of :meth:`to_state`, for every format since lm_heads 0.1.

        An unversioned spec gets the options it did not store from the defaults of the release
        that saved it: the one whose head has the shapes of ``weights`` (the head's state dict),
        when its releases' defaults differ. Without ``weights`` that is the newest such release,
        with a warning."""
        meta = json.loads(bytes(state["spec"].tolist()).decode())
        version = meta.get("format", 0)
        if version > SPEC_FORMAT:
            raise ValueError(
                f"this head's structure was saved in spec format {version} by a newer lm_heads "
                f"(this one reads formats up to {SPEC_FORMAT}): upgrade lm_heads to load it"
            )
        counts = state.get("counts")
        spec = cls(
            meta["name"],
            meta["in_features"],
            meta["vocab_size"],
            None if counts is None else counts.detach().to("cpu", torch.float64),
            meta["options"],
        )
        return spec if version else spec._with_release_defaults(weights)

    def _with_release_defaults(self, weights: Mapping[str, Tensor] | None) -> HeadSpec:
        """This unversioned spec with the defaults of the release that saved it."""
        releases = RELEASE_DEFAULTS.get(self.name, ())
        candidates: dict[str, HeadSpec] = {}
        for release, defaults in releases:
            options = {**defaults, **self.options}
            if options not in [spec.options for spec in candidates.values()]:
                candidates[release] = replace(self, options=options)
        if len(candidates) <= 1:
            return next(iter(candidates.values()), self)
        if not weights:
            release, spec = next(iter(candidates.items()))
            warnings.warn(
                f"this {self.name!r} head's structure was saved by lm_heads 0.3 or older, whose "
                f"releases had different defaults for options it did not store; taking those of "
                f"{release}: {spec.options}. Pass weights= (its state dict) to find its release",
                stacklevel=2,
            )
            return spec
        shapes = {key: tuple(value.shape) for key, value in weights.items()}
        for spec in candidates.values():
            try:
                head = spec.build()
            except (ValueError, TypeError):
                continue  # e.g. cutoffs that this release's div_value cannot project
            if {key: tuple(value.shape) for key, value in head.state_dict().items()} == shapes:
                return spec
        raise ValueError(
            f"this {self.name!r} head's structure was saved by lm_heads 0.3 or older (options "
            f"{self.options}), but its weights have the shapes of the defaults of none of "
            f"releases {', '.join(candidates)}; build the head with the options it was trained "
            "with and load its weights into it"
        )


def plain_data(value: Any) -> Any:
    """``value`` with integral numbers as ``int``, other reals as ``float`` (float32 ones as the
    decimal they round from: :func:`~lm_heads._check.plain_float`), tensors, arrays and tuples as
    lists, recursively: what JSON stores (anything else is returned as is)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {key: plain_data(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (numbers.Number,)):
        # Tensors and numpy arrays: floats element by element, so that each is made plain.
        if not _holds_floats(value):
            return plain_data(value.tolist())
        return plain_float(value) if value.ndim == 0 else [plain_data(item) for item in value]
    if type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    if isinstance(value, numbers.Integral) or hasattr(value, "__index__"):
        return check_int("option", value)
    if isinstance(value, numbers.Real):
        return plain_float(value)
    return value


def _holds_floats(array: Any) -> bool:
    """Whether a tensor or a numpy array has a floating-point dtype."""
    if isinstance(array, Tensor):
        return array.is_floating_point()
    return getattr(getattr(array, "dtype", None), "kind", "") == "f"


def check_ids(
    ids: Tensor, vocab_size: int, ignore_index: int | None, *, name: str = "target"
) -> None:
    """Raise if any id is outside ``[0, vocab_size)`` other than ``ignore_index`` (``None``: no
    id is exempt)."""
    bad = (ids < 0) | (ids >= vocab_size)
    message = f"{name} ids must lie in [0, {vocab_size}) (vocab_size)"
    if ignore_index is not None:
        bad &= ids != ignore_index
        message += f" or equal ignore_index={ignore_index}"
    # Eager CPU: a host check costs nothing and can name the bad id. Elsewhere, and under
    # torch.compile (where a Python branch on a tensor breaks the graph), an asynchronous check:
    # no host sync in the training step; it surfaces at the next sync.
    if ids.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            first = int(ids[bad][0])
            raise ValueError(f"{message}; found {first}. Check the tokenizer and vocab_size.")
    else:
        torch._assert_async(~bad.any(), message)


def check_finite(hidden: Tensor) -> Tensor:
    """Raise if ``hidden`` holds NaN or inf (a host sync: for debugging, not every step)."""
    bad = ~torch.isfinite(hidden)
    if bool(bad.any()):
        rows = int(bad.reshape(-1, hidden.shape[-1]).any(-1).sum())
        raise ValueError(
            f"hidden holds non-finite values in {rows} position(s); they would make the loss "
            "NaN/inf (padding positions are fine when their target is ignore_index)"
        )
    return hidden


_GUMBEL_BLOCK = 2**22
"""Uniforms drawn per block by :func:`add_gumbel_` (32 MB of float64)."""


def add_gumbel_(scores: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Add standard Gumbel noise ``−log(−log u)`` to ``scores`` in place and return it.

    ``u`` is float64 whatever the dtype of ``scores``: float32 uniforms step by 2⁻²⁴ near 1, which
    caps the noise at about 16.6 and coarsens its tail, so words more than ~16 nats below the mode
    would be drawn too rarely and never past ~19.5. float64 uniforms reach 36.7 (2⁻⁵³). They are
    drawn in blocks of 2²² so that sampling needs no float64 copy of ``scores``. ``u = 0`` gives
    ``−inf`` noise (that word loses), never NaN.
    """
    flat = scores.view(-1)
    for start in range(0, flat.numel(), _GUMBEL_BLOCK):
        block = flat[start : start + _GUMBEL_BLOCK]
        u = torch.rand(block.shape, generator=generator, device=block.device, dtype=torch.float64)
        block.add_(u.log_().neg_().log_().neg_())
    return scores


def sample_categorical(log_prob: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gumbel-max draw from rows of ``log_prob [n, V]``: device-side, no host sync."""
    dtype = torch.promote_types(log_prob.dtype, torch.float32)
    scores = log_prob.detach().to(dtype, memory_format=torch.contiguous_format, copy=True)
    return add_gumbel_(scores, generator).argmax(-1)


def at_least_float32(x: Tensor) -> Tensor:
    """float32, except that float64 stays float64 (gradcheck, float64 evaluation)."""
    return x if x.dtype == torch.float64 else x.float()


def linear_f32(hidden: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``hidden @ weightᵀ + bias`` in the autocast dtype, returned as float32 for normalisers
    (float64 stays float64)."""
    return at_least_float32(F.linear(hidden, weight, bias))
