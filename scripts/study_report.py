#!/usr/bin/env python
"""The study's one table, figure and verdicts, from its per-run files only (docs/study/PLAN.md).

    python scripts/study_report.py            # RESULTS.md's study table, the figure, summary.json

Reads ``results/study/runs/<name>/results.json`` (and ``run.json``) and the throughput
measurement ``results/study/throughput.json`` (``study.py --throughput``), nothing else: no number
is typed by hand. A throughput ratio comes from that measurement when it exists (every variant
on one core, the other idle, in alternating order); else from the runs' own tokens/s, which
depend on what the other lane trained at the time. Writes the markdown between RESULTS.md's
``<!-- study-table:start -->`` and ``<!-- study-table:end -->`` markers,
README.md's short form of it between ``<!-- study-summary:start -->`` and ``… end -->``,
``results/study/validation_time.png`` (validation perplexity against training seconds, every
head on one figure) and ``results/study/summary.json``. Training seconds read one clock: the
tokens a run trained ÷ its head's measured one-core tokens/s, whatever machine or threads it ran
on (its own clock only for a head without a measurement).
A run that did not finish its epochs, lacks an epoch's validation, ran off the plan's
configuration or on uncommitted code is listed, marked, and enters no mean, ratio or verdict.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "scripts") not in sys.path:  # the runner beside it holds the plan's table
    sys.path.insert(0, str(REPO / "scripts"))

from study import STUDY_RUNS  # noqa: E402

EPOCHS = 6
PLAN = {
    "data": "wikitext-2",
    "lr_schedule": "step",
    "lr_milestones": [5, 6],
    "lr_decay": 4.0,
    "max_epochs": EPOCHS,
    "model": "lstm",
    "batch_size": 20,
    "bptt": 35,
    "dropout": 0.2,
    "grad_clip": 0.25,
    "carry_state": True,
}
"""What every study run must have been trained with (the lr may come from a sweep)."""
START, END = "<!-- study-table:start -->", "<!-- study-table:end -->"
SUMMARY_START, SUMMARY_END = "<!-- study-summary:start -->", "<!-- study-summary:end -->"


# ------------------------------------------------------------------------------------------------
# Statistics
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for ``0.5 < p < 1`` and any real ``df > 0`` (Welch's df is not an
    integer): bisection on the CDF, the density integrated by Simpson's rule."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 4000) -> float:  # 0.5 + ∫_0^x density
        h = x / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def ratio_interval(x: list[float], y: list[float], level: float = 0.95) -> dict[str, Any]:
    """``mean(x) / mean(y)`` with its interval: the delta method on the log ratio, with a
    Welch–Satterthwaite t quantile. One value in ``x``: its relative spread is taken to be
    ``y``'s (``assumed_spread``) and ``df = len(y) − 1``. ``y`` needs two values or more."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    vy = statistics.variance(y) / (len(y) * my**2)
    if len(x) > 1:
        vx = statistics.variance(x) / (len(x) * mx**2)
        denominator = vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1)
        df = (vx + vy) ** 2 / denominator if denominator > 0 else float("inf")
    else:
        vx, df = statistics.variance(y) / my**2, len(y) - 1.0
    se = math.sqrt(vx + vy)
    t = t_quantile(0.5 + level / 2, df) if math.isfinite(df) else 1.959963984540054
    ratio = mx / my
    return {
        "ratio": ratio,
        "lo": ratio * math.exp(-t * se),
        "hi": ratio * math.exp(t * se),
        "df": df,
        "assumed_spread": len(x) == 1,
    }


def wording(interval: dict[str, Any]) -> str:
    """The plan's words for an interval: ahead, behind, or level within ±x%."""
    lo, hi = interval["lo"], interval["hi"]
    if hi <= 1.0:
        return f"ahead of full by {100 * (1 - hi):.0f}–{100 * (1 - lo):.0f}%"
    if lo >= 1.0:
        return f"behind full by {100 * (lo - 1):.0f}–{100 * (hi - 1):.0f}%"
    return f"level within ±{math.ceil(100 * max(1 - lo, hi - 1) - 1e-9)}%"


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """Seconds at which the (seconds, perplexity) epoch-end points first reach ``target``, by
    linear interpolation in (seconds, log perplexity) from the start of training's first."""
    previous = None
    for seconds, ppl in points:
        if ppl <= target:
            if previous is None:
                return seconds
            (s0, p0), (s1, p1) = previous, (seconds, ppl)
            share = (math.log(p0) - math.log(target)) / (math.log(p0) - math.log(p1))
            return s0 + share * (s1 - s0)
        previous = (seconds, ppl)
    return None


# ------------------------------------------------------------------------------------------------
# Runs
def epoch_ends(curve: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The whole-split validation point of each epoch's end, by epoch (1 = the first)."""
    out = {}
    for point in curve:
        if "val_ppl" in point and point.get("epoch_end"):
            out[int(point["epoch_end"])] = point
    return out


def load_run(folder: Path) -> dict[str, Any]:
    """One run's numbers and why it is left out of the verdicts (``problems``), if it is."""
    prefix, _, seed = folder.name.rpartition("_s")
    run: dict[str, Any] = {
        "run": folder.name,
        "variant": prefix,
        "seed": int(seed) if seed.isdigit() else None,
        "problems": [],
    }
    path = folder / "results.json"
    if not path.is_file():
        run["problems"].append("unfinished: no results.json")
        return run
    res = json.loads(path.read_text())
    args, ends = res.get("args", {}), epoch_ends(res.get("val_curve", []))
    missing = [e for e in range(1, EPOCHS + 1) if e not in ends]
    if missing:
        run["problems"].append(f"no validation at the end of epoch(s) {missing}")
    off = {k: args.get(k) for k, v in PLAN.items() if args.get(k) != v}
    if off:
        run["problems"].append(f"off the plan's configuration: {off}")
    git = res.get("git") or {}
    if not git.get("commit") or git.get("dirty"):
        run["problems"].append(f"not from a clean commit: {git or 'no commit recorded'}")
    sim = res.get("similarity") or {}
    run |= {
        "head": res.get("head"),
        "head_options": res.get("head_options"),
        "lr": args.get("lr"),
        "commit": git.get("commit"),
        "val_by_epoch": [ends[e]["val_ppl"] if e in ends else None for e in range(1, EPOCHS + 1)],
        "seconds_by_epoch": [
            ends[e]["train_seconds"] if e in ends else None for e in range(1, EPOCHS + 1)
        ],
        "tokens_by_epoch": [
            ends[e].get("tokens") if e in ends else None for e in range(1, EPOCHS + 1)
        ],
        "clock": "own",
        "val_ppl": res.get("val_ppl"),
        "test_ppl": res.get("test_ppl"),
        "tokens_per_s": res.get("train_tokens_per_s"),
        "simlex": {side: _similarity(sim.get(side)) for side in ("input", "output")},
    }
    run_json = folder / "run.json"
    if run_json.is_file():
        attempts = json.loads(run_json.read_text()).get("attempts", [])
        run["lanes"] = sorted({str(a["lane"]) for a in attempts if a.get("lane") is not None})
    return run


def _similarity(side: Any) -> dict[str, Any] | None:
    if not isinstance(side, dict) or not side.get("measured"):
        return None
    return {"rho": side.get("spearman"), "covered": side.get("covered"), "total": side.get("total")}


def load(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Every run folder under ``root``, by variant; a variant of the plan without a run is []."""
    by_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in STUDY_RUNS}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            run = load_run(folder)
            by_variant.setdefault(run["variant"], []).append(run)
    return by_variant


# ------------------------------------------------------------------------------------------------
# Table
def load_throughput(path: Path) -> dict[str, Any]:
    """``study.py --throughput``'s measurement as ratios to ``full``, by variant: each round's
    tokens/s over ``full``'s of the same round; their mean, smallest and largest."""
    if not path.is_file():
        return {}
    measured = json.loads(path.read_text())
    full = f"full_chunked_s{STUDY_RUNS['full_chunked'].seeds[0]}"
    ratios: dict[str, list[float]] = {}
    tokens: dict[str, list[float]] = {}
    for round_ in measured["rounds"]:
        by_run = {m["run"]: m["tokens_per_s"] for m in round_}
        if full not in by_run:
            continue  # a ratio needs full's tokens/s of the same round
        for run, value in by_run.items():
            variant = run.rpartition("_s")[0]
            tokens.setdefault(variant, []).append(value)
            ratios.setdefault(variant, []).append(value / by_run[full])
    commit = (measured.get("git") or {}).get("commit", "?")
    return {
        variant: {
            "ratio": statistics.fmean(r),
            "lo": min(r),
            "hi": max(r),
            "rounds": len(r),
            "tokens_per_s": statistics.fmean(tokens[variant]),
            "steps": measured["steps"],
            "commit": commit,
        }
        for variant, r in ratios.items()
    }


def on_one_clock(by_variant: dict[str, list[dict[str, Any]]], throughput: dict[str, Any]) -> None:
    """Put, in place, each complete run's epoch-end seconds on one clock: the tokens it had
    trained ÷ its variant's tokens/s in the throughput measurement (one core, the other idle,
    one commit, one machine). The runs' own clocks differ by machine (a session may get another
    one), by neighbour (the other lane's load) and by threads (lane ``both``). A variant without
    a measurement keeps its runs' own clocks (``clock``: "own")."""
    for variant, runs in by_variant.items():
        bench = throughput.get(variant)
        for run in runs:
            if run["problems"] or bench is None or run["clock"] == "measured":
                continue
            if None in run["tokens_by_epoch"]:
                continue  # an old results.json without token counts keeps its own clock
            run["own_seconds_by_epoch"] = run["seconds_by_epoch"]
            run["seconds_by_epoch"] = [t / bench["tokens_per_s"] for t in run["tokens_by_epoch"]]
            run["clock"] = "measured"


def summarize(
    by_variant: dict[str, list[dict[str, Any]]], throughput: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Per variant, from its complete runs only: the numbers of the table and the verdicts;
    throughput ratios from ``throughput`` (:func:`load_throughput`) where it has the variant.
    The runs' seconds go on the measurement's clock first (:func:`on_one_clock`)."""
    throughput = throughput or {}
    on_one_clock(by_variant, throughput)
    rows: dict[str, Any] = {}
    for variant, runs in by_variant.items():
        done = [r for r in runs if not r["problems"]]
        planned = STUDY_RUNS[variant].seeds if variant in STUDY_RUNS else ()
        row: dict[str, Any] = {
            "runs": len(done),
            "planned_seeds": list(planned),
            "seeds": [r["seed"] for r in done],
            "left_out": {r["run"]: r["problems"] for r in runs if r["problems"]},
        }
        if done:
            row["val_by_epoch"] = [
                statistics.fmean(r["val_by_epoch"][e] for r in done) for e in range(EPOCHS)
            ]
            row["seconds_by_epoch"] = [
                statistics.fmean(r["seconds_by_epoch"][e] for r in done) for e in range(EPOCHS)
            ]
            tests = [r["test_ppl"] for r in done]
            row["test_mean"] = statistics.fmean(tests)
            row["test_sd"] = statistics.stdev(tests) if len(tests) > 1 else None
            row["tokens_per_s"] = statistics.fmean(r["tokens_per_s"] for r in done)
            row["clock"] = "measured" if all(r["clock"] == "measured" for r in done) else "own"
            row["val6"] = [r["val_by_epoch"][-1] for r in done]
            row["lrs"] = sorted({r["lr"] for r in done})
            for side in ("input", "output"):
                measured = [r["simlex"][side] for r in done if r["simlex"][side]]
                row[f"simlex_{side}"] = (
                    {
                        "rho": statistics.fmean(m["rho"] for m in measured),
                        "covered": measured[0]["covered"],
                        "total": measured[0]["total"],
                    }
                    if measured
                    else None
                )
        rows[variant] = row
    full = rows.get("full_chunked", {})
    for variant, row in rows.items():
        if not row["runs"] or full.get("runs", 0) < 2:
            continue
        row["vs_full"] = ratio_interval(row["val6"], full["val6"])
        row["vs_full"]["wording"] = wording(row["vs_full"])
        row["speed_over_full_runs"] = row["tokens_per_s"] / full["tokens_per_s"]
        bench = throughput.get(variant)
        row["speed_over_full"] = bench["ratio"] if bench else row["speed_over_full_runs"]
        row["speed_source"] = "measured" if bench else "runs"
        curve = list(zip(row["seconds_by_epoch"], row["val_by_epoch"], strict=True))
        row["seconds_to_full_epoch1"] = time_to(curve, full["val_by_epoch"][0])
        row["seconds_to_full_epoch6"] = time_to(curve, full["val_by_epoch"][-1])
    return {"variants": rows, "verdicts": verdicts(rows), "throughput": throughput}


def verdicts(rows: dict[str, Any]) -> list[dict[str, str]]:
    """The plan's verdicts against the literature, each from the table's numbers."""
    reference_lr = 20.0

    def judge(variant: str, claim: str, test: Any, describe: str) -> dict[str, str]:
        row = rows.get(variant, {})
        if not row.get("runs"):
            return {"claim": claim, "verdict": "not yet run", "numbers": f"{variant}: no run"}
        if "vs_full" not in row:
            return {
                "claim": claim,
                "verdict": "not yet run",
                "numbers": "full_chunked has fewer than 2 complete runs",
            }
        iv = row["vs_full"]
        numbers = (
            f"{variant}: {iv['ratio']:.3f}× full [{iv['lo']:.3f}, {iv['hi']:.3f}], "
            f"{row['runs']} seed(s); throughput {row['speed_over_full']:.2f}× full"
        )
        if row["lrs"] != [reference_lr]:
            return {
                "claim": claim,
                "verdict": "not comparable",
                "numbers": f"{numbers}; trained at lr {row['lrs']} (sweep)",
            }
        verdict = "reproduced" if test(iv, row) else "not reproduced"
        short = [
            f"{name} {r['runs']} of {len(r['planned_seeds'])} seeds"
            for name, r in ((variant, row), ("full_chunked", rows["full_chunked"]))
            if r["runs"] < len(r["planned_seeds"])
        ]
        if short:  # the plan lets finished runs give verdicts; say which seeds are still due
            verdict += " (provisional)"
            numbers += "; provisional: " + ", ".join(short)
        return {"claim": claim, "verdict": verdict, "numbers": f"{numbers}; needs {describe}"}

    behind = (lambda iv, row: iv["lo"] > 1.0), "lo > 1"
    return [
        judge(
            "adaptive_default",
            "Grave et al. 2017: adaptive at about full's perplexity "
            "(text8 147 vs 144) in a fraction of the time",
            lambda iv, row: iv["hi"] <= 1.05 and row["speed_over_full"] >= 2,
            "hi ≤ 1.05 and ≥ 2× throughput",
        ),
        judge(
            "hierarchical_huffman",
            "Grave et al. 2017: HSM by frequency behind full (text8 166 vs 144)",
            *behind,
        ),
        judge(
            "importance_default",
            "Grave et al. 2017: importance sampling behind full (text8 166 vs 144)",
            *behind,
        ),
        judge(
            "spherical_default",
            "de Brébisson & Vincent 2016: spherical softmax behind "
            "log-softmax on language modelling",
            *behind,
        ),
        judge(
            "taylor_default",
            "de Brébisson & Vincent 2016: Taylor softmax behind log-softmax on language modelling",
            *behind,
        ),
        judge(
            "class_default",
            "Goodman 2001, Mikolov et al. 2011: class-based softmax, a "
            "small loss for a large speed-up",
            lambda iv, row: iv["hi"] <= 1.10 and row["speed_over_full"] >= 2,
            "hi ≤ 1.10 and ≥ 2× throughput",
        ),
        judge(
            "nce_default",
            "Mnih & Teh 2012: NCE level with full",
            lambda iv, row: iv["hi"] <= 1.05,
            "hi ≤ 1.05",
        ),
    ]


def ratio_cell(iv: dict[str, Any]) -> str:
    """A ratio to ``full`` as the tables print it: value, interval, wording, the 1-seed mark."""
    mark = " (spread assumed: 1 seed)" if iv["assumed_spread"] else ""
    return f"{iv['ratio']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}]: {iv['wording']}{mark}"


def speed_cell(row: dict[str, Any]) -> str:
    """The throughput ratio to ``full``, marked "(runs)" when it is not the measurement's."""
    speed = row.get("speed_over_full")
    cell = "—" if speed is None else f"{speed:.2f}"
    return cell + (" (runs)" if row.get("speed_source") == "runs" else "")


def markdown(summary: dict[str, Any]) -> str:
    def num(x: float | None, spec: str = ".2f") -> str:
        return "—" if x is None else format(x, spec)

    def minutes(s: float | None) -> str:
        return "not reached" if s is None else f"{s / 60:.0f} min"

    head = (
        "| run | seeds (of plan) | validation after epoch 1 … 6 (mean) | test (mean ± sd) | "
        "÷ full, 95% interval | tokens/s × full | min to full's epoch 1 / 6 | "
        "SimLex ρ in / out (pairs) |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for variant, row in summary["variants"].items():
        seeds = f"{row['runs']} of {len(row['planned_seeds'])}"
        if not row["runs"]:
            lines.append(f"| `{variant}` | {seeds} | not yet run | | | | | |")
            continue
        vals = ", ".join(num(v) for v in row["val_by_epoch"])
        test = num(row["test_mean"]) + (f" ± {row['test_sd']:.2f}" if row["test_sd"] else "")
        iv = row.get("vs_full")
        ratio = "—" if iv is None else ratio_cell(iv)
        speed = speed_cell(row)
        times = (
            f"{minutes(row.get('seconds_to_full_epoch1'))} / "
            f"{minutes(row.get('seconds_to_full_epoch6'))}"
            if iv is not None
            else "—"
        )
        if iv is not None and row["clock"] == "own":
            times += " (own clock)"
        sims = [row[f"simlex_{s}"] for s in ("input", "output")]
        simlex = " / ".join(num(s and s["rho"], ".3f") for s in sims)
        if sims[0] or sims[1]:
            known = next(s for s in sims if s)
            simlex += f" ({known['covered']}/{known['total']})"
        lr = "" if row["lrs"] == [20.0] else f" (lr {row['lrs']})"
        lines.append(
            f"| `{variant}`{lr} | {seeds} | {vals} | {test} | {ratio} | {speed} | "
            f"{times} | {simlex} |"
        )
    left = [
        f"`{run}`: {'; '.join(problems)}"
        for row in summary["variants"].values()
        for run, problems in row["left_out"].items()
    ]
    if left:
        lines += ["", "Left out of every mean, ratio and verdict: " + " · ".join(left) + "."]
    measured = next(iter(summary.get("throughput", {}).values()), None)
    lines += [
        "",
        "tokens/s × full: "
        + (
            f"measured by `python scripts/study.py --throughput` at {measured['commit'][:7]} "
            f"({measured['steps']} steps of each variant, {measured['rounds']} rounds in "
            "alternating order, one core, the other idle; results/study/throughput.json); "
            '"(runs)": from the runs\' own tokens/s, which depend on what the other lane trained.'
            if measured
            else 'from the runs\' own tokens/s ("(runs)"), which depend on what the other lane '
            "trained: `python scripts/study.py --throughput` measures them alike."
        ),
    ]
    own = any(r.get("clock") == "own" and "vs_full" in r for r in summary["variants"].values())
    lines += [
        "",
        "min to full's epoch 1 / 6: the training minutes at which the head's mean validation "
        "reaches full's mean after epoch 1 and after epoch 6, on one clock: tokens trained ÷ "
        "the head's measured one-core tokens/s (PLAN.md, sixth-session amendment)."
        + (
            ' "(own clock)": the head has no measurement, so its runs\' clocks are used, which '
            "depend on the machine, the neighbour and the threads."
            if own
            else ""
        ),
    ]
    lines += ["", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [
        f"| {v['claim']} | **{v['verdict']}** | {v['numbers']} |" for v in summary["verdicts"]
    ]
    return "\n".join(lines)


def readme_summary(summary: dict[str, Any]) -> str:
    """The README's short form of the table: each head with a ratio to ``full``, closest first,
    the heads still waiting for one, and the verdicts."""
    rows = summary["variants"]
    ranked = sorted((v for v, r in rows.items() if "vs_full" in r),
                    key=lambda v: rows[v]["vs_full"]["ratio"])  # fmt: skip
    lines = [
        "| head | seeds | test (mean) | validation ÷ full, 95% interval | tokens/s × full |",
        "|---|---|---|---|---|",
    ]
    for variant in ranked:
        row = rows[variant]
        lines.append(
            f"| `{variant}` | {row['runs']} | {row['test_mean']:.2f} | "
            f"{ratio_cell(row['vs_full'])} | {speed_cell(row)} |"
        )
    waiting = [f"`{v}`" for v, r in rows.items() if "vs_full" not in r]
    if waiting:
        lines += ["", f"Not yet run to the end: {', '.join(waiting)}."]
    lines += ["", "Against the literature (RESULTS.md gives the numbers and the rule of each):"]
    lines += [f"- {v['claim']}: **{v['verdict']}**" for v in summary["verdicts"]]
    return "\n".join(lines)


def insert(path: Path, text: str, start: str = START, end: str = END) -> None:
    """Replace what lies between the ``start`` and ``end`` markers of ``path`` with ``text``."""
    old = path.read_text()
    if start not in old or end not in old:
        raise SystemExit(f"{path} has no {start} … {end} markers to write between")
    before, rest = old.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{text}\n{end}{after}")


def plot(by_variant: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    tab20 = plt.get_cmap("tab20").colors
    palette = tab20[0::2] + tab20[1::2]
    for i, (variant, row) in enumerate(summary["variants"].items()):
        if not row["runs"]:
            continue
        color = palette[i % len(palette)]
        for run in by_variant[variant]:
            if not run["problems"]:
                hours = [s / 3600 for s in run["seconds_by_epoch"]]
                ax.plot(hours, run["val_by_epoch"], color=color, alpha=0.3, lw=0.8)
        hours = [s / 3600 for s in row["seconds_by_epoch"]]
        ax.plot(
            hours,
            row["val_by_epoch"],
            "o-",
            color=color,
            ms=4,
            label=f"{variant} ({row['runs']} seed{'s' if row['runs'] > 1 else ''})"
            + (" (own clock)" if row["clock"] == "own" else ""),
        )
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("training hours: tokens ÷ the head's measured one-core tokens/s")
    ax.set_ylabel("validation perplexity (whole split, epoch ends)")
    ax.set_title("WikiText-2, 2-layer LSTM 200, lr 20 → 5 → 1.25 at epochs 5, 6: every head")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=REPO / "results" / "study" / "runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "study")
    parser.add_argument("--results-md", type=Path, default=REPO / "RESULTS.md")
    parser.add_argument("--readme", type=Path,
                        help="the README whose study summary to write (default: README.md "
                        "beside --results-md, where there is one)")  # fmt: skip
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    by_variant = load(args.runs)
    summary = summarize(by_variant, load_throughput(args.runs.parent / "throughput.json"))
    table = markdown(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"summary": summary, "runs": by_variant}
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_plot:
        plot(by_variant, summary, args.out / "validation_time.png")
    insert(args.results_md, table)
    readme = args.readme or args.results_md.with_name("README.md")
    if args.readme or readme.exists():
        insert(readme, readme_summary(summary), SUMMARY_START, SUMMARY_END)
    print(table)
    return report


if __name__ == "__main__":
    main()
