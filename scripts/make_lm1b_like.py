"""Write a synthetic corpus shaped like One Billion Word, for the recipe's ``--data DIR``.

    python scripts/make_lm1b_like.py /work/tmp_data/lm1b-like-100m --tokens 100_000_000

Writes ``DIR/train/train-000NN-of-00100.txt`` (100 shards), ``DIR/valid.txt``, ``DIR/test.txt``
and ``DIR/corpus.json`` (the parameters, the realised vocabulary and the perplexity floor of the
cache built from the folder). See :mod:`lm_heads.data.corpus` for the language.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from lm_heads.data.corpus import LM1B_TYPES, write_corpus


def _count(text: str) -> int:
    return int(text.replace("_", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--tokens", type=_count, default=100_000_000, help="training words")
    parser.add_argument("--shards", type=int, default=100, help="training files (1: train.txt)")
    parser.add_argument(
        "--heldout-tokens", type=_count, default=None, help="words per held-out split"
    )
    parser.add_argument(
        "--types", type=_count, default=LM1B_TYPES,
        help="expected distinct training words, used to pick --vocab-size when it is not given",
    )  # fmt: skip
    parser.add_argument("--vocab-size", type=_count, default=None, help="Zipf vocabulary V")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent")
    parser.add_argument("--classes", type=int, default=256, help="latent classes (1: i.i.d.)")
    parser.add_argument("--mean-length", type=float, default=27.0, help="mean words per line")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 2.0 or done == total:
            last[0] = now
            rate = done / max(now - started, 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            print(
                f"wrote {done / 1e6:.1f}M/{total / 1e6:.1f}M words, {rate / 1e6:.2f}M words/s, "
                f"ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    try:
        info = write_corpus(
            args.output,
            args.tokens,
            shards=args.shards,
            heldout_tokens=args.heldout_tokens,
            progress=progress,
            vocab_size=args.vocab_size,
            types=args.types,
            num_classes=args.classes,
            zipf_exponent=args.zipf,
            mean_sentence_length=args.mean_length,
            seed=args.seed,
        )
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
