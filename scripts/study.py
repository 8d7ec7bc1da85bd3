#!/usr/bin/env python
"""Run the study's queue on one lane (docs/study/PLAN.md): resumable, pinned, one thread a core.

    python scripts/study.py --list                     # the runs, their commands and state
    python scripts/study.py --lane 0                   # lane 0's queue, then lane 1's unclaimed
    python scripts/study.py --lane 1
    python scripts/study.py --lane both                # the margin heads, alone on both cores
    python scripts/study.py --fingerprint full_chunked_s1234   # first 20 steps, to the last digit
    python scripts/study.py --throughput --lane 0       # every head's tokens/s, the other core idle
    python scripts/study.py --sweep spherical_default --lane 0   # the lr sweep of a diverged head

Each run trains in ``runs/study/<name>/`` (checkpoints, logs; not committed) under
``taskset -c <lane>`` with ``--threads 1``, and continues with ``--resume last`` when its
``last.ckpt`` exists. Lane ``both`` pins its runs to ``0,1`` with ``--threads 2`` while nothing
else runs: a one-thread run of a margin head outlasts a session, whose end loses checkpoints.
A finished run's small files go to ``results/study/runs/<name>/``:
``results.json``, ``metrics.csv`` (every restart's CSV log, in order), ``command.txt`` (the
first start's; a restart adds ``--resume last``) and ``run.json`` (every start: lane, threads,
host, load average at start and end, exit status, commit, command); a run with
``results.json`` there is done and skipped. A lane claims a run (``runs/study/claims/``) before
starting it, so two lanes never train the same run. A dirty code tree is refused: every result
must come from a commit (``--allow-dirty`` for tests only). Ctrl-C or SIGTERM stops the lane
after the recipe saved ``last.ckpt``; starting the lane again continues there.

A run whose first epoch-end validation diverged (PLAN.md: not finite, or above the
vocabulary's 33,278 words) is stopped there (SIGTERM: ``last.ckpt`` saved, ``diverged.json``
written), and its head's runs wait for its learning rate. ``--sweep VARIANT`` trains 1 epoch at
each of lr 10, 5 and 2.5 (``<variant>_lr<lr>_sweep_s1234``), picks the lowest epoch-1
validation perplexity among those that did not diverge, and writes the choice to
``results/study/lr_sweep.json`` and ``docs/study/LR_SWEEP.md``. Once that file is committed, the
head's runs start afresh at the chosen lr (the diverged attempt's folder is kept beside them,
renamed ``..._lr20_diverged``).

``--throughput`` measures what a lane's own tokens/s cannot: the two cores share memory
bandwidth and cache, so a run's speed depends on what the other lane trains. It trains every
variant (its first seed) for ``--steps`` steps on one core, one after another, in ``--rounds``
rounds (the plan's order, then reversed), while nothing else runs. The tokens/s of each start go
to ``results/study/throughput.json``, and ``study_report.py`` takes the ratios to ``full`` from
there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from recipes.provenance import git_state  # noqa: E402

CONFIG = REPO / "recipes" / "configs" / "study_wikitext2.yaml"
WORK = REPO / "runs" / "study"
RESULTS = REPO / "results" / "study" / "runs"
LR_SWEEP_MD = REPO / "docs" / "study" / "LR_SWEEP.md"
DIVERGED_ABOVE = 33_278.0
"""An epoch-1 validation perplexity above WikiText-2's vocabulary size is worse than uniform."""
SWEEP_LRS = (10.0, 5.0, 2.5)
DIVERGED = 3
"""``run_one``'s status for a run it stopped because it diverged (the lane goes on)."""


@dataclass(frozen=True)
class Variant:
    """A head with its options, and the seeds the plan gives it."""

    head: str
    options: dict[str, Any]
    seeds: tuple[int, ...]


# The plan's table (docs/study/PLAN.md), by run-name prefix.
STUDY_RUNS: dict[str, Variant] = {
    "full_chunked": Variant("full", {"chunk_size": "auto"}, (1234, 1235, 1236)),
    "adaptive_default": Variant("adaptive", {}, (1234, 1235, 1236)),
    "adaptive_taildrop05": Variant("adaptive", {"tail_dropout": 0.5}, (1234, 1235, 1236)),
    "class_default": Variant("class", {}, (1234, 1235)),
    "hierarchical_huffman": Variant("hierarchical", {"tree": "huffman"}, (1234, 1235)),
    "hierarchical_kary": Variant("hierarchical", {"tree": "kary"}, (1234, 1235)),
    "importance_default": Variant("importance", {}, (1234, 1235)),
    "nce_default": Variant("nce", {}, (1234, 1235)),
    "spherical_default": Variant("spherical", {}, (1234, 1235)),
    "taylor_default": Variant("taylor", {}, (1234, 1235)),
    "cosine_default": Variant("cosine", {}, (1234,)),
    "rbf_default": Variant("rbf", {}, (1234,)),
    "prototypes_default": Variant("prototypes", {}, (1234,)),
}

QUEUES: dict[str, tuple[str, ...]] = {
    "0": ("full_chunked_s1234", "full_chunked_s1235", "full_chunked_s1236",
          "spherical_default_s1234", "taylor_default_s1234",
          "spherical_default_s1235", "taylor_default_s1235"),
    "1": ("adaptive_default_s1234", "adaptive_taildrop05_s1234", "class_default_s1234",
          "hierarchical_huffman_s1234", "hierarchical_kary_s1234", "importance_default_s1234",
          "nce_default_s1234", "adaptive_default_s1235", "adaptive_taildrop05_s1235",
          "class_default_s1235", "hierarchical_huffman_s1235", "hierarchical_kary_s1235",
          "importance_default_s1235", "nce_default_s1235", "adaptive_default_s1236",
          "adaptive_taildrop05_s1236"),
    "both": ("prototypes_default_s1234", "cosine_default_s1234", "rbf_default_s1234"),
}  # fmt: skip
"""The plan's run order, by lane. Lanes 0 and 1 take each other's unclaimed runs; lane ``both``
(PLAN.md, sixth-session amendment) trains the margin heads alone on both cores, and shares
with none."""

CORES: dict[str, str] = {"0": "0", "1": "1", "both": "0,1"}
"""Each lane's cores (``taskset -c``); a run gets one thread per core."""


def all_runs() -> list[str]:
    return [f"{prefix}_s{seed}" for prefix, v in STUDY_RUNS.items() for seed in v.seeds]


def variant_of(name: str) -> tuple[Variant, int]:
    prefix, _, seed = name.rpartition("_s")
    prefix = re.sub(r"_lr[0-9.]+_sweep$", "", prefix)  # a sweep's run: its variant's head
    if prefix not in STUDY_RUNS or not seed.isdigit():
        raise SystemExit(f"{name!r} is not a study run; the runs are: {', '.join(all_runs())}")
    return STUDY_RUNS[prefix], int(seed)


def command(
    name: str, work: Path, config: Path, extra: list[str], lane: str | None, pin: bool = True
) -> list[str]:
    """The run's command line on ``lane``'s cores (pinned unless not ``pin``), one thread per
    core (one, unpinned, without a lane); ``--resume last`` when its ``last.ckpt`` exists."""
    variant, seed = variant_of(name)
    out = work / name
    cores = CORES[lane] if lane is not None else None
    cmd = ["taskset", "-c", cores] if cores and pin else []
    cmd += ["python", "recipes/lm.py", "--config", _here(config), "--head", variant.head,
            "--seed", str(seed), "--threads", str(threads(lane)), "--output-dir", _here(out),
            "--logger", "csv", "--no-progress-bar"]  # fmt: skip
    for key, value in variant.options.items():
        cmd += ["--head-option", f"{key}={value}"]
    cmd += extra
    if (out / "checkpoints" / "last.ckpt").is_file():
        cmd += ["--resume", "last"]
    elif (out / "checkpoints").exists() or (out / "results.json").exists():
        cmd += ["--overwrite"]  # a start that saved nothing to continue from
    return cmd


def threads(lane: str | None) -> int:
    return len(CORES[lane].split(",")) if lane is not None else 1


def _here(path: Path) -> str:
    """``path`` relative to the checkout when inside it (commands run there, and are recorded)."""
    path = path.absolute()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _executable(cmd: list[str]) -> list[str]:
    """The recorded command with this interpreter in place of ``python``."""
    return [sys.executable if part == "python" else part for part in cmd]


def _claim(claims: Path, name: str, lane: str) -> bool:
    """Take ``name`` for ``lane`` unless another lane holds it (an atomic create)."""
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{name}.lane"
    try:
        with path.open("x") as f:
            f.write(f"{lane}\n")
        return True
    except FileExistsError:
        return path.read_text().strip() == lane


def _merged_csv(out: Path) -> str | None:
    """Every restart's ``logs/version_*/metrics.csv``, in order, under one header."""
    versions = sorted(out.glob("logs/version_*/metrics.csv"),
                      key=lambda p: int(p.parent.name.split("_")[1]))  # fmt: skip
    if not versions:
        return None
    import csv
    import io

    rows, header = [], {}
    for path in versions:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                header.update(dict.fromkeys(row))
                rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _committed_code(what: str, args: argparse.Namespace) -> dict[str, Any]:
    """The code's git state; refuses uncommitted code (unless ``--allow-dirty``), so that
    ``what`` records the code it came from (docs/study/PLAN.md)."""
    git = git_state()
    if git["dirty"] and not args.allow_dirty:
        raise SystemExit(
            f"the code differs from commit {git['commit']}: commit it first, so that {what} "
            "records the code it came from (docs/study/PLAN.md)"
        )
    return git


def _lr_sweep_file(results: Path) -> Path:
    return results.parent / "lr_sweep.json"


def chosen_lrs(results: Path) -> dict[str, float]:
    """The sweeps' learning rates by variant (``lr_sweep.json``, beside the per-run results)."""
    path = _lr_sweep_file(results)
    if not path.is_file():
        return {}
    return {variant: float(v["lr"]) for variant, v in json.loads(path.read_text()).items()
            if v.get("lr") is not None}  # fmt: skip


def lr_option(name: str, results: Path) -> list[str]:
    """``--lr`` for a run whose head diverged at the plan's lr: its sweep's choice."""
    lr = chosen_lrs(results).get(name.rpartition("_s")[0])
    return [] if lr is None else ["--lr", f"{lr:g}"]


def first_validation(log: Path) -> float | None:
    """The first epoch-end validation perplexity the recipe printed to ``log`` (every start's
    output, in order), or ``None`` before there is one."""
    if not log.is_file():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("step ") and "  val_ppl " in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def diverged(ppl: float) -> bool:
    return not math.isfinite(ppl) or ppl > DIVERGED_ABOVE


def _wait_watching(proc: subprocess.Popen, log: Path, poll: float) -> tuple[int, float | None]:
    """Wait for the recipe; once its first epoch-end validation is printed, stop it with SIGTERM
    if that diverged (it saves ``last.ckpt`` and exits). Its exit status, and that perplexity
    if it diverged (also when the run ended before the check)."""
    while True:
        try:
            rc = proc.wait(timeout=poll)
            break
        except subprocess.TimeoutExpired:
            ppl = first_validation(log)
            if ppl is None:
                continue
            if diverged(ppl):
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait()
            break
    ppl = first_validation(log)
    return rc, ppl if ppl is not None and diverged(ppl) else None


def _waits_for_its_lr(name: str, args: argparse.Namespace) -> bool:
    """Whether a run of ``name``'s variant diverged and no committed sweep has chosen its lr."""
    variant = name.rpartition("_s")[0]
    if not any(args.work.glob(f"{variant}_s*/diverged.json")):
        return False
    if variant not in chosen_lrs(args.results):
        return True
    path = _lr_sweep_file(args.results)
    if not path.absolute().is_relative_to(REPO):
        return False  # outside the checkout (tests): nothing to commit
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--error-unmatch", str(path)],
                             capture_output=True)  # fmt: skip
    changed = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", str(path)])
    return tracked.returncode != 0 or changed.returncode != 0  # the plan: committed first


def run_one(name: str, args: argparse.Namespace) -> int:
    """Train (or continue) ``name``; copy its small files when it finished. The exit status."""
    out, keep = args.work / name, args.results / name
    git = _committed_code(f"{name}'s result", args)
    lr = lr_option(name, args.results)
    if (out / "diverged.json").is_file() and lr:
        out.rename(out.with_name(f"{name}_lr20_diverged"))  # kept; the run starts afresh
    extra = [*args.extra, *lr]
    cmd = command(name, args.work, args.config, extra, args.lane, not args.no_taskset)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "run": name, "lane": args.lane, "threads": threads(args.lane),
        "host": socket.gethostname(), "git": git,
        "command": shlex.join(cmd), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_start": os.getloadavg(),
    }  # fmt: skip
    print(f"[lane {args.lane}] {name}: {shlex.join(cmd)}", flush=True)
    with (out / "log.txt").open("a") as log:
        log.write(f"\n# {record['started']} {record['command']}\n")
        log.flush()
        proc = subprocess.Popen(_executable(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        rc, divergence = _wait_watching(proc, out / "log.txt", args.poll)
    record |= {"ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "load_average_end": os.getloadavg(), "exit_status": rc}  # fmt: skip
    attempts_path = out / "attempts.json"  # every start of the run, resumes included
    attempts = json.loads(attempts_path.read_text()) if attempts_path.is_file() else []
    attempts_path.write_text(json.dumps([*attempts, record], indent=1) + "\n")
    if divergence is not None:
        (out / "diverged.json").write_text(
            json.dumps({"epoch1_val_ppl": divergence, "above": DIVERGED_ABOVE, **record}, indent=1)
            + "\n"
        )
        variant = name.rpartition("_s")[0]
        print(
            f"[lane {args.lane}] {name}: diverged (epoch-1 validation {divergence:g}): stopped; "
            f"its head waits for `python scripts/study.py --sweep {variant}`",
            flush=True,
        )
        return DIVERGED
    if rc != 0 or not (out / "results.json").is_file():
        print(f"[lane {args.lane}] {name}: exit status {rc}, see {out / 'log.txt'}", flush=True)
        return rc or 1
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "results.json").write_bytes((out / "results.json").read_bytes())
    if (metrics := _merged_csv(out)) is not None:
        (keep / "metrics.csv").write_text(metrics)
    attempts.append(record)
    (keep / "command.txt").write_text(attempts[0]["command"] + "\n")  # from the checkout's root
    (keep / "run.json").write_text(json.dumps({"attempts": attempts}, indent=1) + "\n")
    print(f"[lane {args.lane}] {name}: finished, files in {keep}", flush=True)
    return 0


def run_lane(args: argparse.Namespace) -> int:
    own = list(args.queue) if args.queue else list(QUEUES[args.lane])
    sharing = [] if args.queue or args.lane == "both" else [QUEUES["0"], QUEUES["1"]]
    others = [n for q in sharing for n in q if n not in own]
    for name in own + others:
        variant_of(name)  # a typo stops the lane before anything runs
    for name in own + others:
        if (args.results / name / "results.json").is_file():
            continue  # finished
        if _waits_for_its_lr(name, args):
            print(f"[lane {args.lane}] {name}: waits for its sweep's lr (committed)", flush=True)
            continue
        if not _claim(args.work / "claims", name, args.lane):
            continue  # the other lane's
        rc = run_one(name, args)
        if rc in (130, 143):  # stopped by Ctrl-C / SIGTERM: last.ckpt saved, stop the lane too
            return rc
    return 0


def fingerprint(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The train loss of each of the first ``steps`` steps and a SHA-256 of the weights after
    them, at this checkout's commit: equal outputs at two commits mean identical training."""
    import csv

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        extra = [*args.extra, "--max-steps", str(args.steps), "--log-every", "1",
                 "--final-val-batches", "1", "--checkpoint-every", str(args.steps + 1)]  # fmt: skip
        extra += lr_option(name, args.results)
        cmd = command(name, out, args.config, extra, args.lane, not args.no_taskset)
        subprocess.run(_executable(cmd), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        state = torch.load(out / name / "checkpoints" / "last.ckpt", weights_only=True)
        digest = hashlib.sha256()
        for key in sorted(state["state_dict"]):
            digest.update(key.encode())
            digest.update(state["state_dict"][key].cpu().contiguous().numpy().tobytes())
        with next((out / name).glob("logs/version_*/metrics.csv")).open(newline="") as f:
            losses = [row["train_loss"] for row in csv.DictReader(f) if row.get("train_loss")]
    return {"run": name, "git": git_state(), "steps": args.steps, "train_loss": losses,
            "weights_sha256": digest.hexdigest()}  # fmt: skip


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Training tokens/s of every variant for ``args.steps`` steps, ``args.rounds`` times, at
    this checkout's commit (the recipe's own clock: optimizer steps only, the first excluded)."""
    git = _committed_code("the throughput measurement", args)
    names = args.queue or [f"{p}_s{variant.seeds[0]}" for p, variant in STUDY_RUNS.items()]
    extra = [*args.extra, "--max-steps", str(args.steps), "--final-val-batches", "1",
             "--limit-test-batches", "1", "--checkpoint-every", str(args.steps + 1)]  # fmt: skip
    rounds: list[list[dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for number in range(args.rounds):
            measured = []
            for name in names if number % 2 == 0 else names[::-1]:
                out = Path(tmp) / f"round{number}"
                more = [*extra, *lr_option(name, args.results)]
                cmd = command(name, out, args.config, more, args.lane, not args.no_taskset)
                start = os.getloadavg()
                subprocess.run(_executable(cmd), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
                result = json.loads((out / name / "results.json").read_text())
                measured.append({"run": name, "tokens_per_s": result["train_tokens_per_s"],
                                 "load_average_start": start,
                                 "load_average_end": os.getloadavg()})  # fmt: skip
                print(f"round {number + 1}: {name} {result['train_tokens_per_s']:,.0f} tokens/s",
                      flush=True)  # fmt: skip
            rounds.append(measured)
    return {"git": git, "host": socket.gethostname(), "lane": args.lane, "steps": args.steps,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rounds": rounds}  # fmt: skip


def sweep(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """PLAN.md's sweep for a head that diverged at lr 20: 1 epoch at each of ``SWEEP_LRS`` (all
    of them), seed 1234; the lowest epoch-1 validation among those that did not diverge wins."""
    git = _committed_code("the sweep", args)
    epoch1: dict[str, float | None] = {}
    for lr in SWEEP_LRS:
        name = f"{variant}_lr{lr:g}_sweep_s1234"
        extra = [*args.extra, "--lr", f"{lr:g}", "--max-epochs", "1"]
        cmd = command(name, args.work, args.config, extra, args.lane, not args.no_taskset)
        result = args.work / name / "results.json"
        if not result.is_file():  # a sweep started again reads the runs it finished
            args.work.mkdir(parents=True, exist_ok=True)
            with (args.work / f"{name}.log").open("a") as log:
                subprocess.run(_executable(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        keep = args.results.parent / "sweeps" / name
        if result.is_file():
            keep.mkdir(parents=True, exist_ok=True)
            (keep / "results.json").write_bytes(result.read_bytes())
        epoch1[f"{lr:g}"] = first_validation(args.work / f"{name}.log")
    fine = {lr: ppl for lr, ppl in epoch1.items() if ppl is not None and not diverged(ppl)}
    chosen = float(min(fine, key=lambda lr: fine[lr])) if fine else None
    path = _lr_sweep_file(args.results)
    choices = json.loads(path.read_text()) if path.is_file() else {}
    choices[variant] = {"lr": chosen, "epoch1_val_ppl": epoch1, "git": git}
    path.write_text(json.dumps(choices, indent=1) + "\n")
    (LR_SWEEP_MD if args.results == RESULTS else path.with_suffix(".md")).write_text(
        sweep_markdown(choices)
    )
    return choices[variant]


def sweep_markdown(choices: dict[str, Any]) -> str:
    lines = ["# Learning-rate sweeps (written by `python scripts/study.py --sweep VARIANT`)", "",
             "Heads whose first 6-epoch run diverged at lr 20 (docs/study/PLAN.md): 1 epoch at "
             "each lr, seed 1234; the lowest epoch-1 validation perplexity wins.", "",
             "| variant | " + " | ".join(f"lr {lr:g}" for lr in SWEEP_LRS) + " | chosen |",
             "|---|" + "---|" * (len(SWEEP_LRS) + 1)]  # fmt: skip
    for variant, v in choices.items():
        cells = []
        for lr in SWEEP_LRS:
            ppl = v["epoch1_val_ppl"].get(f"{lr:g}")
            cells.append(
                "no result" if ppl is None else f"{ppl:.2f}" + " (diverged)" * diverged(ppl)
            )
        chosen = "diverged at every lr" if v["lr"] is None else f"lr {v['lr']:g}"
        lines.append(f"| `{variant}` | {' | '.join(cells)} | {chosen} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lane", choices=tuple(CORES), help="cores to pin to, and its queue")
    p.add_argument("--list", action="store_true", help="print the queues and each run's state")
    p.add_argument("--fingerprint", metavar="NAME", help="first --steps steps of a run")
    p.add_argument("--steps", type=int, help="steps of --fingerprint (20), --throughput (100)")
    p.add_argument("--throughput", action="store_true", help="every variant's tokens/s")
    p.add_argument("--rounds", type=int, default=2, help="rounds of --throughput")
    p.add_argument("--sweep", metavar="VARIANT", help="the lr sweep of a head that diverged")
    p.add_argument("--poll", type=float, default=30.0, help="seconds between divergence checks")
    p.add_argument("--queue", nargs="+", metavar="NAME",
                   help="these runs instead of the lane's (or of --throughput's)")  # fmt: skip
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--work", type=Path, default=WORK, help="run folders (checkpoints)")
    p.add_argument("--results", type=Path, default=RESULTS, help="committed per-run files")
    p.add_argument("--no-taskset", action="store_true", help="do not pin (tests)")
    p.add_argument("--allow-dirty", action="store_true", help="run on uncommitted code (tests)")
    p.add_argument("--extra", default="", help="more recipe options, one string (tests)")
    args = p.parse_args(argv)
    args.extra = shlex.split(args.extra)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.list:
        for lane, queue in QUEUES.items():
            for name in queue:
                done = (args.results / name / "results.json").is_file()
                started = (args.work / name / "checkpoints" / "last.ckpt").is_file()
                state = "finished" if done else "started" if started else "to run"
                print(f"lane {lane:4s}  {name:30s} {state}")
        return 0
    if args.fingerprint:
        args.steps = args.steps or 20
        print(json.dumps(fingerprint(args.fingerprint, args), indent=1))
        return 0
    if args.sweep:
        if args.sweep not in STUDY_RUNS:
            raise SystemExit(f"{args.sweep!r} is not a variant; they are: {', '.join(STUDY_RUNS)}")
        print(json.dumps(sweep(args.sweep, args), indent=1))
        return 0
    if args.throughput:
        if args.lane is not None and threads(args.lane) != 1:
            raise SystemExit("--throughput measures one core: give --lane 0 or --lane 1")
        args.steps = args.steps or 100
        measured = throughput(args)
        path = args.results.parent / "throughput.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(measured, indent=1) + "\n")
        print(f"written to {path}")
        return 0
    if args.lane is None:
        raise SystemExit(
            "give --lane 0, 1 or both (or --list, --fingerprint NAME, --throughput, --sweep)"
        )
    return run_lane(args)


if __name__ == "__main__":
    sys.exit(main())
