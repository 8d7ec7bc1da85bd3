"""``LMDataModule``: word-level LM data as contiguous BPTT streams, DDP-sharded and resumable.

Batching follows the classic ``word_language_model`` recipe. A split's token ids are cut into
``S = batch_size * world_size`` contiguous streams; rank ``r`` owns streams ``r*B … r*B+B-1``, and
batch ``k`` holds positions ``k*T … k*T+T-1`` of each of its streams (``T = bptt``), so a recurrent
model can carry its state from batch ``k`` to ``k+1``. Targets are the ids at those positions and
inputs the ids one position earlier (``<eos>`` before the very first token), so every token of a
split is a target exactly once.

* Training keeps full batches only (the ragged tail, fewer than ``S*T`` tokens, is dropped) and
  iterates batch indices in order; ``shuffle=True`` permutes them per epoch with a permutation
  seeded by ``(seed, epoch)``, identical on every rank (it breaks state carry-over, so it is off
  by default). The train Dataset is map-style over batch indices: the order is a pure function
  of ``(seed, epoch, world_size)``, and a fit restarted mid-epoch from a checkpoint skips the
  batches the checkpoint had already consumed.
* Validation/test keep every token: a split is cut into ``E = eval_batch_size`` streams whatever
  the world size, with ``ceil(N/E)`` positions each; the missing ones at the end are padding whose
  target is ``ignore_index`` (-100). Under DDP each rank takes a contiguous share of those ``E``
  streams (rows) and runs every batch in order, so a recurrent model carries its state along each
  stream exactly as in one process, summing NLL and token counts over ranks gives the very
  perplexity of a single-process run, and all ranks run the same number of batches.

The samplers are ``DistributedSampler`` s with one replica: each rank already reads only its own
streams, and Lightning leaves a dataloader alone when its sampler is a ``DistributedSampler``
(it would otherwise split batch indices across ranks a second time).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lm_heads.data import build
from lm_heads.data.cache import CacheError, TokenCache
from lm_heads.data.options import DataOptions
from lm_heads.data.sources import (
    HUB_DATASETS,
    DataUnavailableError,
    HubTextSource,
    LocalTextSource,
    TextSource,
    find_local,
    local_search_roots,
    resolve_named,
)
from lm_heads.data.synthetic import SyntheticLanguage
from lm_heads.data.vocab import EOS, UNK, Vocabulary

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
DATA_CHOICES = ("auto", "synthetic", *HUB_DATASETS)


def _reported(chunks: Iterator[np.ndarray], progress: build.Progress) -> Iterator[np.ndarray]:
    for chunk in chunks:
        progress.update(int(chunk.size))
        yield chunk


class StreamBatches(Dataset):
    """Map-style dataset: item ``k`` is batch ``k`` of this rank's contiguous streams.

    Args:
        ids: the split's token ids ``[N]`` (may be a read-only memmap).
        batch_size: streams per rank ``B``.
        bptt: positions per batch ``T``.
        rank, world_size: this rank owns streams ``rank*B … rank*B+B-1`` of ``B*world_size``.
        pad_tail: False (training): drop the tail that does not fill whole batches.
            True (evaluation): keep every token, padding targets with ``ignore_index``.
        start_id: input fed before the first token of the split (``<eos>``).
        rows: keep only these of the ``batch_size`` streams (evaluation shares under DDP).

    Items are ``(inputs [B, T], targets [B, T])`` int64 tensors.
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        bptt: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        pad_tail: bool = False,
        start_id: int = 0,
        ignore_index: int = IGNORE_INDEX,
        rows: slice | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        self.ids = ids
        self.batch_size = batch_size
        self.bptt = bptt
        self.pad_tail = pad_tail
        self.start_id = start_id
        self.ignore_index = ignore_index
        streams = batch_size * world_size
        total = int(ids.shape[0])
        if pad_tail:
            self.stream_len = math.ceil(total / streams)
            self.num_batches = math.ceil(self.stream_len / bptt) if total else 0
        else:
            self.stream_len = total // streams
            self.num_batches = self.stream_len // bptt
            if self.num_batches == 0:
                raise ValueError(
                    f"{total} training tokens are too few for one batch of batch_size {batch_size}"
                    f" x world_size {world_size} streams x bptt {bptt}; lower batch_size or bptt"
                )
        self.first_stream = rank * batch_size
        self.stream_starts = (self.first_stream + np.arange(batch_size)) * self.stream_len
        if rows is not None:
            self.stream_starts = self.stream_starts[rows]
        self.num_targets = total if pad_tail else self.num_batches * bptt * streams

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
        offsets = index * self.bptt + np.arange(self.bptt)
        positions = self.stream_starts[:, None] + offsets[None, :]
        valid = (offsets < self.stream_len)[None, :] & (positions < self.ids.shape[0])
        safe = np.where(valid, positions, 0)
        targets = np.asarray(self.ids[safe], dtype=np.int64)
        inputs = np.asarray(self.ids[np.maximum(safe - 1, 0)], dtype=np.int64)
        inputs[positions == 0] = self.start_id
        inputs[~valid] = self.start_id
        targets[~valid] = self.ignore_index
        return torch.from_numpy(inputs), torch.from_numpy(targets)


class BatchOrderSampler(DistributedSampler):
    """Batch indices in order (or a ``(seed, epoch)`` permutation), the same on every rank.

    ``skip`` drops the first batches of the next iteration only: it is how a mid-epoch restart
    resumes where the checkpoint stopped. ``epoch_fn``, when given, supplies the epoch at the
    start of each iteration (the trainer's ``current_epoch``): Lightning's own ``set_epoch``
    call counts a checkpoint's unfinished epoch as processed, which would shift the permutation
    of every epoch after a mid-epoch resume.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        # One replica: sharding across ranks happens in StreamBatches, not here.
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
        self.skip = 0
        self.epoch_fn = epoch_fn

    def __iter__(self) -> Iterator[int]:
        if self.epoch_fn is not None:
            self.epoch = int(self.epoch_fn())
        order = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LMDataModule(DataOptions, L.LightningDataModule):
    """Word-level language-modelling data for Lightning (or plain loops).

    Its parameters are the fields of :class:`~lm_heads.data.options.DataOptions` (``data``,
    ``batch_size`` and ``bptt`` also by position), with the defaults ``recipes/lm.py`` runs:
    ``data`` is ``"auto"`` (WikiText-2 if a local copy or the Hub has it, else the synthetic
    language), ``"synthetic"``, ``"wikitext-2"``, ``"wikitext-103"``, ``"lm1b"`` (local copy
    first, then the Hub), or a folder with train/valid/test text files (a split may be sharded:
    a ``train/`` folder of files, as One Billion Word). ``batch_size`` is streams per rank (the
    global batch is ``batch_size * world_size``); the ``eval_batch_size`` validation/test
    streams are split across ranks, so there must be at least as many as ranks. The synthetic
    language gets a tenth of ``synthetic_tokens`` each for validation and test; ``seed`` seeds
    it and the shuffle. ``cache_dir`` defaults to ``$LM_HEADS_CACHE`` or ``~/.cache/lm_heads``.

    Since 0.3 the defaults are the recipe's (``batch_size`` 20, not 32; ``eval_batch_size`` 10,
    not ``batch_size``; ``synthetic_tokens`` 1M, not 2M; ``seed`` 1234, not 0), declared once.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        L.LightningDataModule.__init__(self)
        self.data = os.fspath(self.data)
        self.synthetic_classes = min(self.synthetic_classes, self.synthetic_vocab_size)

        self.description: str = ""
        self.source: TextSource | None = None
        self.language: SyntheticLanguage | None = None
        self.vocab: Vocabulary | None = None
        self.splits: dict[str, np.ndarray] = {}
        self._cache: TokenCache | None = None
        self._train_sampler: BatchOrderSampler | None = None

    # ------------------------------------------------------------------ public facts
    @property
    def eval_streams(self) -> int:
        """Validation/test streams in all: ``eval_batch_size``, or ``batch_size`` when ``None``."""
        return self.eval_batch_size or self.batch_size

    @property
    def vocab_size(self) -> int:
        return len(self._require_vocab())

    @property
    def counts(self) -> torch.Tensor:
        """Training counts of each word id, ``LongTensor [V]`` (for heads' ``counts=``)."""
        return self._require_vocab().counts

    @property
    def entropy_floor_ppl(self) -> float | None:
        """Exact perplexity floor of the synthetic language; ``None`` for real text."""
        return self.language.perplexity_floor if self.language is not None else None

    @property
    def similarity_pairs(self) -> list[tuple[str, str, float]] | None:
        """Ground-truth word-similarity pairs of the synthetic language; ``None`` for real text."""
        return self.language.similarity_pairs() if self.language is not None else None

    @property
    def data_dir(self) -> Path | None:
        """The local data folder, if the data came from one (SimLex-999 may sit beside it)."""
        self._resolve()
        return self.source.data_dir if self.source is not None else None

    def _require_vocab(self) -> Vocabulary:
        if self.vocab is None:
            raise RuntimeError("call prepare_data() and setup() before using the vocabulary")
        return self.vocab

    # ------------------------------------------------------------------ resolution
    def _resolve(self) -> TokenCache:
        """Pick the source (once) and the cache entry; cheap unless the Hub must be probed."""
        if self._cache is not None:
            return self._cache
        data = os.fspath(self.data)
        vocab_opts = {"min_count": self.min_count, "max_size": self.max_size}
        if data == "synthetic":
            self._use_synthetic("requested")
        elif data in HUB_DATASETS:
            self.source = resolve_named(data)
            self.description = f"data: {self.source.description}"
        elif data == "auto":
            self._resolve_auto(vocab_opts)
        else:
            path = Path(data).expanduser()
            if not path.exists():
                raise DataUnavailableError(
                    f"data={data!r} is neither one of {', '.join(DATA_CHOICES)} nor an existing "
                    "directory with train/valid/test files"
                )
            self.source = LocalTextSource.open(path, encoding=self.encoding)
            self.description = f"data: {self.source.description}"
        if self.language is not None:
            self._cache = TokenCache(self.cache_dir, "synthetic", self._synthetic_key())
        else:
            assert self.source is not None
            self._cache = TokenCache(
                self.cache_dir, self.source.name, {"source": self.source.key, **vocab_opts}
            )
        for path in self._cache.remove_stale_temporaries():
            log.info("removed %s, left by an interrupted cache build", path)
        return self._cache

    def _resolve_auto(self, vocab_opts: dict[str, Any]) -> None:
        local = find_local("wikitext-2")
        if local is not None:
            self.source = LocalTextSource.open(local, name="wikitext-2")
            self.description = f"data: {self.source.description}"
            return
        hub = HubTextSource.named("wikitext-2")
        cached = TokenCache(self.cache_dir, hub.name, {"source": hub.key, **vocab_opts})
        if cached.complete():
            self.source = hub
            self.description = f"data: {hub.description}, cached in {cached.path}"
            return
        try:
            hub.check()
        except DataUnavailableError as error:
            roots = ", ".join(str(r / "wikitext-2") for r in local_search_roots())
            first = str(error).split(";")[0]
            self._use_synthetic(f"WikiText-2 not found: no local copy in {roots}; {first}")
            return
        self.source = hub
        self.description = f"data: {hub.description}"

    def _use_synthetic(self, why: str) -> None:
        self.language = SyntheticLanguage(
            self.synthetic_vocab_size, self.synthetic_classes, seed=self.seed
        )
        lang = self.language
        self.description = (
            f"data: synthetic language (V={lang.vocab_size}, {lang.num_classes} classes, "
            f"{self.synthetic_tokens} training tokens, seed {lang.seed}, perplexity floor "
            f"{lang.perplexity_floor:.2f}; {why})"
        )

    def _synthetic_key(self) -> dict[str, Any]:
        lang = self.language
        assert lang is not None
        return {
            "kind": "synthetic",
            "vocab_size": lang.vocab_size,
            "classes": lang.num_classes,
            "zipf": lang.zipf_exponent,
            "concentration": lang.concentration,
            "restart": lang.restart,
            "seed": lang.seed,
            "tokens": self.synthetic_tokens,
        }

    # ------------------------------------------------------------------ building
    def _build(self, cache: TokenCache) -> None:
        if self.language is not None:
            self._build_synthetic(cache)
            return
        source = self.source
        assert source is not None
        log.info("building vocabulary and token cache for %s in %s", source.description, cache.path)
        if isinstance(source, LocalTextSource):
            self._build_local(source, cache)
            return
        progress = build.Progress("vocabulary", enabled=self.progress, unit="lines")
        vocab = Vocabulary.build(
            build.report_lines(source.lines("train"), progress),
            min_count=self.min_count,
            max_size=self.max_size,
        )
        progress.close()
        cache.write_vocab(vocab)
        lengths = {}
        progress = build.Progress("token cache", enabled=self.progress)
        for split in ("train", "valid", "test"):
            if source.has_split(split):
                chunks = vocab.encode_chunks(source.lines(split))
                lengths[split] = cache.write_split(split, _reported(chunks, progress), vocab.dtype)
        progress.close()
        cache.finish(lengths, {"description": source.description})

    def _build_local(self, source: LocalTextSource, cache: TokenCache) -> None:
        """Block-wise reading, shards in parallel (:mod:`lm_heads.data.build`)."""
        splits = [s for s in ("train", "valid", "test") if source.has_split(s)]
        files = {split: source.split_files(split) for split in splits}
        size = {split: sum(f.stat().st_size for f in files[split]) for split in splits}
        workers = self.build_workers or build.default_workers(len(files["train"]))
        progress = build.Progress("vocabulary", size["train"], enabled=self.progress)
        vocab = build.build_vocabulary(
            files["train"], source.encoding, min_count=self.min_count, max_size=self.max_size,
            workers=workers, progress=progress,
        )  # fmt: skip
        progress.close()
        cache.write_vocab(vocab)
        lengths = {}
        progress = build.Progress("token cache", sum(size.values()), enabled=self.progress)
        for split in splits:
            chunks = build.encode_files(
                vocab, files[split], source.encoding, workers=workers, scratch=cache.path,
                progress=progress,
            )  # fmt: skip
            lengths[split] = cache.write_split(split, chunks, vocab.dtype)
        progress.close()
        cache.finish(lengths, {"description": source.description, "build_workers": workers})

    def _build_synthetic(self, cache: TokenCache) -> None:
        lang = self.language
        assert lang is not None
        held_out = max(self.synthetic_tokens // 10, 1)
        sample = lang.sample(self.synthetic_tokens + 2 * held_out)
        train = sample[: self.synthetic_tokens]
        counts = np.bincount(train, minlength=lang.vocab_size)
        # Ids sorted by training frequency like real data; <unk>/<eos> never occur (count 0).
        order = np.argsort(-counts, kind="stable")
        # Every word stays in the vocabulary, even one the training sample missed (count 0).
        words = [f"w{i}" for i in order] + [UNK, EOS]
        vocab = Vocabulary(words, torch.from_numpy(np.append(counts[order], [0, 0])))
        remap = np.array([vocab.stoi[f"w{i}"] for i in range(lang.vocab_size)], dtype=np.int64)
        cache.write_vocab(vocab)
        bounds = {
            "train": (0, self.synthetic_tokens),
            "valid": (self.synthetic_tokens, self.synthetic_tokens + held_out),
            "test": (self.synthetic_tokens + held_out, len(sample)),
        }
        lengths = {
            split: cache.write_split(split, [remap[sample[lo:hi]]], vocab.dtype)
            for split, (lo, hi) in bounds.items()
        }
        cache.finish(lengths, {"description": self.description})

    def _ensure_built(self, cache: TokenCache) -> None:
        """Build ``cache`` unless complete; one process builds, the others wait for it."""
        if cache.complete():
            return
        with cache.build_lock(self.lock_timeout, on_wait=log.warning) as mine:
            if mine:
                self._build(cache)

    def _load_or_build(self) -> None:
        cache = self._resolve()
        self._ensure_built(cache)
        try:
            vocab, splits, _ = cache.load()
        except CacheError as error:
            log.warning("%s; rebuilding it", error)
            cache.clear()
            self._ensure_built(cache)
            vocab, splits, _ = cache.load()
        self.vocab, self.splits = vocab, splits

    def prepare_data(self) -> None:
        """Build the vocabulary and token-id cache once.

        Lightning calls this on local rank 0 of each node; concurrent calls for the same entry
        (ranks, nodes sharing the cache folder, other runs) build it once: the others wait.
        """
        self._ensure_built(self._resolve())

    def setup(self, stage: str | None = None) -> None:
        """Load (memory-map) the cache; builds it when ``prepare_data`` was not called."""
        if self.vocab is None:
            self._load_or_build()

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return _world()

    def _split(self, split: str) -> np.ndarray:
        if self.vocab is None:
            self.setup()
        if split not in self.splits:
            raise DataUnavailableError(f"{self.description} has no {split} split")
        return self.splits[split]

    def dataset(self, split: str) -> StreamBatches:
        """The batches of ``split`` (``train``, ``valid`` or ``test``) for this rank."""
        rank, world = self._rank_world()
        start_id = self._require_vocab().eos_id
        if split == "train":
            return StreamBatches(
                self._split(split), self.batch_size, self.bptt, rank=rank, world_size=world,
                start_id=start_id,
            )  # fmt: skip
        if self.eval_streams < world:
            raise ValueError(
                f"eval_batch_size {self.eval_streams} is smaller than the {world} ranks that "
                "share its streams; raise eval_batch_size (--eval-batch-size) to at least that"
            )
        share = np.array_split(np.arange(self.eval_streams), world)[rank]
        return StreamBatches(
            self._split(split), self.eval_streams, self.bptt, pad_tail=True, start_id=start_id,
            rows=slice(int(share[0]), int(share[-1]) + 1),
        )  # fmt: skip

    def _loader(self, dataset: StreamBatches, sampler: BatchOrderSampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # items are whole batches
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        trainer = self.trainer
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else None
        sampler = BatchOrderSampler(
            dataset, shuffle=self.shuffle, seed=self.seed, epoch_fn=epoch_fn
        )
        sampler.skip = self._resume_skip(len(dataset))
        self._train_sampler = sampler
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = self.dataset("valid")
        return self._loader(dataset, BatchOrderSampler(dataset))

    def test_dataloader(self) -> DataLoader:
        dataset = self.dataset("test")
        return self._loader(dataset, BatchOrderSampler(dataset))

    def _resume_skip(self, num_batches: int) -> int:
        """Batches of the current epoch a restored checkpoint already trained on."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        fit_loop = trainer.fit_loop
        if not getattr(fit_loop, "restarting", False):
            return 0
        done = int(fit_loop.epoch_loop.batch_progress.current.ready)
        return done if 0 < done < num_batches else 0

    def __repr__(self) -> str:
        return f"LMDataModule({self.description or self.data!r})"
