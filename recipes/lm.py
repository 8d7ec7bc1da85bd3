#!/usr/bin/env python
"""Train a word-level language model with any ``lm_heads`` head; report perplexity and similarity.

    python recipes/lm.py --head adaptive                      # WikiText-2 if found, else synthetic
    python recipes/lm.py --head full --tie-weights --model transformer
    python recipes/lm.py --config recipes/configs/wikitext103.yaml --devices 4
    python recipes/lm.py --head class --head-option num_classes=200 --resume last
    python recipes/lm.py --print_config > my.yaml             # every option, for --config my.yaml

Everything is one Lightning ``Trainer``: a progress bar (one line per ``--log-every`` steps when
stdout is not a terminal), loggers by name (``--logger [csv,tensorboard,wandb,mlflow]``),
checkpoints every ``--checkpoint-every`` steps in ``<output-dir>/checkpoints`` (``last.ckpt``
included; each carries the vocabulary), exact resume with ``--resume PATH|last``. At the end it
evaluates the weights it trained (in memory, never a checkpoint Lightning would pick) on the
validation and test splits, prints a summary and writes
``<output-dir>/results.json`` (whose ``args`` ``--config`` accepts back). The options are
declared in ``recipes/options.py`` and ``lm_heads.data.options`` and read by ``recipes/cli.py``;
``generate.py``, ``evaluate.py`` and ``export_embeddings.py`` use the checkpoints.

Every mistake in the options or the files they name (data, similarity file, checkpoint, output
directory, hardware) is found before training starts and reported in one paragraph, exit status 2.

Perplexity is always ``exp(Σ −log p / #tokens)`` from ``head.target_log_prob`` (the exact
distribution, also for sampled heads), summed over DDP ranks. Under DDP each rank evaluates a
disjoint share of the validation/test windows (none repeated), so the numbers equal a
single-process run's. Training cuts the split into ``batch_size x world_size`` streams and keeps
full batches only (``lm_heads.data``): each epoch drops the last ``< batch_size x world_size x
bptt`` tokens, so that every rank takes the same number of steps.

Under SLURM (``scripts/slurm_lm.sh``), the requeue signal saves ``<output-dir>/hpc_ckpt_N.ckpt``
at the end of a step and requeues the job, and a job without ``--resume`` that finds one continues
from the newer of it and ``last.ckpt`` (``recipes/language_model.py``, ``StopOnSignal``). A resume
at another world size or batch size is refused mid-epoch and warned about at an epoch's end
(``recipes/checkpoint.py``, ``check_batching``).
"""

from __future__ import annotations

import json
import math
import resource
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_START = time.perf_counter()
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(_REPO))

from recipes.threads import apply_threads, prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP, which reads it once (recipes/threads.py)

_PARSED: Any = None
if __name__ == "__main__":
    # Parsed before torch and lightning load (seconds): a typo or --help answers at once.
    from recipes.cli import parse_args

    _PARSED = parse_args()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from jsonargparse import Namespace  # noqa: E402

from lm_heads.data import CacheError, DataUnavailableError  # noqa: E402
from recipes.checkpoint import batching, check_batching, check_resume, read_checkpoint  # noqa: E402
from recipes.cli import RecipeOptions, UsageError, grouped, parse_args, usage_exit  # noqa: E402
from recipes.distributed import (  # noqa: E402
    is_peer_timeout,
    launch_rank,
    local_rank,
    peer_failure_message,
)
from recipes.language_model import LanguageModel, TrainingStopped, time_to_target  # noqa: E402
from recipes.options import TrainerOptions, option_group  # noqa: E402
from recipes.preflight import (  # noqa: E402
    RunState,
    build_data,
    build_model,
    build_trainer,
    check_memory,
    check_splits,
    load_similarity,
    prepare_output_dir,
    resolve_resume,
    similarity_scores,
    warn_oversubscribed,
)
from recipes.provenance import git_state  # noqa: E402


# ------------------------------------------------------------------------------------------------
def _devices_per_node(hardware: TrainerOptions) -> int:
    """``--devices`` as a count (``auto``: the GPUs, or 1 process on CPU, as Lightning counts)."""
    if isinstance(hardware.devices, int):
        return hardware.devices
    gpu = hardware.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.cuda.device_count() if gpu else 1


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS (rank 0)"


def _similarity_point(model: LanguageModel, dm: Any, given: Any) -> dict[str, Any]:
    """Spearman ρ of input and output embeddings, flat, for each point of the val curve."""
    scores = similarity_scores(model, dm, given)
    return {f"simlex_{side}": scores[side].get("spearman") for side in ("input", "output")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the recipe; returns the results dict on global rank 0 (``None`` on other ranks)."""
    args = _PARSED if argv is None and _PARSED is not None else parse_args(argv)
    try:
        results = run(args, sys.argv[1:] if argv is None else argv)
    except (UsageError, DataUnavailableError, CacheError) as error:
        usage_exit(error)
        return None
    except RuntimeError as error:
        if not is_peer_timeout(error):
            raise
        rank = launch_rank(_devices_per_node(option_group(TrainerOptions, args)))
        usage_exit(peer_failure_message(error, args.dist_timeout, rank), status=1)
        return None
    _close_process_group()
    return results


def _close_process_group() -> None:
    """Lightning leaves DDP's process group open; gloo's threads then die with the interpreter
    and can abort a finished run ("terminate called without an active exception", exit 134)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run(args: Namespace, argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Check everything, train, evaluate, report; user mistakes raise before ``fit``.

    ``args`` (:func:`recipes.cli.parse_args`) is split at once into its typed option groups
    (:class:`recipes.cli.RecipeOptions`): each builder takes the group it configures."""
    # Before the process group exists, each rank checks everything alone: a rank that fails here
    # exits at once, and the others give up after --dist-timeout (main) instead of waiting.
    options = grouped(args)
    hardware, run_options, data = options.trainer, options.run, options.data
    rank, out_dir = launch_rank(_devices_per_node(hardware)), Path(run_options.output_dir)
    prepare_output_dir(run_options, rank)
    check_splits(str(data.data))
    similarity = load_similarity(run_options.similarity)
    resume = resolve_resume(run_options)
    ckpt = read_checkpoint(resume, "--resume") if resume is not None else None
    accelerator = hardware.accelerator
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        try:
            threads = apply_threads(run_options.threads, _devices_per_node(hardware))
        except ValueError as error:
            raise UsageError(str(error)) from None
        if local_rank() == 0:  # once per machine: machines may differ
            print(f"rank {rank}: " * (rank > 0) + threads.describe(), flush=True)
    if local_rank() == 0:
        warn_oversubscribed(hardware, torch.get_num_threads())
    # The same seed on every rank: identical models and data order. RankSeeds (a callback of
    # build_trainer) then gives each rank > 0 its own stream for the training steps.
    L.seed_everything(data.seed, workers=True, verbose=False)

    trainer, ours = build_trainer(options, resuming=resume is not None, rank=rank)
    dm = build_data(data, trainer.world_size)
    ours.extras.vocab = dm.vocab
    if rank == 0:
        print(f"{dm.description} [--data {data.data}]", flush=True)
    model = build_model(options.model, dm)
    tokens = max(dm.batch_size, dm.eval_streams) * dm.bptt  # the largest batch, train or eval
    memory = check_memory(model, tokens, trainer.strategy.root_device)
    if rank == 0:
        print(memory, flush=True)
    if resume is not None and ckpt is not None:
        assert dm.vocab is not None  # build_data set it up
        check_resume(ckpt, resume, model, dm.vocab)
        if not run_options.eval_only:  # evaluation is the same on any world size
            change = check_batching(ckpt, resume, batching(trainer, dm.batch_size))
            if change is not None and rank == 0:
                print(f"recipes/lm.py: warning: {change}", file=sys.stderr, flush=True)
    ours.clock.probe = lambda: _similarity_point(model, dm, similarity)

    train_loss = None
    if run_options.eval_only:
        assert ckpt is not None  # check_args: --eval-only needs --resume
        model.load_state_dict(ckpt["state_dict"])
        ours.timer.load_state_dict(ckpt.get("callbacks", {}).get("FitTimer", {}))
    else:
        del ckpt  # Lightning reads it again
        with warnings.catch_warnings():
            # Lightning warns that a mid-epoch restart is inexact unless the loader has a
            # state_dict; ours needs none: the data module's sampler skips the batches that the
            # checkpoint's progress counters say were trained (tests/distributed: bit-exact).
            warnings.filterwarnings("ignore", message=".*dataloader is\\s+not resumable")
            try:
                ckpt_path = _exactly(trainer, resume)
                trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
            except TrainingStopped as stop:
                _interrupted(stop.signum, trainer, out_dir, argv)
        if ours.stop.stopped_by is not None:  # stopped at the run's last step: no epoch end
            _interrupted(ours.stop.stopped_by, trainer, out_dir, argv)
        train_loss = _last_train_loss(trainer)  # read before validate() clears callback_metrics
        ours.tokens_per_s = _agreed_tokens_per_s(trainer, ours.clock.tokens_per_s)
    final_val_batches = run_options.final_val_batches
    val_ppl = _epoch_end_val_ppl(ours.clock.curve, trainer) if final_val_batches is None else None
    fit_peak = _peak_memory_mib(trainer.strategy.root_device)[0]
    ours.peak_mib_before_final_val = fit_peak
    if val_ppl is None:
        if final_val_batches is not None:
            trainer.limit_val_batches = final_val_batches
        val_start = time.perf_counter()
        val = trainer.validate(model, datamodule=dm, ckpt_path=_exactly(trainer), verbose=False)
        val_ppl = float(val[0]["val_ppl"])
        ours.final_val_seconds = time.perf_counter() - val_start
    test = trainer.test(model, datamodule=dm, ckpt_path=_exactly(trainer), verbose=False)
    if not trainer.is_global_zero:
        return None
    results = _results(options, trainer, model, dm, ours, val_ppl, float(test[0]["test_ppl"]),
                       train_loss)  # fmt: skip
    results["similarity"] = similarity_scores(model, dm, similarity)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _print_summary(results, out_dir / "results.json")
    return results


def _exactly(trainer: L.Trainer, path: Path | None = None) -> Path | None:
    """``path`` as the ``ckpt_path`` of fit/validate/test, with ``None`` meaning *none*: the
    model's weights as they are in memory (the ones just trained, or loaded by --eval-only).

    Lightning documents ``ckpt_path=None`` with a model as the current weights, but under SLURM
    it takes the newest ``hpc_ckpt_*.ckpt`` in the output directory instead, for fit, validate
    and test alike (``_CheckpointConnector._parse_ckpt_path``): after a requeue, the final
    evaluation (and SimLex, on the same model) then reported the weights of the step the hpc_ckpt
    was saved at. The recipe chooses its checkpoint itself (``resolve_resume``). Lightning has no
    public switch for "none"; its ``trainer.ckpt_path`` setter marks a path as the user's, and
    marking ``None`` so makes ``_select_ckpt_path`` return it as given.
    """
    if path is None:
        trainer.ckpt_path = None
        trainer._checkpoint_connector._user_managed = True
    return path


def _agreed_tokens_per_s(trainer: L.Trainer, own: float | None) -> float | None:
    """Training tokens per second over all ranks: the global tokens over the slowest rank's
    time (each rank times its own steps; all ranks take the same steps of the same size)."""
    if trainer.world_size == 1 or own is None:  # None alike everywhere: as many steps
        return own
    value = torch.tensor(own, dtype=torch.float64, device=trainer.strategy.root_device)
    return float(trainer.strategy.reduce(value, reduce_op="min"))


def _interrupted(
    signum: int, trainer: L.Trainer, out_dir: Path, argv: Sequence[str] | None
) -> None:
    """Training stopped for SIGINT/SIGTERM after saving last.ckpt: say how to continue, and exit
    as a process killed by that signal would (128 + its number), without the final evaluation."""
    if trainer.is_global_zero:
        again = [a for a in (argv or []) if a not in ("--overwrite", "--no-overwrite")]
        if "--resume" in again:  # a checkpoint it started from: continue from the new one
            del again[again.index("--resume") : again.index("--resume") + 2]
        command = shlex.join(["python", "recipes/lm.py", *again, "--resume", "last"])
        print(
            f"{signal.Signals(signum).name}: training stopped at step {trainer.global_step}; "
            f"saved {out_dir / 'checkpoints' / 'last.ckpt'}. Continue with:\n  {command}",
            file=sys.stderr,
            flush=True,
        )
    raise SystemExit(128 + signum)


def _results(
    options: RecipeOptions, trainer: L.Trainer, model: LanguageModel, dm: Any, ours: RunState,
    val_ppl: float, test_ppl: float, train_loss: float | None,
) -> dict[str, Any]:  # fmt: skip
    clock, run, args = ours.clock, options.run, options.recorded
    peak, peak_what = _peak_memory_mib(trainer.strategy.root_device)  # model is back on CPU
    results: dict[str, Any] = {
        "head": args["head"],
        "head_options": args["head_options"],
        "head_is_exact": model.head.loss_is_exact(training=True),
        # The resolved structure (e.g. the cutoffs that cutoffs="auto" chose), to reuse as options.
        "head_structure": model.head.extra_repr(),
        "model": args["model"],
        "tie_weights": args["tie_weights"],
        "input_layer": args["input_layer"],
        "data": args["data"],
        "data_description": dm.description,
        "vocab_size": int(dm.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "global_step": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "val_ppl": val_ppl,
        "test_ppl": test_ppl,
        "entropy_floor_ppl": getattr(dm, "entropy_floor_ppl", None),
        "train_loss_last": train_loss,
        "train_tokens_per_s": ours.tokens_per_s,
        "train_seconds": ours.timer.seconds,  # the whole run, across resumes
        "stopped_by_time": clock.stopped_by_time,
        "train_step_seconds": clock.seconds,
        "peak_memory_mib": peak,
        "peak_memory_kind": peak_what,
        "wall_seconds": time.perf_counter() - _START,
        # The final validation's time, and the peak memory before it (peak_memory_mib includes it).
        "final_val_seconds": ours.final_val_seconds,
        "peak_memory_mib_before_final_val": ours.peak_mib_before_final_val,
        "checkpoint_last": str(Path(run.output_dir) / "checkpoints" / "last.ckpt"),
        "args": args,
        "git": git_state(),  # the code this result came from (recipes/provenance.py)
    }
    if not run.eval_only:
        # The final validation closes the curve (the epoch-end one when training ended there,
        # with the lr it was trained at); its point is marked so plots can tell.
        if ours.final_val_seconds is not None:  # a new validation, not the epoch end's
            clock.add_point(trainer, "val_ppl", val_ppl)
        clock.curve[-1]["final"] = True
    results["val_curve"] = clock.curve
    if run.target_ppl is not None:
        results["time_to_target"] = time_to_target(clock.curve, run.target_ppl)
    return results


def _epoch_end_val_ppl(curve: list[dict[str, Any]], trainer: L.Trainer) -> float | None:
    """The whole-split validation that training ended with, if it ended at an epoch's end:
    the same weights need not be evaluated twice."""
    last = curve[-1] if curve else None
    if last is not None and last["step"] == trainer.global_step and "val_ppl" in last:
        return float(last["val_ppl"])
    return None


def _last_train_loss(trainer: L.Trainer) -> float | None:
    value = trainer.callback_metrics.get("train_loss")
    return float(value) if value is not None else None


def _print_summary(r: dict[str, Any], path: Path) -> None:
    def fmt(x: Any, spec: str = ".2f") -> str:
        return "n/a" if x is None else format(x, spec)

    lines = [
        f"head            {r['head']} {r['head_options'] or ''}",
        f"head structure  {r['head_structure']}",
        f"data            {r['data_description'].removeprefix('data: ')} (V={r['vocab_size']})",
        f"steps           {r['global_step']} on {r['world_size']} rank(s)"
        + (" (stopped by --max-time)" if r.get("stopped_by_time") else ""),
        f"val ppl         {fmt(r['val_ppl'])}",
        f"test ppl        {fmt(r['test_ppl'])}",
    ]
    floor = r["entropy_floor_ppl"]
    if floor is not None:
        gap = math.log(r["test_ppl"] / floor)  # nats per token above the best possible model
        lines.append(
            f"entropy floor   {fmt(floor)} (best possible ppl; test is {math.exp(gap):.2f}x "
            f"the floor, {gap:.3f} nats/token above it)"
        )
    sim = r.get("similarity", {})
    for side in ("input", "output"):
        s = sim.get(side)
        if isinstance(s, dict):
            if s.get("measured"):
                pairs = f"{s['covered']}/{s['total']} pairs of {sim.get('source')}"
                lines.append(f"similarity {side:7s}rho={s['spearman']:.3f} ({pairs})")
            else:
                lines.append(f"similarity {side:7s}not measured: {s.get('reason')}")
    lines += [
        f"tokens/s        {fmt(r['train_tokens_per_s'], ',.0f')} (training, all ranks, "
        "slowest rank's time)",
        f"training steps  {fmt(r['train_step_seconds'], '.1f')} s (whole run)",
        f"fit time        {fmt(r['train_seconds'], '.1f')} s (training with its validations and "
        "checkpoints, whole run)",
        f"peak memory     {fmt(r['peak_memory_mib'], ',.0f')} MiB ({r['peak_memory_kind']})",
        f"wall time       {fmt(r['wall_seconds'], '.1f')} s",
        f"checkpoint      {r['checkpoint_last']}",
        f"results         {path}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
