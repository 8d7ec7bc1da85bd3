#!/usr/bin/env python
"""Write the input and output word embeddings of a ``recipes/lm.py`` checkpoint as word2vec text.

    python recipes/export_embeddings.py --checkpoint runs/lm/checkpoints/last.ckpt --output-dir emb

word2vec's text format (read by gensim's ``KeyedVectors.load_word2vec_format``): a first line
``V d``, then one line per word, ``word x1 … xd``, in vocabulary (frequency) order. ``input.vec``
holds the backbone's embedding, ``output.vec`` the head's output embedding per word (heads
without one row per word, e.g. the adaptive softmax's projected tail, have none).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Literal

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(_REPO))

from recipes.cli import UsageError, run_command  # noqa: E402

# torch, Lightning and the model are imported inside the functions, after the command line is
# read: a typo or --help answers at once. (jsonargparse executes TYPE_CHECKING blocks, so the
# helpers' tensor arguments are annotated Any.)


def write_word2vec(path: Path, words: list[str], vectors: Any) -> None:
    """``vectors [V, d]`` with one word per row, as word2vec text."""
    import numpy as np

    body = io.StringIO()
    np.savetxt(body, vectors, fmt="%.6g")
    rows = body.getvalue().splitlines()
    with path.open("w", encoding="utf-8") as out:
        out.write(f"{len(words)} {vectors.shape[1]}\n")
        out.writelines(f"{word} {row}\n" for word, row in zip(words, rows, strict=True))


def export(
    checkpoint: Path,
    output_dir: Path = Path("embeddings"),
    which: Literal["both", "input", "output"] = "both",
    vocab: Path | None = None,
) -> list[Path]:
    """Write input.vec and output.vec (word2vec text format) from a recipes/lm.py checkpoint.

    Args:
        checkpoint: a checkpoint written by recipes/lm.py (e.g. runs/lm/checkpoints/last.ckpt).
        output_dir: folder for input.vec and output.vec.
        which: both, input (backbone embedding) or output (the head's row per word).
        vocab: vocab.json of the token cache, for checkpoints that predate carrying it.
    """
    from recipes.checkpoint import load_model

    model, vocabulary, _ = load_model(Path(checkpoint), vocab)
    tables = {"input": model.backbone.embedding.weight, "output": model.head.output_embeddings()}
    wanted = ["input", "output"] if which == "both" else [which]
    if tables["output"] is None:
        why = f"head {model.hparams['head']!r} has no output embedding per word"
        if which == "output":
            raise UsageError(f"{checkpoint}: {why}; export --which input")
        print(f"output.vec not written: {why}", flush=True)
        wanted = [w for w in wanted if w != "output"]
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output-dir {out_dir} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in wanted:
        path = out_dir / f"{name}.vec"
        write_word2vec(path, vocabulary.itos, tables[name].detach().float().cpu().numpy())
        print(f"{path}: {len(vocabulary):,} words x {tables[name].shape[1]}", flush=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    return run_command(export, argv, "recipes/export_embeddings.py")


if __name__ == "__main__":
    main()
