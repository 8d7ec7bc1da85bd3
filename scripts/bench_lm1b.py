#!/usr/bin/env python
"""Heads at One-Billion-Word scale (V ≈ 793k) on a fixed time budget: tokens/s, peak RSS,
final-evaluation time and memory, perplexity against the entropy floor.

    python scripts/bench_lm1b.py --max-time 600                          # every head, V≈793k
    python scripts/bench_lm1b.py --data DIR --entropy-floor 123.4        # your own folder
    python scripts/bench_lm1b.py --tokens 200_000 --types 5_000 --max-time 20 --heads adaptive-lm1b

Without ``--data`` it writes (once) a 1B-Word-shaped corpus to ``--corpus-dir`` with
:func:`lm_heads.data.corpus.write_corpus` (as ``scripts/make_lm1b_like.py`` does): sentence
lines from the synthetic class-chain language, a Zipf(1.1) unigram whose vocabulary is chosen so
that ``--types`` distinct words occur in training, and an exact perplexity floor (its
``corpus.json``). Each head runs ``recipes/lm.py`` (configs/lm1b.yaml with an LSTM of d=512 in
float32, ``--max-time`` seconds of training) in its own process; a head that cannot fit stops
before training with the recipe's memory error, which the table shows. Each run's checkpoints
(gigabytes at this vocabulary) are deleted once its results are read.

The input layer is an adaptive input (Baevski & Auli 2019) by default, the same for every head:
with a plain ``nn.Embedding`` of 793k x 512 under Adam, every step reads and writes its 406M
parameters and their two moments, and on a CPU core that update, not the head, sets the speed
(``--input embedding`` measures it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lm_heads.data.corpus import LM1B_TYPES, write_corpus

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lm_heads"
HEADS: dict[str, list[str]] = {
    "full-chunked": ["--head", "full", "--head-options", "{chunk_size: auto}"],
    "adaptive-lm1b": ["--head", "adaptive"],  # the config's cutoffs [4000, 40000, 200000]
    "adaptive-auto": ["--head", "adaptive", "--head-options", "{cutoffs: auto, div_value: 4.0}"],
    "class": ["--head", "class", "--head-options", "{}"],
    "hierarchical": ["--head", "hierarchical", "--head-options", "{}"],
    "importance-8192": ["--head", "importance", "--head-options", "{num_samples: 8192}"],
    "nce-8192": ["--head", "nce", "--head-options", "{num_samples: 8192}"],
    "spherical": ["--head", "spherical", "--head-options", "{}"],
    "taylor": ["--head", "taylor", "--head-options", "{}"],
}


def run_head(name: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    out_dir = work / name
    command = [
        sys.executable, str(REPO / "recipes" / "lm.py"),
        "--config", str(REPO / "recipes" / "configs" / "lm1b.yaml"),
        "--data", str(data), "--min-count", "1", "--cache-dir", str(work / "cache"),
        "--embed-dim", "512", "--d-model", "512", "--num-layers", str(args.num_layers),
        "--precision", "32-true", "--accelerator", "cpu",
        "--batch-size", str(args.batch_size), "--bptt", "20", "--eval-batch-size", "10",
        "--max-time", str(args.max_time), "--max-steps", "-1", "--max-epochs", "null",
        # the validation Lightning runs when --max-time stops the epoch, the final one, the test
        "--val-check-interval", "null", "--limit-val-batches", str(args.val_batches),
        "--final-val-batches", str(args.val_batches),
        "--limit-test-batches", str(args.val_batches), "--warmup-steps", "0",
        # cosine needs a step total; a --max-time budget alone has none
        "--lr-schedule", "constant",
        "--no-progress-bar", "--log-every", "20", "--logger", "csv",
        "--input", args.input, "--output-dir", str(out_dir), "--overwrite", *HEADS[name],
        *args.recipe_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    row: dict[str, Any] = {"head": name, "wall_s": round(time.perf_counter() - start, 1)}
    (work / f"{name}.log").write_text(done.stdout + "\n" + done.stderr)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        row["error"] = lines[-1] if lines else f"exit status {done.returncode}"
        return row
    r = json.loads((out_dir / "results.json").read_text())
    passes = validation_passes(out_dir)
    if not args.keep_checkpoints:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    row.update(
        vocab=r["vocab_size"],
        steps=r["global_step"],
        tokens_per_s=r["train_tokens_per_s"],
        peak_rss_mib=r["peak_memory_mib"],
        peak_rss_before_eval_mib=r.get("peak_memory_mib_before_final_val"),
        eval_s=r.get("final_val_seconds"),
        val_ppl=r["val_ppl"],
        test_ppl=r["test_ppl"],
        # Every validation of the run (Lightning's at the time stop, the final one): the same
        # weights and batches, so one value; two would mean state leaking between evaluations.
        val_passes=passes,
        val_passes_agree=agree(passes),
        structure=r["head_structure"],
    )
    return row


def validation_passes(out_dir: Path) -> list[float]:
    """The ``val_ppl`` of every validation the run logged, in order: its CSV log, the newest
    ``version_N`` (an earlier run in the same folder leaves its own)."""
    logs = out_dir.glob("logs/version_*/metrics.csv")
    newest = max(logs, key=lambda log: int(log.parent.name.split("_")[1]), default=None)
    if newest is None:
        return []
    with newest.open() as f:
        return [float(row["val_ppl"]) for row in csv.DictReader(f) if row.get("val_ppl")]


def agree(values: list[float], rtol: float = 1e-6) -> bool:
    """Whether repeated evaluations of the same weights gave the same perplexity."""
    return not values or max(values) <= min(values) * (1 + rtol)


def table(rows: list[dict[str, Any]], floor: float | None) -> str:
    head = f"{'head':16s}{'tokens/s':>10s}{'steps':>7s}{'peak RSS':>11s}{'eval s':>8s}"
    head += f"{'eval RSS+':>11s}{'val ppl':>10s}{'test ppl':>10s}{'x floor':>9s}  val passes"
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['head']:16s}  failed: {r['error'][:160]}")
            continue
        grew = r["peak_rss_mib"] - (r["peak_rss_before_eval_mib"] or r["peak_rss_mib"])
        ratio = f"{r['val_ppl'] / floor:9.2f}" if floor else f"{'n/a':>9s}"
        passes = f"{len(r['val_passes'])}, " + ("equal" if r["val_passes_agree"] else "DIFFER")
        lines.append(
            f"{r['head']:16s}{r['tokens_per_s'] or 0:10,.0f}{r['steps']:7d}"
            f"{r['peak_rss_mib']:9,.0f}Mi{r['eval_s']:8.1f}{grew:9,.0f}Mi{r['val_ppl']:10.1f}"
            f"{r['test_ppl']:10.1f}{ratio}  {passes}"
        )
    return "\n".join(lines)


def _count(text: str) -> int:
    return int(text.replace("_", ""))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a 1B-Word-shaped folder (else Zipf)")
    p.add_argument("--entropy-floor", type=float, default=None, help="floor ppl of --data")
    p.add_argument("--corpus-dir", type=Path, default=CACHE / "bench_lm1b")
    p.add_argument("--tokens", type=_count, default=25_000_000, help="corpus: training words")
    p.add_argument("--types", type=_count, default=LM1B_TYPES, help="corpus: distinct words")
    p.add_argument(
        "--heads", default=",".join(HEADS), help="comma-separated, of: " + ", ".join(HEADS)
    )
    p.add_argument("--max-time", type=float, default=600.0, help="training seconds per head")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-layers", type=int, default=1)
    p.add_argument("--input", choices=("adaptive", "embedding"), default="adaptive",
                   help="input layer of every head's model")  # fmt: skip
    p.add_argument("--val-batches", type=int, default=20, help="final validation/test batches")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_lm1b"))
    p.add_argument("--out", type=Path, default=Path("bench_lm1b.json"))
    p.add_argument("--keep-checkpoints", action="store_true", help="(gigabytes per head)")
    p.add_argument("recipe_args", nargs="*", help="more recipe options, after --")
    args = p.parse_args(argv)
    heads = [h for h in args.heads.split(",") if h]
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        p.error(f"unknown head(s) {unknown}; choose from {', '.join(HEADS)}")
    if args.data is None:
        data = args.corpus_dir / f"t{args.tokens}-v{args.types}"
        written = data / "corpus.json"
        if written.is_file():
            info = json.loads(written.read_text())
        else:
            info = write_corpus(data, args.tokens, types=args.types, shards=10)
        floor: float | None = info["perplexity_floor"]
    else:
        data, floor = args.data, args.entropy_floor
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in heads:
        row = run_head(name, args, data, args.work_dir)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows, floor))
    meta = {"data": str(data), "entropy_floor_ppl": floor, "max_time": args.max_time,
            "batch_size": args.batch_size, "num_layers": args.num_layers,
            "input": args.input}  # fmt: skip
    args.out.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
