"""Time and memory of building the vocabulary and token cache, at several corpus sizes.

    python scripts/bench_data.py --sizes 25M 50M 100M --data-root /work/tmp_data \\
        --output bench_results/bench_data.json

For each size, a One-Billion-Word-shaped corpus (``scripts/make_lm1b_like.py``; 100 training
shards, ~793k distinct words whatever the size) is written under ``--data-root`` unless it is
already there, and ``LMDataModule(dir).prepare_data()`` runs in a fresh subprocess with an empty
cache folder. Reported per size: CPU seconds of the build (user + system, this process and its
workers), wall seconds, peak RSS of the process (and of the heaviest worker), the RSS after the
imports, tokens/s, and the cache's vocabulary size. ``--keep`` keeps the corpora and caches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from lm_heads.data import LMDataModule
def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
data, cache, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = rss_mib()
usage = lambda who: resource.getrusage(who)
SELF, KIDS = resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN
self0, kids0 = usage(SELF), usage(KIDS)
wall = time.perf_counter()
dm = LMDataModule(data, cache_dir=cache, build_workers=workers)
dm.prepare_data()
wall = time.perf_counter() - wall
self1, kids1 = usage(SELF), usage(KIDS)
cpu = lambda a, b: (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)
meta = json.loads(dm._cache.meta_path.read_text())
print(json.dumps({
    "build_cpu_s": cpu(self0, self1) + cpu(kids0, kids1),
    "build_cpu_s_main": cpu(self0, self1),
    "build_wall_s": wall,
    "peak_rss_mib": self1.ru_maxrss / 1024,
    "peak_rss_worker_mib": kids1.ru_maxrss / 1024,
    "rss_after_imports_mib": base,
    "cache_tokens": meta["lengths"],
    "vocab_size": len(json.loads((dm._cache.path / "vocab.json").read_text())["words"]),
}))
"""


def _count(text: str) -> int:
    text = text.replace("_", "").upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _label(tokens: int) -> str:
    return f"{tokens // 10**6}m" if tokens % 10**6 == 0 else str(tokens)


def ensure_corpus(root: Path, tokens: int, shards: int, types: int) -> dict[str, Any]:
    folder = root / f"lm1b-like-{_label(tokens)}"
    info_path = folder / "corpus.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if (info.get("tokens"), info.get("shards"), info.get("types")) == (tokens, shards, types):
            return {"path": str(folder), **info}
    sys.path.insert(0, str(REPO))
    from lm_heads.data.corpus import write_corpus

    print(f"writing {tokens:,} tokens to {folder}", file=sys.stderr, flush=True)
    started = time.process_time()
    info = write_corpus(folder, tokens, shards=shards, types=types)
    info["types"] = types
    info["generation_cpu_s"] = time.process_time() - started
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return {"path": str(folder), **info}


def measure(corpus: Path, cache: Path, workers: int) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(corpus), str(cache), str(workers)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )  # the child's progress lines go to our stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| tokens (train) | shards | vocab | build CPU-s | wall s | tokens/CPU-s | peak RSS MiB |"
        " RSS after imports MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for row in rows:
        rate = row["tokens"] / row["build_cpu_s"]
        lines.append(
            f"| {row['tokens']:,} | {row['shards']} | {row['vocab_size']:,} | "
            f"{row['build_cpu_s']:.1f} | {row['build_wall_s']:.1f} | {rate / 1e6:.2f}M | "
            f"{row['peak_rss_mib']:.0f} | {row['rss_after_imports_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=_count, default=[25 * 10**6, 50 * 10**6, 10**8])
    parser.add_argument("--data-root", type=Path, default=Path("/work/tmp_data"))
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--types", type=_count, default=793_471, help="expected distinct words")
    parser.add_argument("--workers", type=int, default=1, help="build_workers of the build")
    parser.add_argument("--output", type=Path, default=Path("bench_results/bench_data.json"))
    parser.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    args = parser.parse_args(argv)

    rows = []
    for tokens in args.sizes:
        corpus = ensure_corpus(args.data_root, tokens, args.shards, args.types)
        cache = args.data_root / f"cache-{_label(tokens)}"
        figures = measure(Path(corpus["path"]), cache, args.workers)
        row = {"tokens": tokens, "shards": args.shards, "workers": args.workers, **figures}
        row["corpus"] = {k: v for k, v in corpus.items() if k != "path"}
        rows.append(row)
        print(table([row]).splitlines()[-1], file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(corpus["path"], ignore_errors=True)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "rows": rows,
        "self_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
