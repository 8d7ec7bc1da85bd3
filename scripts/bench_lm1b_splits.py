#!/usr/bin/env python
"""Per-batch and per-stream NLL of a recipe checkpoint over the whole validation and test splits,
the perplexity of every 20-batch window and of each stream: how far a ``--val-batches 20``
figure can move by which words, and which stream, it reads (BENCHMARKS.md, "The recipe at
V ≈ 793k").

    python scripts/bench_lm1b_splits.py CKPT --data DIR --cache-dir DIR --out splits.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lm_heads.data.datamodule import LMDataModule  # noqa: E402
from recipes.language_model import LanguageModel, _detach  # noqa: E402


def perplexity(rows: list[dict]) -> float:
    return math.exp(sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, required=True)
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--eval-batch-size", type=int, default=10)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument("--window", type=int, default=20, help="batches per window (default 20)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dm = LMDataModule(
        data=str(args.data), min_count=args.min_count, cache_dir=str(args.cache_dir),
        bptt=args.bptt, eval_batch_size=args.eval_batch_size,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    counts = torch.as_tensor(dm.vocab.counts)
    model = LanguageModel.load_from_checkpoint(
        args.checkpoint, map_location="cpu", weights_only=False, counts=counts
    ).eval()
    unk, report = dm.vocab.unk_id, {}
    with torch.no_grad():
        for split in ("valid", "test"):
            batches, state = dm.dataset(split), None
            rows = []
            for i in range(len(batches)):
                inputs, targets = batches[i]
                hidden, state = model(inputs, state)  # streams carry their state, as in the recipe
                state = _detach(state)
                log_prob = model.head.target_log_prob(hidden, targets).double()
                keep = targets != model.head.ignore_index
                stream_nll = -torch.where(keep, log_prob, 0.0).sum(1)
                rows.append({
                    "nll": float(-log_prob[keep].sum()), "tokens": int(keep.sum()),
                    "unk": int((targets == unk).sum()), "max_token_nll": float(-log_prob.min()),
                    "stream_nll": stream_nll.tolist(), "stream_tokens": keep.sum(1).tolist(),
                })  # fmt: skip
            windows = [
                perplexity(rows[i : i + args.window])
                for i in range(0, len(rows) - args.window + 1, args.window)
            ]
            whole = perplexity(rows)
            first = rows[: 2 * args.window]
            streams = [
                math.exp(sum(r["stream_nll"][k] for r in first) / sum(r["stream_tokens"][k] for r in first))  # noqa: E501
                for k in range(len(first[0]["stream_nll"]))
            ]  # fmt: skip
            report[split] = {
                "whole_ppl": whole, "window_ppl": windows, "stream_ppl_first_2_windows": streams,
                "batches": rows,
            }  # fmt: skip
            print(f"{split}: first window {windows[0]:.1f}, windows {min(windows):.1f}–"
                  f"{max(windows):.1f}, whole split {whole:.1f}; per stream over the first "
                  f"{2 * args.window} batches: {[round(x) for x in streams]}")  # fmt: skip
    args.out.write_text(json.dumps(report) + "\n")
    return report


if __name__ == "__main__":
    main()
