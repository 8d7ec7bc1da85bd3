r"""The study: every head trained on WikiText-2 for real, quality against training time.

Three phases, each a list of ``recipes/lm.py`` runs (one subprocess per run: isolated, and its
peak RSS is that run's own), in this order so the most important results land first:

- ``equal_time``: every registered head with the reference configuration
  (``recipes/configs/wikitext2_reference.yaml``: pytorch/examples' word_language_model), 6 minutes
  of training each (``--max-time 360``; Chen, Grangier & Auli 2016's protocol), validated every
  ``--val-every`` steps on the first ``--val-batches`` validation batches (the curves), then on
  the whole validation and test splits, and SimLex-999 on the trained embeddings.
- ``headline``: ``adaptive`` resumed from its equal-time checkpoint and trained to
  ``--headline-epochs`` (6) epochs, then ``full`` resumed likewise and trained to the same
  training seconds.
- ``reference``: pytorch/examples' ``main.py`` (from ``--examples``, run unmodified but for a cap
  of ``--reference-steps`` training batches, patched into a temporary copy) against the recipe
  with ``--head full --max-steps`` the same, both validated on the whole validation split.

Resumable: a run whose directory holds a ``results.json`` from the same recipe command is reused,
and one killed mid-way continues from its ``last.ckpt``. During each run the driver samples
``/proc/loadavg`` and the machine's CPU use, and records the study's own CPU use.

Usage::

    nohup nice -n 5 python scripts/results.py --results-md RESULTS.md > results/study.log 2>&1 &
    python scripts/results.py --phases reference          # one phase
    python scripts/results.py --quick --output-dir /tmp/q   # tiny synthetic smoke test, ~1 min
    python scripts/results.py --data synthetic --output-dir results/synthetic  # synthetic suite

Outputs in ``--output-dir`` (default ``results/``): ``study.json`` (every run, the tables, the
checks, the machine and the command), ``study.md`` and the plots; ``--results-md`` also fills the
marked section of RESULTS.md. Per-run outputs stay in ``--work-dir`` (default ``runs/study``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import study_report as report

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "lm.py"
CONFIG = REPO / "recipes" / "configs" / "wikitext2_reference.yaml"
DATA = REPO.parent / "shared" / "data"
PHASES = ("equal_time", "headline", "reference")
NO_STEP_LIMIT = str(10**9)  # the recipe's -1 needs --max-epochs; time-limited runs have none
QUICK = {
    "data": "synthetic", "heads": ["full", "adaptive"], "seconds": 1.0, "val_every": 10,
    "val_batches": 2, "headline_epochs": 3, "reference_steps": 12, "threads": 1,
    "checkpoint_every": 20,
}  # fmt: skip
QUICK_MODEL = [
    "--synthetic-vocab-size", "300", "--synthetic-tokens", "6000", "--embed-dim", "16",
    "--d-model", "16", "--num-layers", "2", "--batch-size", "4", "--bptt", "8",
    "--optimizer", "sgd", "--lr", "1.0", "--grad-clip", "0.25", "--max-epochs", "null",
]  # fmt: skip
"""--quick: no config file; a tiny 2-layer LSTM on a tiny synthetic language."""


def _heads() -> list[str]:
    sys.path.insert(0, str(REPO))
    from lm_heads import HEADS

    return list(HEADS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/results.py",
        description="Train every head on WikiText-2 at equal wall-clock; headline and reference.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    p.add_argument("--quick", action="store_true", help="tiny synthetic smoke test (~1 min)")
    p.add_argument("--heads", nargs="+", default=None, help="default: every registered head")
    p.add_argument("--data", default=str(DATA / "wikitext-2"),
                   help="WikiText-2 directory, or 'synthetic' (the synthetic suite)")  # fmt: skip
    p.add_argument("--simlex", type=Path, default=DATA / "simlex-999" / "SimLex-999.txt")
    p.add_argument("--config", type=Path, default=CONFIG, help="recipe config of every run")
    p.add_argument("--examples", type=Path, default=Path("/work/ext/examples/word_language_model"),
                   help="pytorch/examples word_language_model checkout")  # fmt: skip
    p.add_argument("--output-dir", type=Path, default=REPO / "results")
    p.add_argument("--work-dir", type=Path, default=None, help="default: <repo>/runs/study")
    p.add_argument("--results-md", type=Path, default=None, help="fill this file's section")
    p.add_argument("--rerun", action="store_true", help="ignore finished runs in --work-dir")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--seconds", type=float, default=360.0, help="equal-time training budget")
    p.add_argument("--val-every", type=int, default=150, help="steps between periodic validations")
    p.add_argument("--val-batches", type=int, default=50, help="batches per periodic validation")
    p.add_argument("--final-batches", default="1.0",
                   help="final validation and test batches (1.0: the whole splits; fewer only "
                   "to smoke-test the study on real data)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps (for resuming)")
    p.add_argument("--headline-epochs", type=int, default=6)
    p.add_argument("--headline-full-seconds", type=float, default=None,
                   help="train `full` for this many seconds in the headline (default: as long "
                   "as adaptive's headline run)")  # fmt: skip
    p.add_argument("--reference-steps", type=int, default=600)
    p.add_argument("--reference-data", type=Path, default=None,
                   help="text corpus of the reference phase (default: --data)")  # fmt: skip
    p.add_argument("--target-ppl", type=float, default=None,
                   help="default: the best validation ppl of `full` in the study")  # fmt: skip
    p.add_argument("--synthetic-vocab-size", type=int, default=200_000)
    p.add_argument("--synthetic-tokens", type=int, default=1_000_000)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    given_argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given_argv)
    args.argv = given_argv
    if args.quick:  # quick values unless given on the command line
        given = {a.dest for a in parser._actions if set(a.option_strings) & set(given_argv)}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    valid = _heads()
    args.heads = args.heads or valid
    unknown = sorted(set(args.heads) - set(valid))
    if unknown:
        parser.error(f"unknown head(s) {unknown}; valid: {', '.join(valid)}")
    if args.data != "synthetic" and not (Path(args.data) / "train.txt").exists():
        parser.error(f"--data {args.data}: no train.txt (a WikiText-2 directory, or 'synthetic')")
    if not args.quick and not args.config.exists():
        parser.error(f"--config {args.config} does not exist (the reference configuration)")
    if args.work_dir is None:
        args.work_dir = args.output_dir / "runs" if args.quick else REPO / "runs" / "study"
    return args


# ------------------------------------------------------------------------------------------------
# Recipe commands
def base_argv(args: argparse.Namespace, head: str, run_dir: Path) -> list[str]:
    """The options every recipe run of the study shares (config, data, head, output)."""
    argv = QUICK_MODEL.copy() if args.quick else ["--config", str(args.config)]
    argv += ["--head", head, "--seed", str(args.seed), "--threads", str(args.threads),
             "--accelerator", "cpu", "--no-progress-bar", "--log-every", "50",
             "--output-dir", str(run_dir), "--cache-dir", str(args.work_dir / "cache"),
             "--checkpoint-every", str(args.checkpoint_every), "--data", args.data]  # fmt: skip
    if args.data == "synthetic":
        if not args.quick:
            argv += ["--synthetic-vocab-size", str(args.synthetic_vocab_size),
                     "--synthetic-tokens", str(args.synthetic_tokens)]  # fmt: skip
    elif args.simlex is not None:
        argv += ["--simlex", str(args.simlex)]
    return argv


def curve_argv(args: argparse.Namespace) -> list[str]:
    """Curve points on a fixed subset; whole splits at epoch ends and at the end."""
    return ["--curve-every", str(args.val_every), "--curve-batches",
            str(args.val_batches), "--final-val-batches", args.final_batches,
            "--limit-test-batches", args.final_batches]  # fmt: skip


def equal_time_runs(args: argparse.Namespace) -> list[dict[str, Any]]:
    runs = []
    for head in args.heads:
        run_dir = args.work_dir / "equal_time" / head
        argv = base_argv(args, head, run_dir) + curve_argv(args)
        argv += ["--max-steps", NO_STEP_LIMIT, "--max-time", str(args.seconds)]
        runs.append({"phase": "equal_time", "head": head, "dir": run_dir, "argv": argv})
    return runs


def continuation(args: argparse.Namespace, head: str, budget: list[str]) -> dict[str, Any]:
    """A headline run: ``head`` resumed from its equal-time checkpoint with a new budget."""
    run_dir = args.work_dir / "headline" / head
    start = args.work_dir / "equal_time" / head / "checkpoints" / "last.ckpt"
    argv = (
        base_argv(args, head, run_dir) + curve_argv(args) + ["--max-steps", NO_STEP_LIMIT, *budget]
    )
    return {"phase": "headline", "head": head, "dir": run_dir, "argv": argv, "start": start}


# ------------------------------------------------------------------------------------------------
# Running, with load sampling
class LoadSampler(threading.Thread):
    """Samples /proc/loadavg and the machine's busy CPUs (from /proc/stat) every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.load, self.busy = every, [], []
        self._done = threading.Event()

    @staticmethod
    def _cpu() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
        return sum(fields) - idle, sum(fields)

    def run(self) -> None:
        try:
            last = self._cpu()
            while not self._done.wait(self.every):
                self.load.append(float(Path("/proc/loadavg").read_text().split()[0]))
                now = self._cpu()
                total = now[1] - last[1]
                if total > 0:
                    self.busy.append((now[0] - last[0]) / total * (os.cpu_count() or 1))
                last = now
        except OSError:  # no /proc (not Linux): no samples, reported as such
            pass

    def stop(self) -> None:
        self._done.set()
        self.join()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_process(cmd: list[str], cwd: Path, log: Path, **env_extra: str) -> dict[str, Any]:
    """Run ``cmd`` with its output in ``log``; returns its exit status and the load during it."""
    sampler, cpu0, t0 = LoadSampler(), _children_cpu(), time.perf_counter()
    sampler.start()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO), **env_extra}  # fmt: skip
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            code = proc.wait()
        finally:  # the driver stopped (Ctrl-C, SIGTERM): stop the run too, it resumes later
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            sampler.stop()
    wall = time.perf_counter() - t0
    load = {"wall_s": wall, "study_cpu_cores": (_children_cpu() - cpu0) / max(wall, 1e-9)}
    load |= report.summarize_samples("loadavg_1min", sampler.load)
    load |= report.summarize_samples("machine_busy_cores", sampler.busy)
    return {"returncode": code, "load": load}


def clock_persisted(ckpt: Path) -> bool:
    """Whether the recipe saves its training clock in checkpoints (then --max-time is a total)."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return any("TrainClock" in str(key) for key in state.get("callbacks", {}))


def run_recipe(run: dict[str, Any], args: argparse.Namespace, execute: bool = True) -> dict:
    """Run (or reuse, or resume) one recipe run; returns its results, or an error."""
    run_dir: Path = run["dir"]
    done, command = run_dir / "results.json", run_dir / "command.json"
    same = command.exists() and json.loads(command.read_text()) == run["argv"]
    if same and done.exists() and (not args.rerun or not execute):
        return {**json.loads(done.read_text()), "reused": True}
    if not execute:
        return {"error": "not run"}
    last, start = run_dir / "checkpoints" / "last.ckpt", run.get("start")
    if start is not None and not start.exists():
        return {"error": f"cannot resume {run['head']}: no checkpoint {start} (rerun its "
                "equal-time run: delete its directory in --work-dir)"}  # fmt: skip
    extra: list[str] = []
    if same and last.exists() and not args.rerun and clock_persisted(last):
        extra = ["--resume", "last"]  # killed mid-way: continue exactly
    elif start is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        extra = ["--resume", str(start)]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    command.write_text(json.dumps(run["argv"]) + "\n")
    done.unlink(missing_ok=True)
    proc = run_process([sys.executable, str(RECIPE), *run["argv"], *extra], run_dir,
                       run_dir / "log.txt")  # fmt: skip
    if proc["returncode"] != 0 or not done.exists():
        tail = (run_dir / "log.txt").read_text().splitlines()[-15:]
        return {"error": f"exit status {proc['returncode']}", "log_tail": tail}
    result = json.loads(done.read_text())
    result["load"] = proc["load"]
    result["resumed_from"] = extra[1] if extra else None
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def drop_checkpoints(run_dir: Path, keep_last: bool = False) -> None:
    ckpts = run_dir / "checkpoints"
    for path in ckpts.glob("*.ckpt") if ckpts.exists() else []:
        if not (keep_last and path.name == "last.ckpt"):
            path.unlink()


def run_all(
    runs: list[dict[str, Any]], args: argparse.Namespace, keep: set[str], execute: bool = True
) -> None:
    for i, run in enumerate(runs, 1):
        start = time.perf_counter()
        res = run["result"] = run_recipe(run, args, execute)
        if not execute:
            continue
        drop_checkpoints(run["dir"], keep_last=run["head"] in keep and "error" not in res)
        print(f"[{run['phase']} {i}/{len(runs)}] {run['head']}: {report.one_line(res)} "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Phases
def phase_equal_time(args: argparse.Namespace, execute: bool = True) -> list[dict[str, Any]]:
    runs = equal_time_runs(args)
    run_all(runs, args, keep={"adaptive", "full"}, execute=execute)  # the headline resumes them
    return runs


def phase_headline(args: argparse.Namespace, execute: bool = True) -> list[dict[str, Any]]:
    """adaptive to N epochs, then full to the same total training seconds."""
    eq = {r["head"]: r for r in equal_time_runs(args) if r["head"] in ("adaptive", "full")}
    if len(eq) < 2:
        print("headline: skipped (needs the heads adaptive and full in --heads)", flush=True)
        return []
    for run in eq.values():
        run["result"] = run_recipe(run, args, execute=False)
    flag = args.work_dir / "headline" / "clock_persisted.json"
    if not flag.exists():  # decided once, while the equal-time checkpoint exists
        ckpt = eq["adaptive"]["dir"] / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            print(f"headline: skipped (no checkpoint {ckpt}; run --phases equal_time)", flush=True)
            return []
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.write_text(json.dumps(clock_persisted(ckpt)) + "\n")
    persisted = json.loads(flag.read_text())
    ada = continuation(args, "adaptive", ["--max-epochs", str(args.headline_epochs)])
    ada |= {"prior": eq["adaptive"]["result"], "persisted": persisted}
    run_all([ada], args, keep=set(), execute=execute)
    if "error" in ada["result"]:
        return [ada]
    total = report.total_seconds(ada["result"], ada["prior"], persisted)
    if args.headline_full_seconds is not None:  # a shorter comparison where time is short
        total = args.headline_full_seconds
    budget = total if persisted else total - eq["full"]["result"].get("train_step_seconds", 0.0)
    full = continuation(args, "full", ["--max-time", f"{max(budget, 1.0):.1f}"])
    full |= {"prior": eq["full"]["result"], "persisted": persisted}
    run_all([full], args, keep=set(), execute=execute)
    if execute and "error" not in full["result"]:
        for run in eq.values():  # both continued: their equal-time checkpoints can go
            drop_checkpoints(run["dir"])
    return [ada, full]


def patch_examples(src: Path, dest: Path, steps: int) -> None:
    """Copy pytorch/examples' word_language_model into ``dest`` with a cap on training batches."""
    for name in ("main.py", "model.py", "data.py"):
        shutil.copy(src / name, dest / name)
    main = dest / "main.py"
    loop = re.compile(r"^([ \t]*)for batch, i in enumerate\(.*train_data.*\):[ \t]*$", re.M)
    matches = list(loop.finditer(main.read_text()))
    if len(matches) != 1:
        raise SystemExit(
            f"{src / 'main.py'}: expected one training loop `for batch, i in "
            f"enumerate(...train_data...)`, found {len(matches)}; cannot cap it"
        )
    text, at, indent = main.read_text(), matches[0].end(), matches[0].group(1) + "    "
    cap = f"\n{indent}if batch >= {steps}:  # step cap (scripts/results.py)\n{indent}    break"
    main.write_text(text[:at] + cap + text[at:])


def examples_data(data: Path, tmp: Path) -> Path:
    """A directory with train.txt, valid.txt and test.txt (symlinks to WikiText's names if need)."""
    if all((data / f"{s}.txt").exists() for s in ("train", "valid", "test")):
        return data
    linked = tmp / "data"
    linked.mkdir()
    for split in ("train", "valid", "test"):
        source = data / f"wiki.{split}.tokens"
        if not source.exists():
            raise SystemExit(f"{data}: neither {split}.txt nor wiki.{split}.tokens")
        (linked / f"{split}.txt").symlink_to(source.resolve())
    return linked


def examples_argv(data: Path, seed: int) -> list[str]:
    """pytorch/examples' flags for the reference configuration (its defaults, stated)."""
    return ["--data", str(data), "--epochs", "1", "--model", "LSTM", "--emsize", "200",
            "--nhid", "200", "--nlayers", "2", "--lr", "20", "--clip", "0.25", "--batch_size",
            "20", "--bptt", "35", "--dropout", "0.2", "--seed", str(seed)]  # fmt: skip


def run_examples(args: argparse.Namespace, data: Path, run_dir: Path) -> dict[str, Any]:
    """pytorch/examples' main.py, capped at --reference-steps batches; its parsed perplexities."""
    done = run_dir / "results.json"
    key = {"argv": examples_argv(data, args.seed), "steps": args.reference_steps,
           "examples": str(args.examples)}  # fmt: skip
    if done.exists() and not args.rerun and json.loads(done.read_text())["key"] == key:
        return {**json.loads(done.read_text()), "reused": True}
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        patch_examples(args.examples, Path(tmp), args.reference_steps)
        argv = examples_argv(examples_data(data, Path(tmp)), args.seed)
        save = ["--save", str(Path(tmp) / "model.pt")]
        # The same threads as the recipe's --threads; it reloads its own whole-model save for
        # the test split, which torch >= 2.6 refuses by default (weights_only).
        env = {"OMP_NUM_THREADS": str(args.threads), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
        proc = run_process([sys.executable, "main.py", *argv, *save], Path(tmp),
                           run_dir / "log.txt", **env)  # fmt: skip
    log = (run_dir / "log.txt").read_text()
    result = report.parse_examples_log(log, batch_tokens=20 * 35)
    if result.get("val_ppl") is None:
        return {"error": f"exit status {proc['returncode']}", "log_tail": log.splitlines()[-15:]}
    if proc["returncode"] != 0:  # e.g. its reload of the saved model for the test split failed
        result["note"] = (
            f"exit status {proc['returncode']} after validation: {log.splitlines()[-1]}"
        )
    commit = subprocess.run(["git", "-C", str(args.examples), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    result |= {"key": key, "load": proc["load"], "steps": args.reference_steps,
               "examples_commit": commit or None}  # fmt: skip
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def phase_reference(args: argparse.Namespace, execute: bool = True) -> list[dict[str, Any]]:
    data = Path(args.reference_data or args.data)
    if not all((args.examples / f).exists() for f in ("main.py", "model.py", "data.py")):
        print(f"reference: skipped (no pytorch/examples checkout at {args.examples}: main.py, "
              "model.py, data.py; pass --examples DIR)", flush=True)  # fmt: skip
        return []
    if args.data == "synthetic" and args.reference_data is None:
        print("reference: skipped (needs a text corpus: pass --reference-data DIR)", flush=True)
        return []
    run_dir = args.work_dir / "reference" / "ours"
    argv = base_argv(args, "full", run_dir)
    argv[argv.index("--data") + 1] = str(data)
    argv += ["--max-steps", str(args.reference_steps), "--val-check-interval",
             str(args.reference_steps), "--limit-val-batches", "1", "--final-val-batches",
             args.final_batches, "--limit-test-batches", args.final_batches]  # fmt: skip
    ours = {"phase": "reference", "head": "full", "dir": run_dir, "argv": argv}
    theirs = {"phase": "reference", "head": "pytorch/examples", "dir": run_dir.parent / "theirs"}
    if execute:
        theirs["result"] = run_examples(args, data, theirs["dir"])
        print(f"[reference] pytorch/examples: {report.one_line(theirs['result'])}", flush=True)
    else:
        done = theirs["dir"] / "results.json"
        theirs["result"] = json.loads(done.read_text()) if done.exists() else {"error": "not run"}
    run_all([ours], args, keep=set(), execute=execute)
    return [ours, theirs]


PHASE_RUNNERS = {"equal_time": phase_equal_time, "headline": phase_headline,
                 "reference": phase_reference}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.perf_counter()
    print(f"phases {' '.join(args.phases)}; rough estimate "
          f"{report.estimate_minutes(args, done=_finished(args)):.0f} min on 2 CPU cores; "
          f"per-run outputs in {args.work_dir}", flush=True)  # fmt: skip
    machine = report.machine_info()
    runs = {}
    for phase, runner in PHASE_RUNNERS.items():  # unselected phases: their finished runs only
        runs[phase] = runner(args, execute=phase in args.phases)
    machine["loadavg_end"] = report.loadavg()
    command = "python scripts/results.py " + shlex.join(args.argv)
    study = report.build(runs, args, machine, command.strip(), time.perf_counter() - t0)
    report.write_outputs(study, args.output_dir, args.results_md)
    print(f"wrote {args.output_dir / 'study.json'}, study.md and plots "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    return study


def _finished(args: argparse.Namespace) -> set[str]:
    """Heads whose equal-time run is finished (for the estimate)."""
    return {r["head"] for r in equal_time_runs(args) if (r["dir"] / "results.json").exists()}


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stops the running run too
    main()
