#!/usr/bin/env python
"""Tokens/s of ``recipes/lm.py`` under thread settings, alone and beside a busy process.

    python scripts/bench_threads.py                          # 60 steps, all scenarios
    python scripts/bench_threads.py --steps 3 --cpus 0 --scenarios alone --out /tmp/t.json

Each run is the reference recipe (adaptive head, LSTM 2x200, WikiText-2 from --data, synthetic
when absent) for ``--steps`` optimizer steps with short evaluations; its ``train_tokens_per_s``
(training tokens over training time, first step excluded) is the number. Settings:

- ``openmp-default``: ``--threads <usable CPUs>`` and OpenMP's own wait policy (the recipe's
  behaviour before issue 14; ``OMP_WAIT_POLICY`` is set empty, which libgomp reads as its default
  after one warning line);
- ``1-thread``: ``--threads 1``;
- ``2-threads``: ``--threads 2``, OpenMP's default policy;
- ``2-threads-passive``: ``--threads 2`` with ``OMP_WAIT_POLICY=PASSIVE``;
- ``new-default``: no thread option or variable (recipes/threads.py decides).

Scenarios: ``alone``; ``busy`` (a spinning Python loop the scheduler may put anywhere);
``busy-pinned`` (the loop pinned to ``--busy-cpu``). The recipe runs under ``taskset -c --cpus``
when given. ``OMP_NUM_THREADS`` and ``SLURM_CPUS_PER_TASK`` of the calling shell are not passed
on. Prints a table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SETTINGS = ("openmp-default", "1-thread", "2-threads", "2-threads-passive", "new-default")
SCENARIOS = ("alone", "busy", "busy-pinned")
SPIN = (
    "import os, sys\nif sys.argv[1:]: os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"
)


def usable_cpus(cpus: str | None) -> int:
    if cpus is None:
        return len(os.sched_getaffinity(0))
    return len(_cpu_list(cpus))


def _cpu_list(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def setting_env(name: str, cpus: int) -> tuple[list[str], dict[str, str]]:
    """Extra recipe options and environment variables of one setting."""
    if name == "openmp-default":
        return ["--threads", str(cpus)], {"OMP_WAIT_POLICY": ""}
    if name == "1-thread":
        return ["--threads", "1"], {}
    if name == "2-threads":
        return ["--threads", "2"], {"OMP_WAIT_POLICY": ""}
    if name == "2-threads-passive":
        return ["--threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}
    if name == "new-default":
        return [], {}
    raise ValueError(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")


def run_one(args: argparse.Namespace, setting: str, scenario: str, work: Path) -> dict[str, Any]:
    extra, env_extra = setting_env(setting, usable_cpus(args.cpus))
    out_dir = work / f"{setting}-{scenario}"
    command = [
        sys.executable, str(REPO / "recipes" / "lm.py"), "--head", "adaptive",
        "--data", args.data, "--max-steps", str(args.steps), "--max-epochs", "null",
        "--limit-val-batches", "2", "--limit-test-batches", "2", "--final-val-batches", "2",
        "--checkpoint-every", str(10**9), "--no-progress-bar", "--log-every", str(10**9),
        "--accelerator", "cpu", "--logger", "csv", "--output-dir", str(out_dir), "--overwrite",
        *args.recipe_args, *extra,
    ]  # fmt: skip
    if args.cpus is not None:
        command = ["taskset", "-c", args.cpus, *command]
    drop = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "SLURM_CPUS_PER_TASK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra, PYTHONPATH=str(REPO))
    spinner = None
    if scenario != "alone":
        pin = [str(args.busy_cpu)] if scenario == "busy-pinned" else []
        spinner = subprocess.Popen([sys.executable, "-c", SPIN, *pin])
    try:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work)
        wall = time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    row: dict[str, Any] = {"setting": setting, "scenario": scenario, "wall_s": round(wall, 1)}
    if done.returncode != 0:
        row["error"] = done.stderr.strip().splitlines()[-1:] or ["exit " + str(done.returncode)]
        return row
    results = json.loads((out_dir / "results.json").read_text())
    threads = [line for line in done.stdout.splitlines() if line.startswith("threads:")]
    row.update(
        tokens_per_s=results["train_tokens_per_s"],
        threads_line=threads[0] if threads else None,
        steps=results["global_step"],
    )
    return row


def table(rows: list[dict[str, Any]], scenarios: list[str]) -> str:
    by = {(r["setting"], r["scenario"]): r for r in rows}
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lines = [f"{'tokens/s':20s}" + "".join(f"{s:>14s}" for s in scenarios)]
    for setting in settings:
        cells = []
        for scenario in scenarios:
            r = by.get((setting, scenario), {})
            speed = r.get("tokens_per_s")
            cells.append(f"{speed:14,.0f}" if speed is not None else f"{'failed':>14s}")
        lines.append(f"{setting:20s}" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--data", default="auto", help="recipe --data (auto: WikiText-2 or synthetic)")
    p.add_argument("--cpus", default=None, help="taskset CPU list for the recipe, e.g. 0-1")
    p.add_argument("--busy-cpu", type=int, default=1, help="CPU of the pinned busy loop")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--out", default="bench_threads.json", help="JSON results")
    p.add_argument("recipe_args", nargs="*", help="more recipe options, after --")
    args = p.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in settings:
        setting_env(s, 1)  # unknown names fail before any run
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        for scenario in scenarios:
            for setting in settings:
                row = run_one(args, setting, scenario, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(table(rows, scenarios))
    meta = {"cpu_count": os.cpu_count(), "usable": usable_cpus(args.cpus), "steps": args.steps,
            "cpus": args.cpus, "busy_cpu": args.busy_cpu}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
