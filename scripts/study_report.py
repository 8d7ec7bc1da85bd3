"""Tables, checks and plots of the study that ``scripts/results.py`` runs (computed, never typed).

Everything here reads the runs' ``results.json`` (and the driver's load samples); nothing trains.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAMPLED = ("importance", "nce")
"""Heads trained on sampled negatives (their losses are not the softmax's)."""
MARK_BEGIN, MARK_END = "<!-- results:begin -->", "<!-- results:end -->"


# ------------------------------------------------------------------------------------------------
# Small helpers the driver uses
def summarize_samples(name: str, samples: Sequence[float]) -> dict[str, Any]:
    if not samples:
        return {f"{name}_mean": None, f"{name}_max": None}
    return {f"{name}_mean": statistics.fmean(samples), f"{name}_max": max(samples)}


def one_line(res: dict[str, Any]) -> str:
    if "error" in res:
        return f"ERROR {res['error']}"
    text = f"val ppl {res['val_ppl']:.1f}, test ppl {res.get('test_ppl') or math.nan:.1f}"
    if "global_step" in res:
        text += f", {res['global_step']} steps, {res.get('train_tokens_per_s') or 0:,.0f} tok/s"
    return text + (" (reused)" if res.get("reused") else "")


def total_seconds(cont: dict[str, Any], prior: dict[str, Any], persisted: bool) -> float:
    """Training seconds of a resumed run from scratch (its clock restarts unless persisted)."""
    return cont["train_step_seconds"] + (0.0 if persisted else prior["train_step_seconds"])


def parse_examples_log(log: str, batch_tokens: int) -> dict[str, Any]:
    """Validation/test perplexity and speed from pytorch/examples' main.py output."""
    val = re.findall(r"end of epoch\s+\d+ .*valid ppl\s+([\d.]+)", log)
    test = re.findall(r"End of training .*test ppl\s+([\d.]+)", log)
    ms = re.findall(r"ms/batch\s+([\d.]+)", log)
    return {
        "val_ppl": float(val[-1]) if val else None,
        "test_ppl": float(test[-1]) if test else None,
        "train_tokens_per_s": batch_tokens / (float(ms[-1]) / 1000) if ms else None,
    }


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


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
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": loadavg()}  # fmt: skip


def estimate_minutes(args: argparse.Namespace, done: set[str]) -> float:
    """Rough duration on 2 cores, from the issue's measurements (full ~2,300 tokens/s, adaptive
    ~14,000; a WikiText-2 epoch is 2.09 M tokens; evaluation ~3× faster than training)."""
    if args.quick:
        return 1.0
    minutes = 0.0
    if "equal_time" in args.phases:
        todo = [h for h in args.heads if h not in done]
        minutes += len(todo) * (args.seconds * 1.08 + 15 + 65) / 60  # + validation, start, eval
    if "headline" in args.phases:
        more = max(0.0, args.headline_epochs * 2.09e6 / 14_000 - args.seconds)
        minutes += 2 * (more * 1.08 + 60) / 60
    if "reference" in args.phases:
        minutes += 2 * (args.reference_steps * 700 / 2_300 + 90) / 60
    return minutes


# ------------------------------------------------------------------------------------------------
# Curves
def stitched_curve(run: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's validation curve from scratch: a resumed run's own, after its source run's."""
    res = run.get("result") or {}
    curve = res.get("val_curve") or []
    prior = run.get("prior")
    if not prior or "error" in prior:
        return list(curve)
    seconds = 0.0 if run.get("persisted") else prior["train_step_seconds"]
    tokens = 0 if run.get("persisted") else prior["val_curve"][-1]["tokens"]
    later = [{**p, "train_seconds": p["train_seconds"] + seconds, "tokens": p["tokens"] + tokens}
             for p in curve]  # fmt: skip
    first = later[0]["step"] if later else math.inf
    return [p for p in prior["val_curve"] if p["step"] < first] + later


def first_reach(curve: Sequence[dict[str, Any]], target: float) -> float | None:
    """Training seconds at the first validation with perplexity ``<= target``."""
    return next((float(p["train_seconds"]) for p in curve if p["val_ppl"] <= target), None)


def nearest_epoch(curve: Sequence[dict[str, Any]], epoch: float) -> dict[str, Any] | None:
    points = [p for p in curve if p.get("epoch") is not None and p.get("simlex_input") is not None]
    return min(points, key=lambda p: abs(p["epoch"] - epoch)) if points else None


def _ok(run: dict[str, Any] | None) -> dict[str, Any] | None:
    res = (run or {}).get("result")
    return res if res and "error" not in res else None


def _sim(res: dict[str, Any], side: str) -> float | None:
    s = (res.get("similarity") or {}).get(side) or {}
    return s.get("spearman") if s.get("measured") else None


def _epochs(curve: Sequence[dict[str, Any]]) -> float | None:
    """Epochs at the curve's last point (the final one carries no epoch: scaled by steps)."""
    marked = [p for p in curve if p.get("epoch") and p["step"] > 0]
    if not marked:
        return None
    return curve[-1]["step"] * marked[-1]["epoch"] / marked[-1]["step"]


# ------------------------------------------------------------------------------------------------
# The study's tables
def build(
    runs: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    machine: dict[str, Any],
    command: str,
    elapsed: float,
) -> dict[str, Any]:
    eq = {r["head"]: r for r in runs.get("equal_time", [])}
    head = {r["head"]: r for r in runs.get("headline", [])}
    curves = {h: stitched_curve(r) for h, r in eq.items()}
    long = {h: stitched_curve(r) for h, r in head.items() if _ok(r)}
    fulls = [res["val_ppl"] for res in (_ok(eq.get("full")), _ok(head.get("full"))) if res]
    target = args.target_ppl or (min(fulls) if fulls else None)
    study = {
        "command": command,
        "machine": machine,
        "elapsed_s": elapsed,
        "settings": settings(args),
        "target_ppl": target,
        "target_source": "--target-ppl" if args.target_ppl else "best validation ppl of full",
        "equal_time": [equal_time_row(h, r, curves[h], long.get(h), target) for h, r in eq.items()],
        "headline": headline_rows(head),
        "simlex_trend": simlex_trend(long.get("adaptive") or curves.get("adaptive") or []),
        "reference": reference_row(runs.get("reference", [])),
        "load": [load_row(r) for phase in runs.values() for r in phase if _ok(r)],
    }
    study["checks"] = literature_checks(study)
    return study


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"data": args.data, "config": None if args.quick else str(args.config),
            "seconds": args.seconds, "val_every": args.val_every, "val_batches": args.val_batches,
            "headline_epochs": args.headline_epochs,
            "headline_full_seconds": args.headline_full_seconds,
            "reference_steps": args.reference_steps,
            "threads": args.threads, "seed": args.seed, "quick": args.quick,
            "final_batches": args.final_batches}  # fmt: skip


def equal_time_row(
    head: str,
    run: dict[str, Any],
    curve: list[dict[str, Any]],
    long: list[dict[str, Any]] | None,
    target: float | None,
) -> dict[str, Any]:
    res = _ok(run)
    if res is None:
        return {"head": head, "error": run["result"].get("error")}
    reach = first_reach(long or curve, target) if target else None
    return {
        "head": head, "val_ppl": res["val_ppl"], "test_ppl": res["test_ppl"],
        "steps": res["global_step"], "epochs": _epochs(curve),
        "tokens_per_s": res.get("train_tokens_per_s"), "parameters": res.get("parameters"),
        "train_seconds": res.get("train_step_seconds"),
        "simlex_input": _sim(res, "input"), "simlex_output": _sim(res, "output"),
        "simlex_source": (res.get("similarity") or {}).get("source"),
        "peak_rss_mib": res.get("peak_memory_mib"),
        "entropy_floor_ppl": res.get("entropy_floor_ppl"),
        "minutes_to_target": None if reach is None else reach / 60,
        "target_within": "continued" if long else "equal time",
        "subset_over_whole": subset_over_whole(curve),
        "curve": curve,
    }  # fmt: skip


def subset_over_whole(curve: Sequence[dict[str, Any]]) -> float | None:
    """Last periodic (subset) validation ppl over the final whole-split one: the curves' bias."""
    periodic = [p for p in curve if not p.get("final")]
    if not periodic or not curve[-1].get("final"):
        return None
    return periodic[-1]["val_ppl"] / curve[-1]["val_ppl"]


def headline_rows(head: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, run in head.items():
        res = _ok(run)
        if res is None:
            rows.append({"head": name, "error": run.get("result", {}).get("error")})
            continue
        curve = stitched_curve(run)
        rows.append({
            "head": name, "val_ppl": res["val_ppl"], "test_ppl": res["test_ppl"],
            "train_minutes": total_seconds(res, run["prior"], run["persisted"]) / 60,
            "epochs": _epochs(curve), "steps": res["global_step"],
            "simlex_input": _sim(res, "input"), "simlex_output": _sim(res, "output"),
            "curve": curve,
        })  # fmt: skip
    return rows


def simlex_trend(curve: list[dict[str, Any]], epochs: Sequence[float] = (1, 3, 6)) -> list:
    """SimLex ρ of the (adaptive) curve's points nearest the given epochs."""
    out = []
    for epoch in epochs:
        p = nearest_epoch(curve, epoch)
        if p is not None and abs(p["epoch"] - epoch) < 0.5:
            out.append({"epoch": p["epoch"], "simlex_input": p["simlex_input"],
                        "simlex_output": p.get("simlex_output"),
                        "val_ppl": p["val_ppl"]})  # fmt: skip
    return out


def reference_row(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    if len(runs) != 2:
        return None
    ours, theirs = _ok(runs[0]), _ok(runs[1])
    if ours is None or theirs is None:
        return {"error": (runs[0]["result"] if ours is None else runs[1]["result"]).get("error")}
    ratio = ours["val_ppl"] / theirs["val_ppl"]
    return {"steps": theirs["steps"], "ours_val_ppl": ours["val_ppl"],
            "ours_test_ppl": ours["test_ppl"], "theirs_val_ppl": theirs["val_ppl"],
            "theirs_test_ppl": theirs["test_ppl"], "val_ratio": ratio,
            "within_2pct": abs(ratio - 1) <= 0.02,
            "ours_tokens_per_s": ours.get("train_tokens_per_s"),
            "theirs_tokens_per_s": theirs.get("train_tokens_per_s"),
            "theirs_note": theirs.get("note"),
            "examples_commit": theirs.get("examples_commit")}  # fmt: skip


def load_row(run: dict[str, Any]) -> dict[str, Any]:
    return {"phase": run["phase"], "head": run["head"], "reused": bool(run["result"].get("reused")),
            **(run["result"].get("load") or {})}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Literature checks, from the tables
def _rows(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["head"]: r for r in study["equal_time"] if "error" not in r}


def literature_checks(study: dict[str, Any]) -> list[dict[str, Any]]:
    rows, checks = _rows(study), []
    full, ada = rows.get("full"), rows.get("adaptive")
    if full and ada:
        checks.append(grave_check(study, full, ada))
    claims = [(name, "", f"{name} is behind the log-softmax on language modelling (de Brébisson "
               "& Vincent 2016)") for name in ("spherical", "taylor")]  # fmt: skip
    claims += [(name, "gap ", f"the sampled head {name} trails the full softmax (Jean et al. "
                "2015; Mnih & Teh 2012)") for name in SAMPLED]  # fmt: skip
    for name, gap_label, claim in claims:
        if full and name in rows:
            gap = rows[name]["val_ppl"] / full["val_ppl"] - 1
            checks.append({
                "claim": claim, "holds": gap > 0,
                "evidence": f"equal time: {name} val ppl {rows[name]['val_ppl']:.1f} vs full "
                f"{full['val_ppl']:.1f} ({gap_label}{100 * gap:+.1f}%)",
            })  # fmt: skip
    if rows:
        ranked = sorted(rows.values(), key=lambda r: r["val_ppl"])
        checks.append({
            "claim": "winner at equal time (lowest validation perplexity)", "holds": None,
            "evidence": ", ".join(f"{r['head']} {r['val_ppl']:.1f}" for r in ranked[:4])
            + f"; last: {ranked[-1]['head']} {ranked[-1]['val_ppl']:.1f}",
        })  # fmt: skip
    return checks


def grave_check(study: dict[str, Any], full: dict[str, Any], ada: dict[str, Any]) -> dict:
    """Grave et al. 2017: adaptive reaches full's perplexity with 2-10× less training time."""
    long = {r["head"]: r for r in study["headline"] if "error" not in r}
    src = long.get("full") or full
    ppl, minutes = src["val_ppl"], src.get("train_minutes") or full["train_seconds"] / 60
    curve = (long.get("adaptive") or ada)["curve"]
    reach = first_reach(curve, ppl)
    speed = (ada["tokens_per_s"] or 0) / (full["tokens_per_s"] or math.inf)
    where = "headline" if "full" in long else "equal time"
    claim = "adaptive reaches full's perplexity with 2-10× less training time (Grave et al. 2017)"
    if reach is None:
        return {"claim": claim, "holds": False,
                "evidence": f"adaptive never reached full's {ppl:.1f} ({where}, full trained "
                f"{minutes:.1f} min); tokens/s ratio {speed:.1f}×"}  # fmt: skip
    factor = minutes / (reach / 60)
    return {"claim": claim, "holds": factor >= 2,
            "evidence": f"full reached val ppl {ppl:.1f} after {minutes:.1f} training min "
            f"({where}); adaptive reached it after {reach / 60:.1f} min: {factor:.1f}× less "
            f"time{' (more than claimed)' if factor > 10 else ''}; tokens/s ratio "
            f"{speed:.1f}×"}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Markdown
def _f(x: Any, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def markdown(study: dict[str, Any], prefix: str = "") -> str:
    m = study["machine"]
    lines = [f"Command: `{study['command']}`", "",
             f"Machine: {m['cpu']} ({m['cpu_count']} logical CPUs), torch {m['torch']}; load "
             f"average at start {m['loadavg_start']}, at end {m['loadavg_end']}; the study took "
             f"{study['elapsed_s'] / 60:.1f} min (reused runs count 0).", ""]  # fmt: skip
    lines += equal_time_md(study, prefix) + headline_md(study, prefix) + reference_md(study)
    if study["checks"]:
        lines += ["### Checks against the literature (computed from the tables)", ""]
        for c in study["checks"]:
            verdict = {True: "reproduced", False: "**not reproduced**", None: "measured"}
            lines.append(f"- {c['claim']}: {verdict[c['holds']]}. {c['evidence']}.")
        lines.append("")
    lines += load_md(study)
    return "\n".join(lines)


def equal_time_md(study: dict[str, Any], prefix: str) -> list[str]:
    s, target = study["settings"], study["target_ppl"]
    final = ("the whole splits" if float(s["final_batches"]) == 1.0 else
             f"only {s['final_batches']} batches of each split (a smoke test)")  # fmt: skip
    config = "the --quick tiny model" if s["quick"] else f"reference configuration `{s['config']}`"
    lines = ["### Equal wall-clock", "",
             f"Every head, {config}, {s['seconds']:g} s of training (optimizer steps only), "
             f"{s['threads']} threads, seed {s['seed']}, data `{s['data']}`. Curves: "
             f"validation every {s['val_every']} steps on the first {s['val_batches']} "
             f"validation batches; val/test ppl: {final} at the end.", ""]  # fmt: skip
    source = next((r.get("simlex_source") for r in study["equal_time"] if r.get("simlex_source")),
                  None)  # fmt: skip
    lines += [f"Similarity set: {source or 'none measured'}. {simlex_spread(study)}", ""]
    if target:
        lines += [f"Target for time to target: validation ppl {target:.1f} "
                  f"({study['target_source']}).{subset_bias(study)}", ""]  # fmt: skip
    header = ["head", "val ppl", "test ppl", "steps", "epochs", "train tok/s", "params",
              "SimLex ρ in", "SimLex ρ out", "peak RSS (MiB)", "min to target"]  # fmt: skip
    rows = []
    for r in study["equal_time"]:
        if "error" in r:
            rows.append([f"`{r['head']}`", f"failed: {r['error']}"] + ["–"] * (len(header) - 2))
            continue
        reach = _f(r["minutes_to_target"])
        if r["target_within"] == "continued" and reach != "–":
            reach += " (headline run)"
        rows.append([f"`{r['head']}`", _f(r["val_ppl"]), _f(r["test_ppl"]), str(r["steps"]),
                     _f(r["epochs"], ".2f"), _f(r["tokens_per_s"], ",.0f"),
                     _f(r["parameters"], ",d"), _f(r["simlex_input"], ".3f"),
                     _f(r["simlex_output"], ".3f"), _f(r["peak_rss_mib"], ",.0f"),
                     reach if reach != "–" else "not reached"])  # fmt: skip
    lines += _table(header, rows)
    lines += [f"![validation perplexity against training minutes]({prefix}curves_equal_time.png)",
              ""]  # fmt: skip
    return lines


def headline_md(study: dict[str, Any], prefix: str) -> list[str]:
    if not study["headline"]:
        return []
    s = study["settings"]
    lines = ["### Headline", "",
             f"`adaptive` resumed from its equal-time run and trained to {s['headline_epochs']} "
             "epochs; `full` resumed likewise and trained for "
             + ("the same training minutes." if s.get("headline_full_seconds") is None else
                f"{s['headline_full_seconds'] / 60:.0f} training minutes."),
             ""]  # fmt: skip
    header = ["head", "test ppl", "val ppl", "training min", "epochs", "steps", "SimLex ρ in",
              "SimLex ρ out"]  # fmt: skip
    rows = [[f"`{r['head']}`", f"failed: {r['error']}", *["–"] * 6] if "error" in r else
            [f"`{r['head']}`", _f(r["test_ppl"]), _f(r["val_ppl"]), _f(r["train_minutes"]),
             _f(r["epochs"], ".2f"), str(r["steps"]), _f(r["simlex_input"], ".3f"),
             _f(r["simlex_output"], ".3f")] for r in study["headline"]]  # fmt: skip
    lines += _table(header, rows)
    if study["simlex_trend"]:
        rows = [[_f(p["epoch"], ".2f"), _f(p["val_ppl"]), _f(p["simlex_input"], ".3f"),
                 _f(p["simlex_output"], ".3f")] for p in study["simlex_trend"]]  # fmt: skip
        lines += ["SimLex ρ of `adaptive` with training (curve points nearest 1, 3 and 6 "
                  "epochs):", "",
                  *_table(["epoch", "val ppl (subset)", "ρ input", "ρ output"], rows)]  # fmt: skip
    lines += [f"![headline curves]({prefix}headline.png)", ""]
    return lines


def subset_bias(study: dict[str, Any]) -> str:
    ratios = [r["subset_over_whole"] for r in study["equal_time"] if r.get("subset_over_whole")]
    if not ratios:
        return ""
    return (f" The curves' subset reads {min(ratios):.3f}–{max(ratios):.3f}× the whole split's "
            "perplexity at the end of the runs (last periodic point against the final one), "
            "which shifts times to target accordingly.")  # fmt: skip


def simlex_spread(study: dict[str, Any]) -> str:
    """How far apart the heads' SimLex ρ are, against how much ρ moves with training."""
    rhos = sorted((r["simlex_input"], r["head"]) for r in study["equal_time"]
                  if r.get("simlex_input") is not None)  # fmt: skip
    if not rhos:
        return ""
    (lo, lo_head), (hi, hi_head) = rhos[0], rhos[-1]
    text = (f"Input-embedding ρ at equal time spans {lo:.3f} (`{lo_head}`) to {hi:.3f} "
            f"(`{hi_head}`), a spread of {hi - lo:.3f}")  # fmt: skip
    trend = study["simlex_trend"]
    if len(trend) >= 2:
        first, last = trend[0], trend[-1]
        text += (f"; `adaptive` alone moves from {first['simlex_input']:.3f} at epoch "
                 f"{first['epoch']:.1f} to {last['simlex_input']:.3f} at epoch "
                 f"{last['epoch']:.1f}")  # fmt: skip
    return text + "."


def reference_md(study: dict[str, Any]) -> list[str]:
    r = study["reference"]
    if r is None:
        return ["### pytorch/examples side by side", "", "Not run (no checkout found).", ""]
    if "error" in r:
        return ["### pytorch/examples side by side", "", f"Failed: {r['error']}.", ""]
    verdict = "within 2%" if r["within_2pct"] else "**not within 2%**"
    rows = [[name, _f(r[f"{who}_val_ppl"], ".2f"), _f(r[f"{who}_test_ppl"], ".2f"),
             _f(r[f"{who}_tokens_per_s"], ",.0f")]
            for name, who in (("pytorch/examples", "theirs"),
                              ("recipes/lm.py --head full", "ours"))]  # fmt: skip
    return ["### pytorch/examples side by side", "",
            f"Equal steps ({r['steps']} batches of 20 × 35), same configuration; their `main.py` "
            f"(commit {r.get('examples_commit') or 'unknown'}) unmodified but for the step cap, "
            "applied by the driver in a temporary copy.", "",
            *_table(["", "val ppl", "test ppl", "train tok/s"], rows),
            f"Ratio ours / theirs (val ppl): {r['val_ratio']:.4f}: {verdict}."
            + (f" Their run: {r['theirs_note']}." if r.get("theirs_note") else ""), ""]  # fmt: skip


def load_md(study: dict[str, Any]) -> list[str]:
    header = ["phase", "run", "wall min", "load avg (1 min) mean / max", "study CPU (cores)",
              "machine busy (cores)"]  # fmt: skip
    rows = [[r["phase"], r["head"] + (" (reused)" if r["reused"] else ""),
             _f(r.get("wall_s") and r["wall_s"] / 60),
             f"{_f(r.get('loadavg_1min_mean'), '.2f')} / {_f(r.get('loadavg_1min_max'), '.2f')}",
             _f(r.get("study_cpu_cores"), ".2f"), _f(r.get("machine_busy_cores_mean"), ".2f")]
            for r in study["load"]]  # fmt: skip
    return ["### Machine load during each run", "",
            "Sampled every 5 s by the driver: /proc/loadavg, and busy CPUs from /proc/stat; study "
            "CPU = the run's own CPU seconds / its wall seconds.", "",
            *_table(header, rows)]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Plots and files
def plot(study: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = [*plt.get_cmap("tab10").colors, "black", "olive", "teal", "navy"]
    for name, rows in (("curves_equal_time", study["equal_time"]), ("headline", study["headline"])):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, r in enumerate(x for x in rows if "error" not in x):
            colour = palette[i % len(palette)]
            for final in (False, True):  # periodic (subset) points joined; whole-split ones apart
                pts = [p for p in r["curve"] if bool(p.get("final")) == final]
                ax.plot([p["train_seconds"] / 60 for p in pts], [p["val_ppl"] for p in pts],
                        "s" if final else "-o", ms=5 if final else 2, lw=1.2, color=colour,
                        label=None if final else r["head"])  # fmt: skip
        if study["target_ppl"]:
            ax.axhline(study["target_ppl"], color="grey", ls=":", lw=1, label="target")
        ax.set_yscale("log")
        ax.set_xlabel("training minutes (optimizer steps only)")
        ax.set_ylabel("validation perplexity (lines: subset; squares: whole split)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=110)
        plt.close(fig)


def write_results_md(path: Path, body: str) -> None:
    """Replace the text between the markers of ``path`` (which must hold both) by ``body``."""
    text = path.read_text()
    start, end = text.find(MARK_BEGIN), text.find(MARK_END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no {MARK_BEGIN} ... {MARK_END} section to fill")
    path.write_text(text[: start + len(MARK_BEGIN)] + "\n" + body + "\n" + text[end:])


def write_outputs(study: dict[str, Any], out_dir: Path, results_md: Path | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.json").write_text(json.dumps(study, indent=1, default=str) + "\n")
    plot(study, out_dir)
    (out_dir / "study.md").write_text(markdown(study) + "\n")
    if results_md is not None:
        prefix = os.path.relpath(out_dir.resolve(), results_md.resolve().parent) + "/"
        write_results_md(results_md, markdown(study, prefix=prefix))
