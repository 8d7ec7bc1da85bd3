r"""The results table: every head on the same backbone, quality against cost, in one command.

For each *suite* (a dataset) this trains the same LSTM with every head through
``recipes/lm.py`` (one subprocess per run: isolated, and its peak RSS is that run's own) under
two budgets:

- ``steps``: the same number of optimizer steps for every head;
- ``time``: the same training wall-clock for every head (``--max-time``: optimizer steps only,
  validation excluded), so a cheap head gets more steps.

Each run reports validation and test perplexity (exact, ``head.target_log_prob``, also for
sampled heads), SimLex-999 ρ and coverage of the input and (where a head has one row per word)
output embeddings, training tokens/s, peak memory, and its validation curve (perplexity against
training seconds). Several ``--seeds`` give mean ± standard deviation. From the curves it reports
the training time at which each head first reached a target validation perplexity (by default
1.25 × the ``full`` head's final validation perplexity under the ``steps`` budget).

Suites: ``wikitext-2`` (real text, from ``--data``, default ``../shared/data/wikitext-2``) and
``synthetic`` (the seeded synthetic language of ``lm_heads.data``, V = 200,000 by default, where
the full softmax is not cheap; its exact entropy floor tells how far each head is from the best
possible perplexity).

Usage::

    python scripts/results.py --results-md RESULTS.md     # the full sweep (prints an estimate)
    python scripts/results.py --quick --output-dir /tmp/results_quick   # smoke test, ~1 min
    python scripts/results.py --suites wikitext-2 --heads full adaptive --seeds 1 2 3

Outputs in ``--output-dir`` (default ``results/``): ``results.json`` (every run, the aggregated
rows, the machine and the command), ``results.md`` (tables and the literature checks),
``curves_<suite>.png`` (validation perplexity against training seconds, one curve per head) and
``pareto_<suite>.png`` (perplexity against training tokens/s, Pareto front marked). Each run's
own output (``results.json``, logs) stays in ``--work-dir``; checkpoints are deleted after the
run (``--keep-checkpoints`` keeps them). A run whose directory already holds a ``results.json``
from the same recipe command is reused, so an interrupted sweep continues where it stopped
(``--rerun`` forces fresh runs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "lm.py"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "wikitext-2"
SUITES = ("wikitext-2", "synthetic")
BUDGETS = ("steps", "time")
TARGET_FACTOR = 1.25
"""Default target validation perplexity: this × the ``full`` head's (``steps`` budget)."""


def _heads() -> list[str]:
    sys.path.insert(0, str(REPO))
    from lm_heads import HEADS

    return list(HEADS)


# ------------------------------------------------------------------------------------------------
# Configuration
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/results.py",
        description="Train every head on the same backbone; tabulate quality against cost.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny synthetic smoke test (~1 min)")
    p.add_argument("--suites", nargs="+", choices=SUITES, default=None,
                   help="default: both (--quick: synthetic)")  # fmt: skip
    p.add_argument("--heads", nargs="+", default=None, help="default: every registered head")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 1")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WikiText-2 directory")
    p.add_argument("--simlex", type=Path, default=None, help="SimLex-999.txt (default: found)")
    p.add_argument("--output-dir", type=Path, default=REPO / "results")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="per-run outputs (default: <repo>/runs/results, or <output-dir>/runs "
                   "with --quick)")  # fmt: skip
    p.add_argument("--results-md", type=Path, default=None,
                   help="also fill the marked section of this file (RESULTS.md)")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="ignore finished runs in --work-dir")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: all)")
    p.add_argument("--accelerator", default="cpu", help="passed to the recipe (cpu | gpu | auto)")
    p.add_argument("--target-ppl", type=float, default=None,
                   help=f"target val perplexity (default: {TARGET_FACTOR} × full's)")  # fmt: skip

    g = p.add_argument_group("model and budgets (defaults sized for 2 CPU cores)")
    g.add_argument("--embed-dim", type=int, default=128)
    g.add_argument("--d-model", type=int, default=128)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--bptt", type=int, default=35)
    g.add_argument("--lr", type=float, default=3e-3)
    g.add_argument("--steps", type=int, default=100, help="equal-steps budget")
    g.add_argument("--seconds", type=float, default=40.0, help="equal-time budget per head")
    g.add_argument("--max-time-steps", type=int, default=100_000,
                   help="step cap of the equal-time runs")  # fmt: skip
    g.add_argument("--val-every", type=int, default=25, help="steps between validations")
    g.add_argument("--val-batches", type=int, default=3, help="batches per periodic validation")
    g.add_argument("--final-val-batches", type=int, default=20)
    g.add_argument("--test-batches", type=int, default=30,
                   help="test batches (0: the whole test split)")  # fmt: skip

    g = p.add_argument_group("synthetic suite")
    g.add_argument("--synthetic-vocab-size", type=int, default=200_000)
    g.add_argument("--synthetic-tokens", type=int, default=300_000)
    g.add_argument("--synthetic-budgets", nargs="+", choices=BUDGETS, default=["time"],
                   help="time: at V = 200k the O(V) heads cost seconds per step")  # fmt: skip
    g.add_argument("--synthetic-embed-dim", type=int, default=64)
    g.add_argument("--synthetic-d-model", type=int, default=64)
    g.add_argument("--synthetic-batch-size", type=int, default=8)
    g.add_argument("--synthetic-steps", type=int, default=60)
    return p


QUICK = {
    "suites": ["synthetic"],
    "heads": ["full", "adaptive"],
    "embed_dim": 16, "d_model": 16, "batch_size": 4, "bptt": 8, "steps": 12, "seconds": 0.5,
    "val_every": 4, "val_batches": 2, "final_val_batches": 4, "test_batches": 4,
    "synthetic_vocab_size": 300, "synthetic_tokens": 6_000, "synthetic_budgets": ["steps", "time"],
    "synthetic_embed_dim": 16, "synthetic_d_model": 16, "synthetic_batch_size": 4,
    "synthetic_steps": 12, "threads": 1,
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # quick values unless given on the command line
        given = {a.dest for a in parser._actions if any(o in (argv or sys.argv[1:])
                                                        for o in a.option_strings)}  # fmt: skip
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    args.suites = args.suites or list(SUITES)
    args.heads = args.heads or _heads()
    args.seeds = args.seeds or [1]
    unknown = sorted(set(args.heads) - set(_heads()))
    if unknown:
        parser.error(f"unknown head(s) {unknown}; valid: {', '.join(_heads())}")
    if "wikitext-2" in args.suites and not (args.data / "train.txt").exists():
        parser.error(f"--data {args.data}: no train.txt (or leave out --suites wikitext-2)")
    if args.work_dir is None:
        args.work_dir = args.output_dir / "runs" if args.quick else REPO / "runs" / "results"
    return args


def planned_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per recipe run: suite, budget, head, seed, its directory and its argv."""
    runs = []
    for suite in args.suites:
        budgets = list(BUDGETS) if suite == "wikitext-2" else args.synthetic_budgets
        for budget in budgets:
            for head in args.heads:
                for seed in args.seeds:
                    run_dir = args.work_dir / suite / budget / head / f"seed{seed}"
                    argv = recipe_argv(args, suite, budget, head, seed, run_dir)
                    runs.append({"suite": suite, "budget": budget, "head": head, "seed": seed,
                                 "dir": run_dir, "argv": argv})  # fmt: skip
    return runs


def recipe_argv(
    args: argparse.Namespace, suite: str, budget: str, head: str, seed: int, run_dir: Path
) -> list[str]:
    synthetic = suite == "synthetic"
    steps = args.synthetic_steps if synthetic else args.steps
    argv = [
        "--head", head, "--seed", str(seed), "--model", "lstm", "--num-layers", "1",
        "--embed-dim", str(args.synthetic_embed_dim if synthetic else args.embed_dim),
        "--d-model", str(args.synthetic_d_model if synthetic else args.d_model),
        "--batch-size", str(args.synthetic_batch_size if synthetic else args.batch_size),
        "--bptt", str(args.bptt), "--lr", str(args.lr),
        "--val-check-interval", str(args.val_every),
        "--limit-val-batches", str(args.val_batches),
        "--final-val-batches", str(args.final_val_batches),
        "--checkpoint-every", "1000000000", "--log-every", "10", "--no-progress-bar",
        "--accelerator", args.accelerator, "--output-dir", str(run_dir),
        "--cache-dir", str(args.work_dir / "cache"),
    ]  # fmt: skip
    if args.test_batches > 0:
        argv += ["--limit-test-batches", str(args.test_batches)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.simlex is not None:
        argv += ["--simlex", str(args.simlex)]
    if synthetic:
        argv += ["--data", "synthetic", "--synthetic-vocab-size", str(args.synthetic_vocab_size),
                 "--synthetic-tokens", str(args.synthetic_tokens)]  # fmt: skip
    else:
        argv += ["--data", str(args.data)]
    if budget == "steps":
        argv += ["--max-steps", str(steps)]
    else:
        argv += ["--max-steps", str(args.max_time_steps), "--max-time", str(args.seconds)]
    return argv


# ------------------------------------------------------------------------------------------------
# Running
def run_one(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Run the recipe (or reuse a finished identical run); returns its results or an error."""
    run_dir: Path = run["dir"]
    done, command_file = run_dir / "results.json", run_dir / "command.json"
    reusable = not args.rerun and done.exists() and command_file.exists()
    if reusable and json.loads(command_file.read_text()) == run["argv"]:
        return {**json.loads(done.read_text()), "reused": True}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.run(
            [sys.executable, str(RECIPE), *run["argv"]],
            cwd=run_dir,  # Lightning writes nothing outside the run directory
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if not args.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if proc.returncode != 0 or not done.exists():
        tail = (run_dir / "log.txt").read_text().splitlines()[-15:]
        return {"error": f"exit status {proc.returncode}", "log_tail": tail}
    command_file.write_text(json.dumps(run["argv"]) + "\n")
    return json.loads(done.read_text())


KEEP = ("head_is_exact", "vocab_size", "parameters", "global_step", "val_ppl", "test_ppl",
        "entropy_floor_ppl", "train_tokens_per_s", "train_step_seconds", "stopped_by_time",
        "peak_memory_mib", "peak_memory_kind", "wall_seconds", "val_curve", "similarity",
        "data_description", "error", "log_tail", "reused")  # fmt: skip


def estimate_seconds(args: argparse.Namespace, runs: Sequence[dict[str, Any]]) -> float:
    """A rough duration of ``runs`` on 2 CPU cores (measured there with other work running).

    Model: a head's step (training) or batch (exact evaluation) costs in proportion to
    ``tokens × width × V``; averaged over all heads, ~0.6 s per training step and ~0.3 s per
    evaluation batch at 560 tokens × 128 × 33,278; plus ~12 s to start each run.
    """
    total = 0.0
    for run in runs:
        synthetic = run["suite"] == "synthetic"
        tokens = (args.synthetic_batch_size if synthetic else args.batch_size) * args.bptt
        width = args.synthetic_d_model if synthetic else args.d_model
        vocab = args.synthetic_vocab_size if synthetic else 33_278
        scale = tokens * width * vocab / (560 * 128 * 33_278)
        step = 0.6 * scale + 0.05
        steps = args.synthetic_steps if synthetic else args.steps
        train = args.seconds if run["budget"] == "time" else steps * step
        validations = max(1.0, (train / step) / args.val_every)
        batches = validations * args.val_batches + args.final_val_batches
        batches += args.test_batches or 440 * 560 / tokens
        total += 12 + train + 0.3 * scale * batches
    return total


# ------------------------------------------------------------------------------------------------
# Aggregation
def mean_spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (``None`` with one value) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs)}  # fmt: skip


def first_reach(curve: Sequence[dict[str, Any]], target: float) -> float | None:
    """Training seconds at the first validation with perplexity ``<= target``."""
    for point in curve:
        if point["val_ppl"] <= target:
            return float(point["train_seconds"])
    return None


def _sim(run: dict[str, Any], side: str, key: str) -> float | None:
    s = (run.get("similarity") or {}).get(side) or {}
    if not s.get("measured"):
        return None
    if key == "coverage":
        return s["covered"] / s["total"] if s.get("total") else None
    return s.get(key)


def aggregate(
    runs: Sequence[dict[str, Any]], target_ppl: float | None = None
) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """Rows ``(suite, budget, head)`` with mean/spread per metric, and the target per suite."""
    targets: dict[str, float | None] = {}
    for suite in dict.fromkeys(r["suite"] for r in runs):
        if target_ppl is not None:
            targets[suite] = target_ppl
            continue
        ok = [r for r in runs if r["suite"] == suite and "error" not in r["result"]]
        ref = [r["result"]["val_ppl"] for r in ok if r["head"] == "full" and r["budget"] == "steps"]
        if not ref:  # no full softmax: the best head under the steps budget (else any budget)
            pool = [r for r in ok if r["budget"] == "steps"] or ok
            ref = [min(r["result"]["val_ppl"] for r in pool)] if pool else []
        targets[suite] = TARGET_FACTOR * statistics.fmean(ref) if ref else None
    rows = []
    keys = dict.fromkeys((r["suite"], r["budget"], r["head"]) for r in runs)
    for suite, budget, head in keys:
        group = [r for r in runs if (r["suite"], r["budget"], r["head"]) == (suite, budget, head)]
        ok = [r["result"] for r in group if "error" not in r["result"]]
        target = targets[suite]
        reach = [first_reach(r.get("val_curve", []), target) if target else None for r in ok]
        row: dict[str, Any] = {
            "suite": suite, "budget": budget, "head": head,
            "seeds": [r["seed"] for r in group], "failed": len(group) - len(ok),
            "errors": [r["result"].get("error") for r in group if "error" in r["result"]],
            "target_ppl": target,
            "reached_target": sum(t is not None for t in reach),
            "time_to_target_s": mean_spread(reach),
        }  # fmt: skip
        for key in ("val_ppl", "test_ppl", "train_tokens_per_s", "peak_memory_mib",
                    "global_step", "train_step_seconds"):  # fmt: skip
            row[key] = mean_spread([r.get(key) for r in ok])
        for side in ("input", "output"):
            row[f"simlex_{side}"] = mean_spread([_sim(r, side, "spearman") for r in ok])
            row[f"coverage_{side}"] = mean_spread([_sim(r, side, "coverage") for r in ok])
        # The synthetic language is drawn from the run's seed: each run has its own floor.
        floored = [r for r in ok if r.get("entropy_floor_ppl")]
        row["entropy_floor_ppl"] = mean_spread([r["entropy_floor_ppl"] for r in floored])["mean"]
        row["test_over_floor"] = mean_spread(
            [r["test_ppl"] / r["entropy_floor_ppl"] for r in floored]
        )
        row["vocab_size"] = ok[0]["vocab_size"] if ok else None
        rows.append(row)
    return rows, targets


def _row(rows: Sequence[dict[str, Any]], suite: str, budget: str, head: str) -> dict | None:
    for row in rows:
        if (row["suite"], row["budget"], row["head"]) == (suite, budget, head):
            return row
    return None


def _m(row: dict | None, key: str) -> float | None:
    return None if row is None else row[key]["mean"]


def literature_checks(rows: Sequence[dict[str, Any]], suite: str) -> list[dict[str, Any]]:
    """The literature's claims, checked against this suite's numbers (``None``: not measurable)."""
    checks = []
    full_s, full_t = _row(rows, suite, "steps", "full"), _row(rows, suite, "time", "full")
    ada_s, ada_t = _row(rows, suite, "steps", "adaptive"), _row(rows, suite, "time", "adaptive")
    fp, ap = _m(full_s, "val_ppl"), _m(ada_s, "val_ppl")
    fs, as_ = _m(full_s, "train_tokens_per_s"), _m(ada_s, "train_tokens_per_s")
    if None not in (fp, ap):
        checks.append({
            "claim": "adaptive reaches about full's perplexity (Grave et al. 2017)",
            "holds": ap <= 1.10 * fp,
            "evidence": f"equal steps: adaptive val ppl {ap:.1f} vs full {fp:.1f} "
            f"({100 * (ap / fp - 1):+.1f}%; holds within +10%)",
        })  # fmt: skip
    if None not in (fs, as_):
        checks.append({
            "claim": "adaptive trains at a fraction of full's cost (Grave et al. 2017)",
            "holds": as_ >= 1.5 * fs,
            "evidence": f"adaptive {as_:,.0f} vs full {fs:,.0f} training tokens/s "
            f"({as_ / fs:.2f}×; holds at ≥ 1.5×; the LSTM backbone's cost is included)",
        })  # fmt: skip
    tf, ta = _m(full_t, "val_ppl"), _m(ada_t, "val_ppl")
    if None not in (tf, ta):
        checks.append(
            {
                "claim": "for the same training time, adaptive beats full",
                "holds": ta < tf,
                "evidence": f"equal time: adaptive val ppl {ta:.1f} vs full {tf:.1f}",
            }
        )
    for head, who in (("spherical", "de Brébisson & Vincent 2016"),
                      ("taylor", "de Brébisson & Vincent 2016")):  # fmt: skip
        hp = _m(_row(rows, suite, "steps", head), "val_ppl")
        if None not in (fp, hp):
            checks.append({
                "claim": f"{head} is behind the log-softmax on language modelling ({who})",
                "holds": hp > fp,
                "evidence": f"equal steps: {head} val ppl {hp:.1f} vs full {fp:.1f} "
                f"({100 * (hp / fp - 1):+.1f}%)",
            })  # fmt: skip
    for head in ("importance", "nce"):
        hp = _m(_row(rows, suite, "steps", head), "val_ppl")
        if None not in (fp, hp):
            checks.append({
                "claim": f"the sampled head {head} trails the full softmax at equal steps "
                "(Jean et al. 2015; Mnih & Teh 2012)",
                "holds": hp > fp,
                "evidence": f"equal steps: {head} val ppl {hp:.1f} vs full {fp:.1f} "
                f"({100 * (hp / fp - 1):+.1f}%)",
            })  # fmt: skip
    return checks


# ------------------------------------------------------------------------------------------------
# Reports
def _fmt(stat: dict[str, Any] | None, spec: str = ".1f", scale: float = 1.0) -> str:
    if stat is None or stat["mean"] is None:
        return "–"
    text = format(stat["mean"] * scale, spec)
    if stat["std"] is not None:
        text += " ± " + format(stat["std"] * scale, spec)
    return text


def markdown(report: dict[str, Any], plot_prefix: str = "") -> str:
    rows, lines = report["rows"], []
    machine, config = report["machine"], report["config"]
    lines += [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']} ({machine['cpu_count']} logical CPUs, "
        f"{machine['platform']}), torch {machine['torch']}, Python {machine['python']}; "
        f"load average at start {machine['loadavg_start']}, at end {machine['loadavg_end']}; "
        f"sweep took {report['elapsed_s'] / 60:.1f} min.",
        "",
        f"Seeds: {', '.join(map(str, config['seeds']))} (values: mean ± sample std over seeds; "
        "no ± with one seed).",
        "",
    ]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        suite_rows = [r for r in rows if r["suite"] == suite]
        first = suite_rows[0]
        floor = first["entropy_floor_ppl"]
        lines += [f"### {suite} (V = {first['vocab_size']:,})" if first["vocab_size"]
                  else f"### {suite}", ""]  # fmt: skip
        lines += [report["suite_settings"][suite], ""]
        target = report["targets"].get(suite)
        if target:
            lines += [f"Target validation perplexity: {target:.1f}.", ""]
        if floor:
            lines += [
                f"Exact entropy floor (best possible perplexity): **{floor:.2f}** (mean over the "
                "seeds' languages; `test / floor` is per run, then averaged).",
                "",
            ]
        header = ["head", "budget", "steps", "train tok/s", "val ppl", "test ppl"]
        if floor:
            header.append("test / floor")
        header += ["time to target (s)", "SimLex ρ in (cov.)", "SimLex ρ out (cov.)",
                   "peak RSS (MiB)"]  # fmt: skip
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in suite_rows:
            cells = [f"`{r['head']}`", r["budget"], _fmt(r["global_step"], ".0f"),
                     _fmt(r["train_tokens_per_s"], ",.0f"), _fmt(r["val_ppl"]),
                     _fmt(r["test_ppl"])]  # fmt: skip
            if floor:
                cells.append(_fmt(r["test_over_floor"], ".2f") + "×")
            n = len(r["seeds"]) - r["failed"]
            reach = _fmt(r["time_to_target_s"], ".1f")
            if r["reached_target"] < n:
                reach = (
                    f"{reach} ({r['reached_target']}/{n} reached)"
                    if reach != "–"
                    else "not reached"
                )
            cells.append(reach)
            for side in ("input", "output"):
                rho = _fmt(r[f"simlex_{side}"], ".3f")
                cov = _fmt(r[f"coverage_{side}"], ".0f", 100.0)
                cells.append("–" if rho == "–" else f"{rho} ({cov}%)")
            cells.append(_fmt(r["peak_memory_mib"], ",.0f"))
            if r["failed"]:
                cells[0] += f" ({r['failed']} failed: {r['errors'][0]})"
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"![validation perplexity vs training time]({plot_prefix}curves_{suite}.png)",
            f"![perplexity vs training tokens/s]({plot_prefix}pareto_{suite}.png)",
            "",
        ]
        checks = report["checks"].get(suite) or []
        if checks:
            lines += ["Checks against the literature (computed from the table):", ""]
            for c in checks:
                verdict = "reproduced" if c["holds"] else "**not reproduced**"
                lines.append(f"- {c['claim']}: {verdict}. {c['evidence']}.")
            lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], runs: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    heads = list(dict.fromkeys(r["head"] for r in runs))
    palette = [*plt.get_cmap("tab10").colors, "black", "olive", "teal", "navy"]
    colours = {h: palette[i % len(palette)] for i, h in enumerate(heads)}
    for suite in dict.fromkeys(r["suite"] for r in runs):
        budgets = list(dict.fromkeys(r["budget"] for r in runs if r["suite"] == suite))
        fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5), squeeze=False)
        for ax, budget in zip(axes[0], budgets, strict=True):
            labelled = set()
            for r in runs:
                res = r["result"]
                if (r["suite"], r["budget"]) != (suite, budget) or "error" in res:
                    continue
                curve = res.get("val_curve") or []
                if not curve:
                    continue
                xs = [p["train_seconds"] for p in curve]
                ys = [p["val_ppl"] for p in curve]
                label = None if r["head"] in labelled else r["head"]
                labelled.add(r["head"])
                ax.plot(xs, ys, "-o", ms=2.5, lw=1.2, color=colours[r["head"]], label=label)
            target = report["targets"].get(suite)
            if target:
                ax.axhline(target, color="grey", ls=":", lw=1, label="target")
            floor = next((row["entropy_floor_ppl"] for row in report["rows"]
                          if row["suite"] == suite and row["entropy_floor_ppl"]), None)  # fmt: skip
            if floor:
                ax.axhline(floor, color="black", ls="--", lw=1, label="entropy floor")
            ax.set_yscale("log")
            ax.set_xlabel("training seconds (optimizer steps only)")
            ax.set_ylabel("validation perplexity")
            ax.set_title(f"{suite}: equal {budget}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"curves_{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

        fig, axes = plt.subplots(1, len(budgets), figsize=(6.5 * len(budgets), 4.5), squeeze=False)
        for ax, budget in zip(axes[0], budgets, strict=True):
            pts = []
            for row in report["rows"]:
                if (row["suite"], row["budget"]) != (suite, budget):
                    continue
                x, y = row["train_tokens_per_s"]["mean"], row["test_ppl"]["mean"]
                if x is None or y is None:
                    continue
                pts.append((x, y, row["head"]))
                xerr, yerr = row["train_tokens_per_s"]["std"], row["test_ppl"]["std"]
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=colours[row["head"]])
                ax.annotate(row["head"], (x, y), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
            front = pareto_front([(x, y) for x, y, _ in pts])
            if front:
                fx, fy = zip(*sorted(front), strict=True)
                ax.step(fx, fy, where="pre", color="black", lw=1, ls="--", label="Pareto front")
                ax.legend(fontsize=7)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("training tokens/s")
            ax.set_ylabel("test perplexity")
            ax.set_title(f"{suite}: equal {budget}")
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        path = out_dir / f"pareto_{suite}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another (faster *and* lower perplexity): higher x, lower y win."""
    return [
        (x, y)
        for x, y in points
        if not any(x2 >= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in points)
    ]


MARK_BEGIN, MARK_END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results_md(path: Path, body: str) -> None:
    """Replace the text between the markers of ``path`` (which must hold both) by ``body``."""
    text = path.read_text()
    start, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {MARK_BEGIN} ... {MARK_END} section to fill")
    path.write_text(text[: start + len(MARK_BEGIN)] + "\n" + body + "\n" + text[end:])


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": _loadavg()}  # fmt: skip


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def suite_settings(args: argparse.Namespace, suite: str) -> str:
    synthetic = suite == "synthetic"
    budgets = args.synthetic_budgets if synthetic else list(BUDGETS)
    steps = args.synthetic_steps if synthetic else args.steps
    batch = args.synthetic_batch_size if synthetic else args.batch_size
    test = "the whole test split" if args.test_batches == 0 else (
        f"the first {args.test_batches} test batches ({args.test_batches * batch * args.bptt:,} "
        "tokens)")  # fmt: skip
    text = (
        f"1-layer LSTM, embed {args.synthetic_embed_dim if synthetic else args.embed_dim}, hidden "
        f"{args.synthetic_d_model if synthetic else args.d_model}, untied, dropout 0.2, Adam lr "
        f"{args.lr}, batch {batch} × bptt {args.bptt} = {batch * args.bptt} tokens/step. Budgets: "
        + ", ".join(f"equal steps ({steps})" if b == "steps" else
                    f"equal training time ({args.seconds:g} s of optimizer steps)" for b in budgets)
        + f". Validation every {args.val_every} steps on {args.val_batches} batches (the curves), "
        f"final validation on {args.final_val_batches} batches, test on {test}."
    )  # fmt: skip
    if synthetic:
        text += (f" Synthetic language: {args.synthetic_tokens:,} training tokens, seeded by the "
                 "run's seed.")  # fmt: skip
    return text


# ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    runs = planned_runs(args)
    print(f"{len(runs)} runs; rough estimate {estimate_seconds(args, runs) / 60:.0f} min "
          f"(2 CPU cores); per-run outputs in {args.work_dir}", flush=True)  # fmt: skip
    machine = machine_info()
    for i, run in enumerate(runs, 1):
        start = time.perf_counter()
        res = run_one(run, args)
        run["result"] = {k: res[k] for k in KEEP if k in res}
        what = (f"ERROR {res['error']}" if "error" in res else
                f"val ppl {res['val_ppl']:.1f}, test ppl {res['test_ppl']:.1f}, "
                f"{res['global_step']} steps, {res.get('train_tokens_per_s') or 0:,.0f} tok/s"
                + (" (reused)" if res.get("reused") else ""))  # fmt: skip
        print(f"[{i}/{len(runs)}] {run['suite']} {run['budget']} {run['head']} seed {run['seed']}: "
              f"{what} [{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip
    machine["loadavg_end"] = _loadavg()
    rows, targets = aggregate(runs, args.target_ppl)
    command = "python scripts/results.py " + shlex.join(
        list(argv) if argv is not None else sys.argv[1:]
    )
    report: dict[str, Any] = {
        "command": command.strip(),
        "machine": machine,
        "elapsed_s": time.perf_counter() - t0,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "suite_settings": {s: suite_settings(args, s) for s in args.suites},
        "targets": targets,
        "rows": rows,
        "checks": {s: literature_checks(rows, s) for s in args.suites},
        "runs": [
            {
                **{k: v for k, v in r.items() if k not in ("dir", "argv")},
                "dir": str(r["dir"]),
                "recipe_argv": r["argv"],
            }
            for r in runs
        ],
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    plot(report, runs, args.output_dir)
    body = markdown(report)
    (args.output_dir / "results.md").write_text(body + "\n")
    if args.results_md is not None:
        prefix = os.path.relpath(args.output_dir.resolve(), args.results_md.resolve().parent)
        write_results_md(args.results_md, markdown(report, plot_prefix=prefix + "/"))
    print(f"wrote {args.output_dir / 'results.json'}, results.md and plots "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return report


if __name__ == "__main__":
    main()
