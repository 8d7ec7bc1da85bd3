"""What ``recipes/lm.py`` checks and builds before training: each mistake found here is a
:class:`~recipes.cli.UsageError` (one paragraph, exit status 2), never a traceback after hours.

The output directory, the similarity file, the Trainer (accelerator, devices, precision,
loggers), the data (sources, encoding, a test split, lengths against ``--bptt``), the model
(head options) and its memory (``lm_heads.memory``) are all checked in this order, before
``fit`` starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

from lm_heads import memory
from lm_heads.data import LMDataModule
from lm_heads.data.options import DataOptions
from lm_heads.data.sources import LOCAL_NAMES, SPLITS, find_split_files
from lm_heads.memory import GiB
from lm_heads.similarity import find_simlex, load_pairs, pairs_name, word_similarity
from recipes.checkpoint import CheckpointExtras, FitTimer, newest_checkpoint
from recipes.cli import DATA_NAMES, RecipeOptions, UsageError, check_output_dir
from recipes.distributed import RankSeeds
from recipes.language_model import (
    FinalCheckpoint,
    LanguageModel,
    StopOnSignal,
    SubsetValidation,
    TrainClock,
    hpc_checkpoints,
)
from recipes.options import ModelOptionsDict, RunOptions, TrainerOptions
from recipes.progress import LineProgress, RecipeProgressBar
from recipes.threads import oversubscription

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""Where the recipes find the named corpora (``--data auto``) unless ``$LM_HEADS_DATA`` says."""
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


# ------------------------------------------------------------------------------------------------
# Files
def prepare_output_dir(run: RunOptions, rank: int) -> None:
    """Refuse a file, or an earlier run unless ``--resume`` or ``--overwrite`` says what to do."""
    out_dir = Path(run.output_dir)
    check_output_dir(out_dir)
    # A SLURM-requeued job resumes from its hpc_ckpt_N.ckpt by itself (resolve_resume).
    hpc = hpc_checkpoints(out_dir)
    requeued = bool(hpc) and SLURMEnvironment.detect() and not run.overwrite
    earlier = [p for p in (out_dir / "checkpoints", out_dir / "results.json") if p.exists()]
    if not earlier + hpc or run.resume is not None or requeued:
        return
    earlier += hpc
    if not run.overwrite:
        # Every rank decides alike (nothing is written before fit), so none is left waiting.
        names = ", ".join(p.name for p in earlier)
        raise UsageError(
            f"--output-dir {out_dir} holds an earlier run ({names}): continue it with --resume "
            "last, replace it with --overwrite, or choose another --output-dir"
        )
    if rank == 0:
        for path in earlier:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def resolve_resume(run: RunOptions) -> Path | None:
    """The checkpoint to continue: ``--resume PATH``; for ``--resume last`` the newer of
    ``last.ckpt`` and SLURM's ``hpc_ckpt_N.ckpt``; without ``--resume``, a requeued SLURM job
    (one with an hpc_ckpt) continues from that newer one too (Lightning would take the hpc_ckpt,
    even when last.ckpt is newer)."""
    out_dir = Path(run.output_dir)
    if run.resume is None:
        requeued = not run.overwrite and SLURMEnvironment.detect() and hpc_checkpoints(out_dir)
        return newest_checkpoint(out_dir) if requeued else None
    if run.resume == "last":
        path = newest_checkpoint(out_dir) or out_dir / "checkpoints" / "last.ckpt"
    else:
        path = Path(run.resume)
    if not path.is_file():
        what = "no checkpoint at" if run.resume == "last" else "no such checkpoint:"
        raise UsageError(f"--resume {run.resume}: {what} {path}")
    return path


def load_similarity(path: str | None) -> tuple[str, list[tuple[str, str, float]]] | None:
    """``(set name, pairs)`` of ``--similarity``, read now so that a bad file stops nothing late."""
    if path is None:
        return None
    try:
        return pairs_name(path), load_pairs(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"--similarity {path}: {error}") from None


# ------------------------------------------------------------------------------------------------
# Trainer
def build_loggers(given: str | Sequence[str] | None, out_dir: Path) -> list[Any]:
    from lightning.pytorch import loggers

    if given is None:  # csv, and tensorboard when installed
        given = ["csv"] + (["tensorboard"] if _installed("tensorboard") else [])
    names = [given] if isinstance(given, str) else list(given)
    missing = [n for n in names if n in LOGGER_PACKAGES and not _installed(LOGGER_PACKAGES[n])]
    if missing:
        raise UsageError(
            f"--logger {', '.join(missing)} needs the package(s) "
            f"{', '.join(LOGGER_PACKAGES[n] for n in missing)}: pip install them (or "
            "lm-heads[loggers]), or choose among csv, tensorboard"
        )
    made = {
        "csv": lambda: loggers.CSVLogger(out_dir, name="logs"),
        "tensorboard": lambda: loggers.TensorBoardLogger(out_dir, name="tensorboard"),
        # Offline: runs are written under the output directory and synced later if wanted.
        "wandb": lambda: loggers.WandbLogger(save_dir=str(out_dir), offline=True),
        "mlflow": lambda: loggers.MLFlowLogger(tracking_uri=(out_dir / "mlruns").as_uri()),
    }
    if "mlflow" in names:
        # A plain folder under the output directory works offline, with no database server;
        # MLflow >= 3.7 asks for this opt-in to keep writing its file store.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return [made[name]() for name in dict.fromkeys(names)]


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def warn_oversubscribed(hardware: TrainerOptions, threads_per_rank: int) -> None:
    """Warn when this machine's ranks run more threads than the CPUs they may use
    (:func:`recipes.threads.oversubscription`)."""
    if hardware.accelerator not in ("cpu", "auto") or torch.cuda.is_available():
        return
    ranks = hardware.devices if isinstance(hardware.devices, int) else 1
    warning = oversubscription(threads_per_rank, ranks)
    if warning is not None:
        print(f"recipes/lm.py: warning: {warning}", file=sys.stderr, flush=True)


def _strategy(hardware: TrainerOptions, timeout_s: float) -> Any:
    from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry

    # broadcast_buffers=False: head buffers (counts, trees, cutoffs) are built identically on every
    # rank from the whole training vocabulary and never change; broadcasting them every forward is
    # wasted traffic, and a per-forward collective would deadlock evaluation, where ranks may hold
    # different numbers of batches.
    # timeout: a rank whose peer never arrives (another node failed its checks) or died stops
    # after --dist-timeout with an error, instead of waiting torch's default 30 minutes.
    timeout, strategy, devices = timedelta(seconds=timeout_s), hardware.strategy, hardware.devices
    many = hardware.num_nodes > 1 or (isinstance(devices, int) and devices > 1)
    if strategy == "ddp" or (strategy == "auto" and many):
        return DDPStrategy(broadcast_buffers=False, timeout=timeout)
    if strategy == "ddp_spawn":
        return DDPStrategy(start_method="spawn", broadcast_buffers=False, timeout=timeout)
    # Any other registered name (ddp_find_unused_parameters_true, fsdp, ...) as Lightning builds
    # it, with the timeout where the strategy takes one.
    # (The registry's get() raises for an unknown name, whatever its default.)
    if strategy in StrategyRegistry:
        entry = StrategyRegistry[strategy]
        if "timeout" in inspect.signature(entry["strategy"]).parameters:
            return entry["strategy"](**{**entry["init_params"], "timeout": timeout})
    return strategy


LIGHTNING_NOISE = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "💡 Tip:",  # advertisements for litlogger / litmodels
    "`Trainer(val_check_interval=1.0)` was configured",  # the recipe's own, documented choice
    "Trainer already configured with model summary callbacks",  # the recipe's Summary
    # LanguageModel.configure_callbacks: validate and test ask the model again for the callbacks
    # fit was given, by design (the same instances, never doubled).
    "The following callbacks returned in `LightningModule.configure_callbacks`",
)
"""Lightning's info lines that say nothing about this run (the threads and memory lines do)."""


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Silence exactly the lines of :data:`LIGHTNING_NOISE` and two warnings that every run
    printed: Lightning's ``_pytree`` deprecation (its own code, under newer torch), and the
    checkpoint folder "exists and is not empty" (the recipe decides about earlier runs itself:
    :func:`prepare_output_dir`). Other messages and warnings pass."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class Summary(ModelSummary):
    """Lightning's model summary without its FLOPs column and total, which are 0 unless the
    model sets ``example_input_array`` (ours cannot: the head needs targets)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        kept = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size,
                                      total_training_modes, total_flops, *kept)  # fmt: skip
        table = "\n".join(line for line in table.splitlines() if "Total Flops" not in line)
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + table)


@dataclass
class RunState:
    """The run's own callbacks, which the recipe reads back after ``fit``, and what it measures
    after them for ``results.json``."""

    clock: TrainClock
    timer: FitTimer
    extras: CheckpointExtras
    stop: StopOnSignal
    tokens_per_s: float | None = None
    """training tokens per second over all ranks (None: no step was timed)"""
    final_val_seconds: float | None = None
    """the final validation's time (None: the epoch end's validation was reused)"""
    peak_mib_before_final_val: float | None = None


def build_trainer(options: RecipeOptions, resuming: bool, rank: int) -> tuple[L.Trainer, RunState]:
    """The Trainer, and the callbacks the recipe reads back as a :class:`RunState`."""
    hardware, run, out_dir = options.trainer, options.run, Path(options.run.output_dir)
    progress = sys.stdout.isatty() if run.progress_bar is None else run.progress_bar
    ours = RunState(TrainClock(run.max_time), FitTimer(), CheckpointExtras(options.recorded),
                    StopOnSignal())  # fmt: skip
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=run.checkpoint_every,
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,  # one last.ckpt, overwritten (never last-v1.ckpt)
    )
    callbacks = [
        ours.clock,  # before FinalCheckpoint, which saves last.ckpt when the clock stops
        ours.timer,
        ours.extras,
        checkpoint,
        ours.stop,  # before FinalCheckpoint, which saves last.ckpt when it stops training
        FinalCheckpoint(out_dir / "checkpoints" / "last.ckpt", run.checkpoint_every),
        RankSeeds(options.data.seed),  # each rank's own dropout masks
    ]
    if rank == 0:
        callbacks.append(Summary(max_depth=1))
    if run.curve_every is not None:
        callbacks.append(SubsetValidation(run.curve_every, run.curve_batches, ours.clock))
    if progress:
        callbacks.append(RecipeProgressBar(ours.clock))
    else:
        callbacks.append(LineProgress(hardware.log_every, ours.clock))
    loggers = build_loggers(run.logger, out_dir)  # its UsageError is not a hardware problem
    quiet_lightning()
    try:
        trainer = L.Trainer(
            **(hardware.trainer_kwargs() | {"strategy": _strategy(hardware, run.dist_timeout)}),
            # The whole split at each epoch end only: see recipes.language_model (two kinds).
            val_check_interval=1.0,
            check_val_every_n_epoch=1,
            logger=loggers,
            callbacks=callbacks,
            default_root_dir=out_dir,
            enable_progress_bar=progress,
            enable_model_summary=rank == 0,  # the Summary callback
            use_distributed_sampler=False,  # the data deals the windows to ranks itself
            num_sanity_val_steps=0 if resuming else 2,
        )
    except (MisconfigurationException, ValueError, RuntimeError) as error:
        raise UsageError(
            f"the hardware options do not work here (--accelerator {hardware.accelerator}, "
            f"--devices {hardware.devices}, --num-nodes {hardware.num_nodes}, --strategy "
            f"{hardware.strategy}, --precision {hardware.precision}): {error}"
        ) from None
    return trainer, ours


# ------------------------------------------------------------------------------------------------
# Data and model
def build_data(data: DataOptions, world_size: int) -> LMDataModule:
    """The prepared data module, with a test split and splits long enough for ``--bptt``."""
    # The package looks only where it is told; the recipes' corpora sit in ../shared/data.
    os.environ.setdefault("LM_HEADS_DATA", str(SHARED_DATA))
    dm = LMDataModule(**{f.name: getattr(data, f.name) for f in fields(data)})
    dm.prepare_data()
    dm.setup("fit")
    for split in ("train", "valid", "test"):
        if split not in dm.splits:
            raise UsageError(
                f"{dm.description} has no {split} split: the recipe reports {split} perplexity, "
                f"so add a {split} file (e.g. {split}.txt) to the data directory"
            )
    check_lengths(dm, world_size)
    check_vocabulary(dm, data.min_count)
    return dm


def check_splits(data: str) -> None:
    """A local ``--data`` folder must hold all three splits (the recipe reports test perplexity):
    every missing one is named at once, before anything is read."""
    if data in DATA_NAMES:
        return
    missing = [split for split in SPLITS if not find_split_files(Path(data).expanduser(), split)]
    if missing:
        names = ", ".join(f"{split} ({' or '.join(LOCAL_NAMES[split][:2])})" for split in missing)
        raise UsageError(
            f"data directory {data} lacks the split(s) {names}: the recipe trains on train, "
            "validates on valid and reports test perplexity, so add each file (a sharded split "
            "may be a folder of that name)"
        )


def check_vocabulary(dm: LMDataModule, min_count: int) -> None:
    """Refuse a vocabulary of nothing but ``<unk>`` and ``<eos>`` (its perplexity of ~1.3 means
    nothing), and warn when most of the text became ``<unk>``."""
    vocab = dm.vocab
    assert vocab is not None, "build_data sets the vocabulary up first"
    words = len(vocab) - 2
    counts = torch.as_tensor(vocab.counts, dtype=torch.float64)
    unk_share = float(counts[vocab.unk_id] / counts.sum().clamp_min(1))
    advice = f"lower --min-count (now {min_count})" if min_count > 1 else "check the data"
    if words < 1:
        raise UsageError(
            f"the vocabulary of {dm.description} holds no word besides <unk> and <eos> "
            f"(--min-count {min_count}): every word became <unk>, and a perplexity over two "
            f"symbols says nothing; {advice}"
        )
    if min_count > 1 or dm.max_size is not None:
        print(
            f"note: --min-count {min_count}"
            + (f" --max-size {dm.max_size}" if dm.max_size is not None else "")
            + f" keeps {words:,} words and makes the rest <unk> ({unk_share:.1%} of the training "
            "tokens): perplexities compare only between runs with the same vocabulary",
            flush=True,
        )
    if unk_share > 0.25:
        print(
            f"recipes/lm.py: warning: {unk_share:.0%} of the training tokens are <unk> (the "
            f"vocabulary keeps {words:,} words at --min-count {min_count}): perplexity is low "
            f"because <unk> is easy to predict, not because the model is good; {advice}",
            file=sys.stderr,
            flush=True,
        )


def check_lengths(dm: LMDataModule, world_size: int) -> None:
    """Every split must fill at least one window per stream (and one batch per rank)."""
    shapes = {"train": (dm.batch_size * world_size, "--batch-size")}
    shapes |= {s: (dm.eval_streams, "--eval-batch-size") for s in ("valid", "test")}
    for split, (streams, option) in shapes.items():
        tokens = int(dm.splits[split].shape[0])
        if tokens == 0:
            files = getattr(dm.source, "split_files", lambda name: [name])(split)
            raise UsageError(
                f"the {split} split is empty: {', '.join(map(str, files))} holds no text; "
                "give that file the corpus's text"
            )
        per_stream = tokens // streams if split == "train" else math.ceil(tokens / streams)
        batches = per_stream // dm.bptt if split == "train" else math.ceil(per_stream / dm.bptt)
        if per_stream < dm.bptt or batches < 1:
            raise UsageError(
                f"the {split} split has {tokens:,} tokens, {per_stream:,} per stream over "
                f"{streams} stream(s), too few for windows of --bptt {dm.bptt}"
                + (f" on {world_size} ranks" if world_size > 1 else "")
                + f": lower --bptt or {option}"
            )
        if split != "train" and streams < world_size:
            raise UsageError(
                f"--eval-batch-size {streams} is smaller than the {world_size} ranks that share "
                f"the {split} streams: raise --eval-batch-size to at least {world_size}"
            )


def build_model(options: ModelOptionsDict, dm: LMDataModule) -> LanguageModel:
    """The model; a head or backbone that rejects its options is a :class:`UsageError`."""
    try:
        return LanguageModel(
            vocab_size=dm.vocab_size,
            counts=torch.as_tensor(dm.counts),
            max_len=max(512, dm.bptt),
            **options,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(
            f"cannot build the model: {error} (--head {options.get('head')}, head options "
            f"{options.get('head_options') or '{}'}; --help lists the model options)"
        ) from None


def check_memory(
    model: LanguageModel, tokens: int, device: torch.device, available: int | None = None
) -> str:
    """The line to print about memory for batches of ``tokens``; a :class:`UsageError` with the
    reason and what to change when training cannot fit. ``available`` overrides the measured
    free memory (tests)."""
    optimizer = model.hparams["optimizer"]
    est = memory.estimate(model, model.head, optimizer, tokens)
    free = memory.available_bytes(device) if available is None else available
    if free is None:
        return f"memory: about {est.total / GiB:.2f} GiB to train (free memory unknown)"
    # The parameters already live on the CPU; on a GPU they are moved there by fit.
    still_needed = est.total - (est.parameters if device.type == "cpu" else 0)
    if still_needed > free:
        raise UsageError(
            f"--head {model.hparams['head']} cannot train in the memory available: it needs "
            f"about {est.total / GiB:.1f} GiB ({est.describe(optimizer)}) and "
            f"{still_needed / GiB:.1f} GiB of it is still to allocate, but only "
            f"{free / GiB:.1f} GiB is free. Lower --batch-size or --bptt, use a factorized head "
            "(adaptive, class, hierarchical) or a sampled one, --head-option chunk_size=auto for "
            "full, --optimizer sgd (no optimizer state), a smaller --d-model or --max-size"
        )
    return f"memory: about {est.total / GiB:.2f} GiB to train of {free / GiB:.1f} GiB free"


def similarity_scores(
    model: LanguageModel, dm: LMDataModule, given: tuple[str, list] | None
) -> dict[str, Any]:
    """Word similarity of the input and output embeddings: ``--similarity``, the synthetic
    language's ground truth, or SimLex-999 found beside the data."""
    name, reason = None, None
    pairs: list[tuple[str, str, float]] | None = getattr(dm, "similarity_pairs", None)
    if given is not None:
        name, pairs = given
    elif pairs is not None:
        name = "synthetic ground-truth pairs"
    elif (found := find_simlex(getattr(dm, "data_dir", None))) is not None:
        name, pairs = pairs_name(found), load_pairs(found)
    else:
        reason = "no word-similarity file found (pass --similarity PATH)"
    tables = {"input": model.backbone.embedding.weight, "output": model.head.output_embeddings()}
    out: dict[str, Any] = {"source": name}
    for side, table in tables.items():
        if reason is not None:
            out[side] = {"measured": False, "reason": reason}
        elif table is None:
            out[side] = {
                "measured": False,
                "reason": f"head {model.hparams['head']!r} has no output row per word",
            }
        else:
            assert pairs is not None and dm.vocab is not None  # no reason: pairs were found
            res = word_similarity(table.detach().float().cpu(), dm.vocab.stoi, pairs)
            out[side] = {
                "measured": res.spearman is not None,
                "spearman": res.spearman,
                "covered": res.covered,
                "total": res.total,
                "reason": res.reason,
            }
    return out
