#!/usr/bin/env python
"""How large are a trained head's output vectors, by word frequency? A diagnostic for overfit tails.

    python scripts/output_norms.py CKPT [CKPT ...] [--cutoffs "[4000]"] [--out norms.json]

For each ``recipes/lm.py`` checkpoint, ranks the words by their training counts, cuts the ranks at
``--cutoffs`` (default: 4,000, adaptive's cut for WikiText-2) and prints the mean and median
L2 norm of ``head.output_embeddings()`` in each band: the vector whose dot product with ``h`` is
the word's logit (for the adaptive softmax's tail, ``P_iᵀ B_i``'s row: its within-cluster logit).
A band whose vectors are several times the full softmax's scores its words with sharper logits.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.checkpoint import load_model


def band_norms(checkpoint: Path, cutoffs: list[int]) -> dict[str, Any]:
    """Mean and median output-vector norm per frequency band of one checkpoint."""
    model, vocab, _ = load_model(checkpoint)
    with torch.no_grad():
        norms = model.head.output_embeddings().double().norm(dim=1)
    by_rank = norms[torch.argsort(torch.as_tensor(vocab.counts), descending=True, stable=True)]
    bounds = [0, *cutoffs, len(by_rank)]
    bands = []
    for low, high in itertools.pairwise(bounds):
        band = by_rank[low:high]
        bands.append({
            "ranks": [low, high],
            "mean_norm": float(band.mean()),
            "median_norm": float(band.median()),
        })  # fmt: skip
    return {"checkpoint": str(checkpoint), "head": type(model.head).__name__, "bands": bands}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--cutoffs", type=json.loads, default=[4000])
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args()
    rows = []
    for path in args.checkpoints:
        if not path.is_file():
            sys.exit(f"checkpoint {path} not found")
        row = band_norms(path, args.cutoffs)
        rows.append(row)
        cells = "  ".join(
            f"ranks {b['ranks'][0]:,}-{b['ranks'][1]:,}: mean {b['mean_norm']:.3f} "
            f"median {b['median_norm']:.3f}"
            for b in row["bands"]
        )
        print(f"{path}  {row['head']}  {cells}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
