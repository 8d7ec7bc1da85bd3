"""The data options, declared once: the fields of :class:`DataOptions` are ``LMDataModule``'s
parameters (it is a subclass) and ``recipes/lm.py``'s data options (``batch_size`` →
``--batch-size``), with one type, one default and (the docstring under each) one help text.

``metadata["minimum"]`` is an integer option's least value: ``LMDataModule`` raises ``ValueError``
below it, and the recipe's command line refuses it while parsing. This module imports nothing
but the standard library: the command line reads it before torch loads (seconds).
"""

from __future__ import annotations

import os
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any

POSITIVE: dict[str, Any] = {"minimum": 1}
NON_NEGATIVE: dict[str, Any] = {"minimum": 0}


@dataclass(eq=False)  # eq=False: a data module compares and hashes by identity
class DataOptions:
    """What ``LMDataModule`` reads and how it batches it."""

    data: str | os.PathLike[str] = "auto"
    """auto | synthetic | wikitext-2 | wikitext-103 | lm1b | a directory with train/valid/test
    files (auto: WikiText-2 from $LM_HEADS_DATA, the recipes' ../shared/data, or the Hub, else
    synthetic)"""
    batch_size: int = field(default=20, metadata=POSITIVE)
    """windows per step per rank"""
    bptt: int = field(default=35, metadata=POSITIVE)
    """tokens per window"""
    _: KW_ONLY
    eval_batch_size: int | None = field(default=10, metadata=POSITIVE)
    """validation/test streams, split across ranks (none: --batch-size)"""
    cache_dir: str | os.PathLike[str] | None = None
    """token/vocab cache folder"""
    min_count: int = field(default=1, metadata=POSITIVE)
    """rarer words become <unk>"""
    max_size: int | None = field(default=None, metadata=POSITIVE)
    """keep the top-N words"""
    synthetic_vocab_size: int = field(default=10_000, metadata=POSITIVE)
    """synthetic words"""
    synthetic_classes: int = field(default=64, metadata=POSITIVE)
    """latent classes of the synthetic language"""
    synthetic_tokens: int = field(default=1_000_000, metadata=POSITIVE)
    """synthetic train tokens"""
    seed: int = 1234
    """random seed"""
    shuffle: bool = False
    """permute training batches per epoch (breaks recurrent state carry-over)"""
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)
    """DataLoader workers"""
    encoding: str = "utf-8"
    """text encoding of local data files"""
    build_workers: int | None = field(default=None, metadata=POSITIVE)
    """processes that count and encode a local corpus's files when the cache is built (none:
    one per usable core, at most one per file)"""
    progress: bool = True
    """print the cache build's progress (tokens/s, ETA) to stderr"""
    lock_timeout: float | None = None
    """longest wait, in seconds, for another process building the same cache entry (none:
    $LM_HEADS_CACHE_LOCK_TIMEOUT or 4 h)"""

    def __post_init__(self) -> None:
        for f in fields(self):
            minimum = f.metadata.get("minimum")
            value = getattr(self, f.name)
            optional = "None" in str(f.type)  # the annotations are strings (see the import)
            if minimum is None or (value is None and optional):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                none = "None or " if optional else ""
                kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
                raise ValueError(f"{f.name} must be {none}{kind}, got {value!r}")
