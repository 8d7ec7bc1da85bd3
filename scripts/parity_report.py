#!/usr/bin/env python
"""Does a head cost perplexity against the full softmax? Tables and a plot from finished runs.

    python scripts/parity_report.py RUNS_DIR [--out results/parity]

``RUNS_DIR`` holds one folder per run of ``recipes/lm.py`` (each with its ``results.json``), named
``<group>_s<seed>`` (``full_s1234``, ``ad_bias_div2_s1235``, ``headline_tied_s1234``): runs of a
group differ only by seed. Every number comes from a run's ``results.json``: the whole-split
validation at each epoch end (``val_ppl`` curve points), the final test perplexity, the training
throughput. Writes ``<out>.json`` (every run's epoch-end values, curve and command) and
``<out>.png`` (validation against steps), and prints the markdown tables that RESULTS.md quotes.
``--stopped`` adds runs stopped before their end, from their ``checkpoints/last.ckpt``: their
epoch-end validations, marked unfinished, without a test perplexity. Each validation is placed at
the epoch it closed (a run continued from another's checkpoint starts at a later epoch), and a
run with a ``results.json`` is finished only when it validated at the end of its last planned
epoch: a run cut short by ``--max-steps`` (a smoke test) is marked short, and gives no ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN_NAME = re.compile(r"^(?P<group>.+)_s(?P<seed>\d+)$")


def load_runs(root: Path, stopped: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Finished runs (a ``results.json``) by group, each with its epoch-end validations; with
    ``stopped``, also runs stopped before their end (only ``checkpoints/last.ckpt``), marked
    ``finished: False``: their epoch-end validations are finished measurements, their test is
    not there."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = RUN_NAME.match(folder.name)
        if match is None:
            continue
        if (folder / "results.json").is_file():
            run = _finished(folder)
        elif stopped and (folder / "checkpoints" / "last.ckpt").is_file():
            run = _stopped(folder)
            if not run["epoch_val_ppl"]:
                continue  # stopped inside its first epoch: no whole-split validation yet
        else:
            continue
        groups[match["group"]].append({"run": folder.name, "seed": int(match["seed"]), **run})
    return dict(groups)


def _finished(folder: Path) -> dict[str, Any]:
    res = json.loads((folder / "results.json").read_text())
    curve = normalised_curve(res["val_curve"])
    epoch_values = epoch_end_values(curve)
    planned = res["args"].get("max_epochs") or 1
    return {
        # Its test is that of the planned length only if it validated at its last epoch's end.
        "finished": len(epoch_values) >= planned and epoch_values[planned - 1] is not None,
        "head": res["head"],
        "head_options": res["head_options"],
        "head_structure": res["head_structure"],
        "input_layer": res.get("input_layer"),
        "tie_weights": res.get("tie_weights"),
        "steps": res["global_step"],
        "epoch_val_ppl": epoch_values,
        "val_ppl": res["val_ppl"],
        "test_ppl": res["test_ppl"],
        "tokens_per_s": res["train_tokens_per_s"],
        "train_seconds": res["train_step_seconds"],
        "simlex": {side: (res.get("similarity", {}).get(side) or {}).get("spearman")
                   for side in ("input", "output")},
        "args": res["args"],
        "curve": curve,
    }  # fmt: skip


def _stopped(folder: Path) -> dict[str, Any]:
    import torch

    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", mmap=True,
                      weights_only=True)  # fmt: skip
    # The recipe's own clock reads its state back (its throughput leaves out the first step);
    # imported here, as torch is: finished runs need neither.
    from recipes.language_model import TrainClock

    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("TrainClock"))
    clock = TrainClock()
    clock.load_state_dict(state)
    args = ckpt.get("recipe_args", {})
    return {
        "finished": False,
        "head": args.get("head"),
        "head_options": args.get("head_options"),
        "head_structure": None,
        "input_layer": args.get("input_layer"),
        "tie_weights": args.get("tie_weights"),
        "steps": ckpt["global_step"],
        "epoch_val_ppl": epoch_end_values(clock.curve),
        "val_ppl": None,
        "test_ppl": None,
        "tokens_per_s": clock.tokens_per_s,
        "train_seconds": clock.seconds,
        "simlex": {},
        "args": args,
        "curve": clock.curve,
    }


def normalised_curve(curve: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Curves of runs made before validation had two kinds (0.2: every point read ``val_ppl``,
    the periodic ones on the subset) in today's names: ``val_subset_ppl`` except the final."""
    if any("val_subset_ppl" in p or "lr" in p for p in curve):
        return curve
    return [p if p.get("final") else {**{k: v for k, v in p.items() if k != "val_ppl"},
                                      "val_subset_ppl": p["val_ppl"]}
            for p in curve]  # fmt: skip


def epoch_end_values(curve: list[dict[str, Any]]) -> list[float | None]:
    """Whole-split validation perplexity after epoch 1, 2, …; ``None`` for an epoch without one
    (a run continued from another's checkpoint after epoch 1 has none for epoch 1).

    A point's epoch: its ``epoch_end`` where recorded; else its ``epoch`` (steps / batches per
    epoch) within a twentieth of a whole number ≥ 1 (a final validation in mid-epoch, such as a
    smoke run's after 20 steps, is no epoch's); points of runs older than both, by position.
    """
    by_epoch: dict[int, float] = {}
    for i, point in enumerate(p for p in curve if "val_ppl" in p):
        if "epoch_end" in point:
            epoch = int(point["epoch_end"])
        elif "epoch" in point:
            epoch = round(point["epoch"])
            if epoch < 1 or abs(point["epoch"] - epoch) > 0.05:
                continue
        else:
            epoch = i + 1
        by_epoch[epoch] = float(point["val_ppl"])
    last = max(by_epoch, default=0)
    return [by_epoch.get(e) for e in range(1, last + 1)]


def _known(values: Any) -> list[float]:
    return [v for v in values if v is not None]


def spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summary(groups: dict[str, list[dict[str, Any]]], baseline: str = "full") -> dict[str, Any]:
    """Per group and epoch: mean and range over seeds, and the ratio of means to the baseline."""
    out: dict[str, Any] = {}
    base = groups.get(baseline)
    for name, runs in groups.items():
        # Runs with no epoch end (smoke runs) give no epoch values, and take none from the others.
        epochs = min((len(r["epoch_val_ppl"]) for r in runs if r["epoch_val_ppl"]), default=0)
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "epochs": epochs,
            "val_ppl_by_epoch": [
                spread(_known(r["epoch_val_ppl"][e] for r in runs)) for e in range(epochs)
            ],
            "finished": all(r["finished"] for r in runs),
            "steps": [r["steps"] for r in runs],
            "test_ppl": spread(tests)
            if (tests := [r["test_ppl"] for r in runs if r["finished"]])
            else None,
            "tokens_per_s": spread([r["tokens_per_s"] for r in runs if r["tokens_per_s"]]),
        }
        full_epoch1 = _known(r["epoch_val_ppl"][0] for r in base or [] if r["epoch_val_ppl"])
        if full_epoch1 and epochs >= 1 and row["val_ppl_by_epoch"][0] is not None:
            row["epoch1_over_full"] = row["val_ppl_by_epoch"][0]["mean"] / statistics.fmean(
                full_epoch1
            )
        full_speeds = _known(r["tokens_per_s"] for r in base or [] if r["epoch_val_ppl"])
        if full_speeds and epochs >= 1 and row["tokens_per_s"] is not None:
            row["speed_over_full"] = row["tokens_per_s"]["mean"] / statistics.fmean(full_speeds)
        out[name] = row
    return out


def markdown(groups: dict[str, list[dict[str, Any]]], table: dict[str, Any]) -> str:
    lines = [
        "| group | head options | seeds | val ppl, epoch 1 (mean; range) | ÷ full | "
        "last epoch: val (test) | tokens/s | × full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        runs = groups[name]
        if not row["epochs"]:
            steps = ", ".join(f"{n:,}" for n in row["steps"])
            lines.append(f"| {name} | short: no epoch end (steps {steps}) | | | | | | |")
            continue
        first = row["val_ppl_by_epoch"][0] or {"mean": math.nan, "min": math.nan, "max": math.nan}
        last = row["val_ppl_by_epoch"][-1]
        options = runs[0]["head_options"] or {}
        if runs[0]["input_layer"] == "adaptive":
            options = {**options, "input": "adaptive", "tied": runs[0]["tie_weights"]}
        lines.append(
            f"| {name} | {options or 'defaults'} | {', '.join(map(str, row['seeds']))} | "
            f"{first['mean']:.2f}; {first['min']:.2f}–{first['max']:.2f} | "
            f"{row.get('epoch1_over_full', float('nan')):.3f} | "
            f"epoch {row['epochs']}: {last['mean']:.2f} ({_test_or_stop(row)}) | "
            f"{row['tokens_per_s']['mean']:,.0f} | {row.get('speed_over_full', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def _test_or_stop(row: dict[str, Any]) -> str:
    if row["test_ppl"] is not None and row["finished"]:
        return f"{row['test_ppl']['mean']:.2f}"
    return f"stopped at step {', '.join(f'{n:,}' for n in row['steps'])}"


def plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    # tab10's "C{i}" repeats after ten groups: tab20's ten dark colours first, then its light ones.
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]
    for i, (name, runs) in enumerate(sorted(groups.items())):
        color = palette[i % len(palette)]
        for j, run in enumerate(runs):
            subset = [
                (p["step"], p["val_subset_ppl"]) for p in run["curve"] if "val_subset_ppl" in p
            ]
            whole = [(p["step"], p["val_ppl"]) for p in run["curve"] if "val_ppl" in p]
            if not whole:
                continue
            label = name if j == 0 else None
            if subset:
                ax.plot(*zip(*subset, strict=True), color=color, alpha=0.45, lw=1, label=label)
                label = None
            ax.plot(*zip(*whole, strict=True), "o", color=color, ms=5, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("training steps (20 × 35 tokens)")
    ax.set_ylabel("validation perplexity")
    ax.set_title(
        "WikiText-2, 2-layer LSTM 200: dots, whole split at epoch ends; lines, 50-batch subset"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, help="folder of run folders named <group>_s<seed>")
    parser.add_argument("--out", type=Path, default=Path("results/parity"), help="output prefix")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--stopped", action="store_true", help="also runs stopped before their end, marked so"
    )
    args = parser.parse_args(argv)
    groups = load_runs(args.runs, stopped=args.stopped)
    if not groups:
        parser.error(f"no finished run (a <group>_s<seed>/results.json) under {args.runs}")
    table = summary(groups)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"summary": table, "runs": groups}
    Path(f"{args.out}.json").write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_plot:
        plot(groups, Path(f"{args.out}.png"))
    print(markdown(groups, table))
    return report


if __name__ == "__main__":
    main()
