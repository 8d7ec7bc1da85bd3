#!/usr/bin/env python
"""Perplexity of a checkpoint of ``recipes/lm.py`` on any text file or directory of them.

    python recipes/evaluate.py --checkpoint runs/lm/checkpoints/last.ckpt --text my_corpus.txt
    python recipes/evaluate.py --checkpoint last.ckpt --text some/dir --output scores.json
    python recipes/evaluate.py --checkpoint last.ckpt --text valid.txt --decompose

``--decompose`` adds where the NLL comes from (:mod:`lm_heads.decomposition`): head words, the
cluster choice of tail tokens and the NLL within each cluster, each beside the training unigram's,
on the adaptive head's cutoffs (or ``--cutoffs``, or the default rule, for other heads).

The text is read with the checkpoint's own vocabulary (words split on whitespace, one ``<eos>``
per line, as in training): a word outside it becomes ``<unk>`` and counts as out of vocabulary
(OOV; the rate is reported, since predicting ``<unk>`` is easier than predicting the word).
Perplexity is ``exp(Σ −log p / #tokens)`` over every token, from the head's exact distribution,
batched into ``--batch-size`` contiguous streams of ``--bptt`` windows as the recipe evaluates
(both default to the checkpoint's training options). No train or valid files are needed.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(_REPO))

from recipes.cli import UsageError, run_command  # noqa: E402

# torch, Lightning and the model are imported inside the functions, after the command line is
# read: a typo or --help answers at once. (jsonargparse executes TYPE_CHECKING blocks, so the
# helpers' tensor arguments are annotated Any.)


def text_files(path: Path) -> list[Path]:
    """``path`` itself, or every non-hidden file under the directory ``path`` in name order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--text {path} does not exist")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise UsageError(f"--text {path} is a directory without any (non-hidden) file")
    return files


def encode(files: list[Path], vocab: Any, encoding: str) -> tuple[Any, int, int]:
    """``(ids, words, out-of-vocabulary words)``; ids hold one ``<eos>`` per line."""
    import numpy as np

    from lm_heads.data.sources import read_lines

    get, missing = vocab.stoi.get, itertools.repeat(-1)
    parts, words, oov = [], 0, 0
    for file in files:
        lines = read_lines(file, encoding)
        while chunk := list(itertools.islice(lines, 20_000)):
            found = np.fromiter(
                map(get, itertools.chain.from_iterable(line.split() for line in chunk), missing),
                dtype=np.int64,
            )
            unknown = found < 0
            words, oov = words + found.size, oov + int(unknown.sum())
            found[unknown] = vocab.unk_id
            # One <eos> after each line's words, as Vocabulary.encode_chunks does.
            ends = np.cumsum([len(line.split()) for line in chunk])
            parts.append(np.insert(found, ends, vocab.eos_id))
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ids, words, oov


def evaluate(
    checkpoint: Path,
    text: Path,
    batch_size: int | None = None,
    bptt: int | None = None,
    encoding: str = "utf-8",
    accelerator: str = "auto",
    vocab: Path | None = None,
    output: Path | None = None,
    decompose: bool = False,
    cutoffs: list[int] | None = None,
) -> dict[str, Any]:
    """Perplexity of a recipes/lm.py checkpoint on a text file or a directory of text files.

    Args:
        checkpoint: a checkpoint written by recipes/lm.py (e.g. runs/lm/checkpoints/last.ckpt).
        text: a text file, or a directory whose files (recursively, in name order) are read.
        batch_size: contiguous streams per batch (default: the checkpoint's evaluation batch).
        bptt: tokens per window (default: the checkpoint's --bptt).
        encoding: text encoding of the files.
        accelerator: cpu, gpu, ... or auto.
        vocab: vocab.json of the token cache, for checkpoints that predate carrying it.
        output: also write the scores to this JSON file.
        decompose: also split the NLL into head words, cluster choice and within-cluster parts,
            each beside the training unigram's (lm_heads.decomposition).
        cutoffs: rank-space cutoffs of the decomposition (default: the adaptive head's own, else
            the default rule for the vocabulary size).
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from torch.utils.data import DataLoader

    from lm_heads.data import StreamBatches
    from recipes.checkpoint import load_model

    model, vocabulary, trained = load_model(Path(checkpoint), vocab)
    batch_size = batch_size or trained.get("eval_batch_size") or trained.get("batch_size") or 10
    bptt = bptt or trained.get("bptt") or 35
    if batch_size < 1 or bptt < 1:
        raise UsageError(f"--batch-size and --bptt must be positive, got {batch_size}, {bptt}")
    files = text_files(Path(text))
    ids, words, oov = encode(files, vocabulary, encoding)
    if words == 0:
        raise UsageError(f"--text {text} holds no words")
    batches = StreamBatches(ids, batch_size, bptt, pad_tail=True, start_id=vocabulary.eos_id)
    try:
        trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False)  # fmt: skip
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise UsageError(f"--accelerator {accelerator} does not work here: {error}") from None
    loader = DataLoader(batches, batch_size=None)
    print(f"evaluating {len(batches):,} batches of {ids.size:,} tokens ...", flush=True)
    ppl = float(trainer.test(model, dataloaders=loader, verbose=False)[0]["test_ppl"])
    scores = {
        "checkpoint": str(checkpoint),
        "text": str(text),
        "files": len(files),
        "tokens": int(ids.size),
        "words": words,
        "oov_words": oov,
        "oov_rate": oov / words,
        "perplexity": ppl,
        "batch_size": batch_size,
        "bptt": bptt,
    }
    print(
        f"perplexity {ppl:.2f} on {ids.size:,} tokens of {len(files)} file(s) in {text} "
        f"(OOV: {oov:,} of {words:,} words = {oov / words:.2%} scored as <unk>)",
        flush=True,
    )
    if decompose:
        scores["decomposition"], table = decompose_nll(model, loader, vocabulary, cutoffs)
        print(table, flush=True)
    if output is not None:
        Path(output).write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def decompose_nll(
    model: Any, loader: Any, vocabulary: Any, cutoffs: list[int] | None
) -> tuple[dict[str, Any], str]:
    """The NLL of ``model`` on ``loader``'s windows, cut by ``lm_heads.decomposition``, and
    that cut as a table."""
    import torch

    from lm_heads.cutoffs import default_cutoffs
    from lm_heads.decomposition import NLLDecomposition

    head = model.head
    if cutoffs is None:
        bounds = getattr(head, "bounds", None)
        cutoffs = bounds[1:-1] if bounds else default_cutoffs(head.vocab_size, head.in_features)
    try:
        parts = NLLDecomposition(vocabulary.counts, cutoffs, head.ignore_index)
    except ValueError as error:
        raise UsageError(f"--cutoffs {cutoffs}: {error}") from None
    model.eval()
    carry, state = bool(model.hparams.get("carry_state", False)), None
    total, start, shown = len(loader), time.perf_counter(), time.perf_counter()
    print(f"decomposing the NLL: {total:,} batches ...", flush=True)
    with torch.no_grad():
        for done, (inputs, targets) in enumerate(loader, start=1):
            inputs, targets = inputs.to(model.device), targets.to(model.device)
            hidden, state = model(inputs, state if carry else None)
            parts.update_from_head(head, hidden, targets)
            if time.perf_counter() - shown > 30 and done < total:  # a line every 30 s at most
                shown, pace = time.perf_counter(), (time.perf_counter() - start) / done
                print(f"  {done:,}/{total:,} batches, about {(total - done) * pace:.0f} s left",
                      flush=True)  # fmt: skip
    result = parts.compute()
    return result, NLLDecomposition.table(result)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_command(evaluate, argv, "recipes/evaluate.py")


if __name__ == "__main__":
    main()
