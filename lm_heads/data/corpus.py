r"""Text corpora drawn from a :class:`SyntheticLanguage`, shaped like One Billion Word.

``write_corpus(root, tokens=100_000_000)`` writes::

    root/train/train-00001-of-00100.txt ...   training shards (LM1B ships 100)
    root/valid.txt  root/test.txt             held-out text, independent draws
    root/corpus.json                          parameters, entropy floor, realised vocabulary

Words are plain tokens (``w0`` most frequent … ``w{V-1}``), one sentence per line, and the
``LMDataModule`` reads the folder as ``--data root``. Word frequencies are exactly Zipfian
(exponent 1.1 by default). Unless ``vocab_size`` is given it is chosen so that the *expected*
number of distinct words in the training text equals ``types`` (793,471 by default, LM1B's
vocabulary): a Zipfian tail is only partly observed, so ``V`` must exceed the target a little.

Sentence lengths are ``max(1, round(LogNormal(μ, σ)))`` words with mean about
``mean_sentence_length`` (LM1B averages ~27). They are independent of the words, and the word
chain runs on across line ends, so the entropy rate of the token stream *with* one ``<eos>`` per
line is exactly

.. math:: H_{eos} = \frac{\bar L\,H + H(L)}{\bar L + 1}

(``H`` the language's entropy rate, ``H(L)`` the entropy of the length law, ``\bar L`` its mean):
``exp(H_eos)`` is the perplexity floor of the cache built from the folder. With ``num_classes=1``
the words are i.i.d. and ``H`` is the unigram entropy.

Everything is a deterministic function of the arguments: each piece of text is drawn with a
seed derived from ``(seed, split, shard, piece)``, so a shard's content does not depend on how
many others are written before it.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lm_heads.data.synthetic import WORD_PREFIX, SyntheticLanguage

LM1B_TYPES = 793_471
"""One Billion Word's vocabulary: words seen at least 3 times, with ``<S>``, ``</S>``, ``<UNK>``."""
PIECE_TOKENS = 1 << 20
"""Words drawn and rendered at once: bounds memory (~60 bytes per word) whatever the corpus size."""
_SPLIT_SEEDS = {"train": 0, "valid": 1, "test": 2}


def zipf_unigram(vocab_size: int, exponent: float) -> np.ndarray:
    probs = np.arange(1, vocab_size + 1, dtype=np.float64) ** -exponent
    return probs / probs.sum()


def expected_types(unigram: np.ndarray, tokens: int) -> float:
    """Expected number of distinct words in ``tokens`` i.i.d. draws from ``unigram``.

    Exact for i.i.d. words and for the class chain too, whose stationary word law is the same
    unigram (its draws are dependent only through the class, which barely changes the count).
    """
    return float(-np.expm1(tokens * np.log1p(-unigram)).sum())


def vocab_size_for_types(types: int, tokens: int, exponent: float) -> int:
    """The smallest Zipf vocabulary whose expected realised vocabulary at ``tokens`` is ``types``
    (to 0.01%)."""
    if types < 1 or tokens < 1:
        raise ValueError(f"types and tokens must be positive, got {types} and {tokens}")
    if expected_types(zipf_unigram(types, exponent), tokens) < 0.5 * types:
        raise ValueError(
            f"{tokens} tokens are far too few to show {types} distinct words of a Zipf law with "
            f"exponent {exponent}; ask for more tokens or fewer types"
        )
    low, high = types, 2 * types
    while expected_types(zipf_unigram(high, exponent), tokens) < types:
        low, high = high, 2 * high
        if high > 64 * types:
            raise ValueError(
                f"{tokens} tokens cannot show {types} distinct words of a Zipf law with exponent "
                f"{exponent}: the expected count saturates; ask for more tokens or fewer types"
            )
    while high - low > max(1, types // 10_000):
        middle = (low + high) // 2
        if expected_types(zipf_unigram(middle, exponent), tokens) < types:
            low = middle
        else:
            high = middle
    return high


def lognormal_mu(mean: float, sigma: float) -> float:
    """``μ`` of a log-normal with the given mean and ``σ``."""
    return math.log(mean) - sigma**2 / 2


def length_law(mean: float, sigma: float, max_length: int) -> np.ndarray:
    """``P(L = l)`` for ``l = 0 … max_length`` (index 0 is unused, always 0).

    ``L = max(1, round(X))`` with ``X ~ LogNormal(μ, σ)``, cut at ``max_length`` (the lines
    longer than that are drawn again, so the law is renormalised).
    """
    mu = lognormal_mu(mean, sigma)
    # round(X) = l  <=>  X in [l - 0.5, l + 0.5)
    edges = np.arange(max_length + 1, dtype=np.float64) + 0.5
    with np.errstate(divide="ignore"):
        z = (np.log(edges) - mu) / (sigma * math.sqrt(2.0))
    cdf = 0.5 * (1.0 + np.array([math.erf(v) for v in z]))
    probs = np.zeros(max_length + 1)
    probs[1] = cdf[1]  # round(X) = 0 becomes 1
    probs[2:] = np.diff(cdf[1:])
    return probs / probs.sum()


def _entropy(probs: np.ndarray) -> float:
    positive = probs[probs > 0]
    return float(-(positive * np.log(positive)).sum())


class SentenceCorpus:
    """A synthetic language cut into sentence lines, with its exact perplexity floor.

    Args:
        vocab_size: words ``V``; ``None`` chooses it from ``types`` and ``tokens``.
        types: expected distinct training words when ``vocab_size`` is ``None``.
        tokens: training words (``<eos>`` not counted).
        num_classes: latent classes of the language (1: i.i.d. words).
        zipf_exponent, seed: as in :class:`SyntheticLanguage`.
        mean_sentence_length, sentence_sigma, max_sentence_length: the length law.
    """

    def __init__(
        self,
        tokens: int,
        *,
        vocab_size: int | None = None,
        types: int = LM1B_TYPES,
        num_classes: int = 256,
        zipf_exponent: float = 1.1,
        mean_sentence_length: float = 27.0,
        sentence_sigma: float = 0.5,
        max_sentence_length: int = 400,
        seed: int = 0,
    ) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise ValueError(f"tokens must be a positive int, got {tokens!r}")
        if not mean_sentence_length >= 1:
            raise ValueError(f"mean_sentence_length must be >= 1, got {mean_sentence_length}")
        if not sentence_sigma > 0:
            raise ValueError(f"sentence_sigma must be > 0, got {sentence_sigma}")
        if max_sentence_length < 2 * mean_sentence_length:
            raise ValueError(
                f"max_sentence_length ({max_sentence_length}) must be at least twice the mean "
                f"({mean_sentence_length})"
            )
        if vocab_size is None:
            vocab_size = vocab_size_for_types(types, tokens, zipf_exponent)
        self.tokens = tokens
        self.seed = int(seed)
        self.language = SyntheticLanguage(
            vocab_size, min(num_classes, vocab_size), zipf_exponent=zipf_exponent, seed=seed
        )
        self.mean_sentence_length = float(mean_sentence_length)
        self.sentence_sigma = float(sentence_sigma)
        self.max_sentence_length = int(max_sentence_length)
        self.lengths = length_law(mean_sentence_length, sentence_sigma, max_sentence_length)
        self._length_cum = np.cumsum(self.lengths)
        self._length_cum[-1] = 1.0
        words = [f"{WORD_PREFIX}{i} " for i in range(vocab_size)]
        encoded = [word.encode("ascii") for word in words]
        self._word_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._word_len = np.array([len(word) for word in encoded], dtype=np.int64)
        self._word_start = np.concatenate([[0], np.cumsum(self._word_len)[:-1]])

    # ------------------------------------------------------------------ facts
    @property
    def vocab_size(self) -> int:
        return self.language.vocab_size

    @property
    def mean_length(self) -> float:
        """``E[L]`` of the (discretised, cut) length law, words per line."""
        return float(np.arange(self.lengths.size) @ self.lengths)

    @property
    def length_entropy(self) -> float:
        """``H(L)``, nats per line."""
        return _entropy(self.lengths)

    @property
    def unigram_entropy(self) -> float:
        return _entropy(self.language.unigram)

    @property
    def entropy_rate(self) -> float:
        """Nats per token of the stream *with* ``<eos>`` (see the module docstring)."""
        mean = self.mean_length
        return (mean * self.language.entropy_rate + self.length_entropy) / (mean + 1.0)

    @property
    def perplexity_floor(self) -> float:
        return math.exp(self.entropy_rate)

    def expected_types(self, tokens: int | None = None) -> float:
        return expected_types(self.language.unigram, self.tokens if tokens is None else tokens)

    # ------------------------------------------------------------------ drawing
    def _rng(self, split: str, shard: int, piece: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 7, _SPLIT_SEEDS[split], shard, piece])

    def sentence_lengths(self, words: int, rng: np.random.Generator) -> np.ndarray:
        """Line lengths summing to exactly ``words`` (the last line is cut short if need be)."""
        draws = max(16, int(words / self.mean_length * 1.1) + 16)
        lengths = np.zeros(0, dtype=np.int64)
        while lengths.sum() < words:
            more = np.searchsorted(self._length_cum, rng.random(draws), side="right")
            lengths = np.concatenate([lengths, np.maximum(more, 1)])
        ends = np.cumsum(lengths)
        last = int(np.searchsorted(ends, words))  # first line reaching the total
        lengths = lengths[: last + 1]
        lengths[-1] -= int(ends[last]) - words
        return lengths

    def render(self, ids: np.ndarray, lengths: np.ndarray) -> bytes:
        """ASCII text: the words of ``ids`` separated by spaces, a newline after each line."""
        sizes = self._word_len[ids]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        # Byte k of the output is byte (k - starts[j]) of word j, for the word j that holds it.
        source = np.repeat(self._word_start[ids] - starts, sizes)
        source += np.arange(source.size)
        text = self._word_bytes[source]
        text[ends[np.cumsum(lengths) - 1] - 1] = ord("\n")  # the space after a line's last word
        return text.tobytes()

    def pieces(self, split: str, shard: int, words: int) -> list[tuple[int, int]]:
        """``(piece, words)`` for the pieces of one file."""
        count = max(1, math.ceil(words / PIECE_TOKENS))
        sizes = np.full(count, words // count)
        sizes[: words % count] += 1
        return [(index, int(size)) for index, size in enumerate(sizes)]

    def draw(self, split: str, shard: int, piece: int, words: int) -> tuple[np.ndarray, np.ndarray]:
        """``(word ids, line lengths)`` of one piece."""
        rng = self._rng(split, shard, piece)
        sample_seed = int(rng.integers(2**62))
        ids = self.language.sample(words, seed=sample_seed)
        return ids, self.sentence_lengths(words, rng)

    def write_file(self, path: Path, split: str, shard: int, words: int) -> np.ndarray:
        """Write one file atomically; returns its word counts ``[V]``."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as handle:
                for piece, size in self.pieces(split, shard, words):
                    ids, lengths = self.draw(split, shard, piece, size)
                    counts += np.bincount(ids, minlength=self.vocab_size)
                    handle.write(self.render(ids, lengths))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return counts

    def describe(self) -> dict[str, Any]:
        lang = self.language
        return {
            "generator": "lm_heads.data.corpus.SentenceCorpus",
            "tokens": self.tokens,
            "vocab_size": lang.vocab_size,
            "num_classes": lang.num_classes,
            "zipf_exponent": lang.zipf_exponent,
            "concentration": lang.concentration,
            "restart": lang.restart,
            "seed": self.seed,
            "mean_sentence_length": self.mean_sentence_length,
            "sentence_sigma": self.sentence_sigma,
            "max_sentence_length": self.max_sentence_length,
            "realised_mean_length": self.mean_length,
            "word_entropy_rate_nats": lang.entropy_rate,
            "unigram_entropy_nats": self.unigram_entropy,
            "length_entropy_nats": self.length_entropy,
            "entropy_rate_with_eos_nats": self.entropy_rate,
            "perplexity_floor": self.perplexity_floor,
            "unigram_perplexity": math.exp(self.unigram_entropy),
            "expected_train_types": self.expected_types(),
        }


def write_corpus(
    root: str | os.PathLike[str],
    tokens: int,
    *,
    shards: int = 100,
    heldout_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Write a LM1B-shaped corpus to ``root`` (see the module docstring); returns ``corpus.json``.

    Args:
        tokens: training words in all (``<eos>`` not counted).
        shards: training files in ``root/train/`` (``1``: a single ``root/train.txt``).
        heldout_tokens: words of ``valid.txt`` and of ``test.txt`` (default ``tokens // 500``,
            at least 1,000).
        progress: called as ``progress(words_written, words_total)`` after each file.
        options: :class:`SentenceCorpus` arguments.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    if shards > tokens:
        raise ValueError(f"{shards} shards need at least as many tokens, got {tokens}")
    heldout = max(tokens // 500, 1000) if heldout_tokens is None else heldout_tokens
    if heldout < 1:
        raise ValueError(f"heldout_tokens must be positive, got {heldout}")
    started = time.perf_counter()
    corpus = SentenceCorpus(tokens, **options)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        files = [(root / "train.txt", 0, tokens)]
    else:
        (root / "train").mkdir(exist_ok=True)
        sizes = np.full(shards, tokens // shards)
        sizes[: tokens % shards] += 1
        files = [
            (root / "train" / f"train-{i + 1:05d}-of-{shards:05d}.txt", i, int(size))
            for i, size in enumerate(sizes)
        ]
    total = tokens + 2 * heldout
    written = 0
    counts = np.zeros(corpus.vocab_size, dtype=np.int64)
    for path, shard, size in files:
        counts += corpus.write_file(path, "train", shard, size)
        written += size
        if progress is not None:
            progress(written, total)
    for split in ("valid", "test"):
        corpus.write_file(root / f"{split}.txt", split, 0, heldout)
        written += heldout
        if progress is not None:
            progress(written, total)
    info = corpus.describe()
    info.update(
        shards=shards,
        heldout_tokens=heldout,
        train_types=int(np.count_nonzero(counts)),
        cache_vocab_size=int(np.count_nonzero(counts)) + 2,  # + <unk> and <eos>
        seconds=round(time.perf_counter() - started, 2),
    )
    (root / "corpus.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return info
