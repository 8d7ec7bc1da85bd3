"""Word-level vocabulary: counts, frequency-sorted ids, and fast encoding via ``tokenizers``.

Lines are split on whitespace (``str.split``); each line ends with an ``<eos>`` token, as in the
classic ``word_language_model`` recipe, so WikiText-2's training split gives ``V = 33,278``
(33,277 distinct words, ``<unk>`` among them, plus ``<eos>``).

Ids are sorted by corpus frequency (most frequent first; ties keep first-occurrence order, with
``<unk>`` and ``<eos>`` placed before words of the same count). ``counts[i]`` is the training
frequency of id ``i`` *after* rare words were mapped to ``<unk>``, so ``counts`` equals
``bincount(encode_lines(train_lines))`` and can be handed to any head as ``counts=``.

``min_count`` and ``max_size`` follow the usual One Billion Word recipe: words seen fewer than
``min_count`` times, and all but the ``max_size`` most frequent entries (``max_size`` counts
``<unk>`` and ``<eos>`` too), become ``<unk>``.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.processors import TemplateProcessing
from torch import Tensor

UNK = "<unk>"
EOS = "<eos>"
_FORMAT = "lm_heads.vocabulary"
_VERSION = 1
ENCODE_CHUNK_LINES = 20_000
"""Lines per ``encode_batch`` call: bounds the Python objects alive at once (ids are copied into
a numpy buffer per chunk), so corpora of millions of lines encode in constant extra memory."""


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Vocabulary:
    """A frequency-sorted word vocabulary with ``<unk>`` and ``<eos>``.

    Build one with :meth:`build` (from text lines) or :meth:`from_counts`; save and load it as
    JSON (:meth:`save`, :meth:`load`).

    Attributes:
        itos: ``itos[i]`` is the word of id ``i``.
        stoi: word → id.
        counts: ``LongTensor [V]``, training frequency of each id.
        unk_id, eos_id: ids of ``<unk>`` and ``<eos>``.
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int] | Tensor) -> None:
        words = list(words)
        counts = torch.as_tensor(counts, dtype=torch.long).reshape(-1)
        if len(words) != counts.numel():
            raise ValueError(f"{len(words)} words but {counts.numel()} counts: give one per word")
        if bool((counts < 0).any()):
            raise ValueError("word counts must be non-negative")
        stoi = {word: i for i, word in enumerate(words)}
        if len(stoi) != len(words):
            duplicate = next(w for w, n in Counter(words).items() if n > 1)
            raise ValueError(f"duplicate word {duplicate!r} in the vocabulary")
        for special in (UNK, EOS):
            if special not in stoi:
                raise ValueError(f"the vocabulary must contain {special!r}")
        self.itos: list[str] = words
        self.stoi: dict[str, int] = stoi
        self.counts: Tensor = counts
        self.unk_id: int = stoi[UNK]
        self.eos_id: int = stoi[EOS]
        self._tokenizer: Tokenizer | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls, lines: Iterable[str], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Count the words of ``lines`` (one ``<eos>`` per line) and keep the frequent ones."""
        counter: Counter[str] = Counter()
        num_lines = 0
        for chunk in _chunks(lines, ENCODE_CHUNK_LINES):
            num_lines += len(chunk)
            # Counter.update over a flat iterator runs in C: ~10^7 words/s.
            counter.update(itertools.chain.from_iterable(line.split() for line in chunk))
        counter[EOS] += num_lines
        return cls.from_counts(counter, min_count=min_count, max_size=max_size)

    @classmethod
    def from_counts(
        cls, counts: dict[str, int], min_count: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Build from word → count (insertion order breaks ties); rare words fold into ``<unk>``."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 2
        ):
            raise ValueError(
                "max_size must be None or an int >= 2 (it counts <unk> and <eos>), "
                f"got {max_size!r}"
            )
        unk_count = int(counts.get(UNK, 0))
        eos_count = int(counts.get(EOS, 0))
        words = [(w, int(c)) for w, c in counts.items() if w not in (UNK, EOS)]
        kept = [(w, c) for w, c in words if c >= min_count]
        unk_count += sum(c for _, c in words if c < min_count)
        # sorted() is stable: ties keep insertion (= first occurrence) order.
        kept.sort(key=lambda wc: -wc[1])
        if max_size is not None and len(kept) > max_size - 2:
            unk_count += sum(c for _, c in kept[max_size - 2 :])
            kept = kept[: max_size - 2]
        entries = [(UNK, unk_count), (EOS, eos_count), *kept]
        entries.sort(key=lambda wc: -wc[1])
        return cls([w for w, _ in entries], [c for _, c in entries])

    # ------------------------------------------------------------------ using
    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: object) -> bool:
        return word in self.stoi

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, tokens={int(self.counts.sum())})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.itos == other.itos and torch.equal(self.counts, other.counts)

    @property
    def tokenizer(self) -> Tokenizer:
        """A ``tokenizers`` WordLevel tokenizer for this vocabulary (appends ``<eos>``)."""
        if self._tokenizer is None:
            tokenizer = Tokenizer(WordLevel(self.stoi, unk_token=UNK))
            tokenizer.post_processor = TemplateProcessing(
                single=f"$A {EOS}", special_tokens=[(EOS, self.eos_id)]
            )
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def dtype(self) -> np.dtype:
        """The narrowest of int32/int64 that holds every id."""
        return np.dtype(np.int32 if len(self) < 2**31 else np.int64)

    def encode_chunks(self, lines: Iterable[str]) -> Iterator[np.ndarray]:
        """Yield the ids of ``lines`` (each followed by ``<eos>``), one array per chunk of lines."""
        # A dict lookup per word is ~10x faster here than ``Tokenizer.encode_batch`` (whose
        # Encoding objects carry offsets and masks we do not need); ``tokenizer`` gives the same
        # ids (tested) for users who want a ``tokenizers`` object.
        get, unk, eos = self.stoi.get, itertools.repeat(self.unk_id), [EOS]
        for chunk in _chunks(lines, ENCODE_CHUNK_LINES):
            words = itertools.chain.from_iterable(line.split() + eos for line in chunk)
            yield np.fromiter(map(get, words, unk), dtype=self.dtype)

    def encode_lines(self, lines: Iterable[str]) -> np.ndarray:
        """Ids of ``lines`` as one flat array (int32 unless ``V >= 2**31``), ``<eos>`` per line."""
        parts = list(self.encode_chunks(lines))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON ``{"words": [...], "counts": [...]}`` atomically (tmp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "words": self.itos,
            "counts": self.counts.tolist(),
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a file written by :meth:`save`; a damaged file raises ``ValueError`` naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} does not exist")
        try:
            with path.open(encoding="utf-8") as handle:
                payload = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"vocabulary file {path} is corrupt ({error}); delete it to rebuild"
            ) from error
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{path} is not an lm_heads vocabulary file (no format={_FORMAT!r})")
        words, counts = payload.get("words"), payload.get("counts")
        if not isinstance(words, list) or not isinstance(counts, list):
            raise ValueError(f"vocabulary file {path} lacks the 'words' and 'counts' lists")
        try:
            return cls(words, counts)
        except (ValueError, TypeError) as error:
            raise ValueError(f"vocabulary file {path} is invalid: {error}") from error
