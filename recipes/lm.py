#!/usr/bin/env python
"""Train a word-level language model with any ``lm_heads`` head; report perplexity and SimLex.

    python recipes/lm.py --head adaptive                      # WikiText-2 if found, else synthetic
    python recipes/lm.py --head full --tie-weights --model transformer
    python recipes/lm.py --config recipes/configs/wikitext103.yaml --devices 4
    python recipes/lm.py --head class --head-option num_classes=200 --resume last

Everything is one Lightning ``Trainer``: progress bar, CSV (and TensorBoard if installed) logs,
checkpoints every ``--checkpoint-every`` steps in ``<output-dir>/checkpoints`` (``last.ckpt``
included), exact resume with ``--resume PATH|last``. At the end it evaluates the final weights on
the validation and test splits, prints a summary and writes ``<output-dir>/results.json``.

Perplexity is always ``exp(Σ −log p / #tokens)`` from ``head.target_log_prob`` (the exact
distribution, also for sampled heads), summed over DDP ranks. Under DDP each rank evaluates a
disjoint share of the validation/test windows (none repeated), so the numbers equal a
single-process run's; each training epoch drops the last ``< world_size`` windows so that every
rank takes the same number of steps.

Options come from ``--config FILE.yaml`` (keys are option names, ``-`` or ``_``, plus a
``head_options`` mapping), overridden by the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_START = time.perf_counter()
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(_REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lm_heads import HEADS, head_options  # noqa: E402
from lm_heads.data import LMDataModule, StreamBatches  # noqa: E402
from lm_heads.similarity import find_simlex, load_simlex, word_similarity  # noqa: E402
from recipes.language_model import (  # noqa: E402
    DEFAULT_HEAD,
    FinalCheckpoint,
    LanguageModel,
    TrainClock,
    time_to_target,
)


# ------------------------------------------------------------------------------------------------
# Command line and config files
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _int_or_fraction(text: str) -> int | float:
    """Lightning's limit/interval convention: an int counts batches, a float is a fraction."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    if value.is_integer() and "." not in text and "e" not in text.lower():
        return int(value)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"a fraction must be <= 1.0, got {text}")
    return value


def _devices(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a positive integer, got {text}"
        ) from None


def _head_option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"value of {key!r} is not valid YAML: {err}") from err
    return key.strip(), _plain(value, f"--head-option {key}")


def _plain(value: Any, where: str) -> Any:
    """Keep option values JSON-like: they go to hparams, and checkpoints load weights_only."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise argparse.ArgumentTypeError(
        f"{where}: unsupported value {value!r} ({type(value).__name__}); "
        "use numbers, strings, booleans, lists or mappings"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recipes/lm.py",
        description="Train a word-level LM with an lm_heads head; report perplexity and SimLex.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="YAML file of options (CLI wins)")

    g = p.add_argument_group("head")
    g.add_argument("--head", default=DEFAULT_HEAD, choices=sorted(HEADS), help="output layer")
    g.add_argument(
        "--head-option",
        dest="head_option",
        type=_head_option,
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="head keyword argument, value parsed as YAML (repeatable), e.g. cutoffs=[2000,10000]",
    )

    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="auto",
        help="auto | synthetic | wikitext-2 | wikitext-103 | lm1b | a directory with "
        "train.txt/valid.txt/test.txt (auto: WikiText-2 from ../shared/data, else synthetic)",
    )
    g.add_argument("--cache-dir", type=Path, default=None, help="token/vocab cache")
    g.add_argument("--min-count", type=_positive_int, default=1, help="drop rarer words to <unk>")
    g.add_argument("--max-size", type=_positive_int, default=None, help="keep the top-N words")
    g.add_argument("--synthetic-vocab-size", type=_positive_int, default=10_000)
    g.add_argument("--synthetic-tokens", type=_positive_int, default=1_000_000)
    g.add_argument("--num-workers", type=_non_negative_int, default=0)
    g.add_argument("--simlex", type=Path, default=None, help="path to SimLex-999.txt")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="lstm", choices=["lstm", "transformer"])
    g.add_argument("--embed-dim", type=_positive_int, default=128, help="input word vector size")
    g.add_argument("--d-model", type=_positive_int, default=256, help="hidden size")
    g.add_argument("--num-layers", type=_positive_int, default=1)
    g.add_argument("--num-heads", type=_positive_int, default=4, help="transformer only")
    g.add_argument("--positions", default="learned", choices=["learned", "sinusoidal"])
    g.add_argument("--dropout", type=_fraction, default=0.2)
    g.add_argument(
        "--tie-weights",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="share input embedding and head output rows (adds a d_model→embed_dim projection)",
    )
    g.add_argument(
        "--input",
        dest="input_layer",
        default="embedding",
        choices=["embedding", "adaptive"],
        help="input layer: a word embedding, or adaptive input (Baevski & Auli 2019) on the "
        "adaptive head's clusters (with --tie-weights: shares its words and projections)",
    )

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    g.add_argument("--lr", type=_positive_float, default=2e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    g.add_argument("--warmup-steps", type=_non_negative_int, default=0)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0: off)")
    g.add_argument("--batch-size", type=_positive_int, default=32, help="windows per step per rank")
    g.add_argument("--bptt", type=_positive_int, default=35, help="tokens per window")
    g.add_argument("--max-steps", type=int, default=300, help="-1: no limit (use --max-epochs)")
    g.add_argument("--max-epochs", type=int, default=None)
    g.add_argument(
        "--max-time",
        type=_positive_float,
        default=None,
        help="training wall-clock budget in seconds (optimizer steps only, validation excluded); "
        "stops after the step that crosses it, whichever of this and --max-steps comes first",
    )

    g = p.add_argument_group("hardware")
    g.add_argument("--accelerator", default="auto", help="auto | cpu | gpu | ...")
    g.add_argument("--devices", type=_devices, default=1)
    g.add_argument("--num-nodes", type=_positive_int, default=1)
    g.add_argument(
        "--strategy", default="auto", help="auto (ddp when devices > 1) | ddp | ddp_spawn | ..."
    )
    g.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed | ...")
    g.add_argument("--threads", type=_positive_int, default=None, help="CPU threads per rank")

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--output-dir", type=Path, default=Path("runs/lm"))
    g.add_argument("--resume", default=None, help="checkpoint path, or 'last' (<output-dir>)")
    g.add_argument(
        "--eval-only",
        action="store_true",
        help="skip training: evaluate the weights of --resume on val and test",
    )
    g.add_argument(
        "--val-check-interval",
        type=_int_or_fraction,
        default=None,
        help="validate every N steps (int) or fraction of an epoch; default: at epoch ends",
    )
    g.add_argument("--limit-train-batches", type=_int_or_fraction, default=None)
    g.add_argument("--limit-val-batches", type=_int_or_fraction, default=None)
    g.add_argument("--limit-test-batches", type=_int_or_fraction, default=None)
    g.add_argument(
        "--final-val-batches",
        type=_int_or_fraction,
        default=None,
        help="limit of the final validation only (default: --limit-val-batches); e.g. 1.0 for "
        "the whole split after cheap, limited validations during training",
    )
    g.add_argument(
        "--target-ppl",
        type=_positive_float,
        default=None,
        help="report the training time and step at which validation perplexity first reached "
        "this value (results.json: time_to_target)",
    )
    g.add_argument("--checkpoint-every", type=_positive_int, default=100, help="steps")
    g.add_argument("--log-every", type=_positive_int, default=10, help="steps")
    g.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True)
    return p


class ConfigError(ValueError):
    """A config file key or value that the recipe cannot use."""


def load_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read ``path`` (YAML mapping) and check every value against ``parser``'s option types.

    Returns ``{dest: value}`` ready for ``parser.set_defaults``; ``head_options`` maps to the
    ``head_option`` list. Raises :class:`ConfigError` naming the file, key and problem.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config {path} must be a mapping of option: value, got {type(raw).__name__}"
        )
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        where = f"config {path}: {key}"
        if dest == "head_options":
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where} must be a mapping of head option: value")
            try:
                out["head_option"] = [(str(k), _plain(v, where)) for k, v in value.items()]
            except argparse.ArgumentTypeError as err:
                raise ConfigError(str(err)) from err
            continue
        if dest == "head_option":
            raise ConfigError(f"{where}: write head options as a `head_options:` mapping")
        if dest not in actions:
            valid = [*sorted(d for d in actions if d != "head_option"), "head_options"]
            raise ConfigError(f"{where}: unknown option; valid keys: {', '.join(valid)}")
        out[dest] = _config_value(actions[dest], value, where)
    return out


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    is_flag = isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction))
    if is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise ConfigError(f"{where} cannot be null (default: {action.default!r})")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where} must be a single value, got {value!r} ({type(value).__name__})")
    try:
        converted = action.type(str(value)) if action.type is not None else str(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise ConfigError(f"{where}: invalid value {value!r}: {err}") from err
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(
            f"{where}: invalid choice {value!r}; choose from {', '.join(map(str, action.choices))}"
        )
    return converted


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` after applying ``--config``; resolves ``head_options`` into a dict."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    config_options: list[tuple[str, Any]] = []
    if known.config is not None:
        try:
            config = load_config(known.config, parser)
        except ConfigError as err:
            parser.error(str(err))
        config_options = config.pop("head_option", [])
        parser.set_defaults(**config)
    args = parser.parse_args(argv)
    options = dict(config_options)
    options.update(dict(args.head_option or []))
    args.head_options = options
    del args.head_option
    known_options = head_options(args.head)
    unknown = sorted(set(options) - set(known_options))
    if unknown:
        parser.error(
            f"head {args.head!r} has no option(s) {unknown}; its options are: "
            + ", ".join(f"{k}={v!r}" for k, v in known_options.items())
        )
    if args.max_steps == 0 and not args.eval_only:
        parser.error("--max-steps 0 trains nothing; use --eval-only to only evaluate")
    if args.max_steps < 0 and args.max_epochs is None:
        parser.error("--max-steps -1 needs --max-epochs")
    if args.eval_only and args.resume is None:
        parser.error("--eval-only needs --resume CHECKPOINT")
    return args


# ------------------------------------------------------------------------------------------------
# Data
def shard_eval_loader(dataset: Dataset, rank: int, world_size: int) -> DataLoader:
    """Items (whole ``[B, T]`` batches) of an evaluation dataset dealt to ranks, none repeated.

    The dataset is the single-process one, so every rank count evaluates the very same windows
    (an LSTM without carried state scores a token by the window it sits in; cutting the split
    into more, shorter streams would change the number). Lightning's DistributedSampler would
    instead pad the last share with repeated items. Shares differ by at most one item; that is
    fine because evaluation runs no per-step collective (the metric is summed once, at the end of
    the epoch), but every rank needs at least one item, or it would never join that sum.
    """
    n = len(dataset)
    if n < world_size:
        raise ValueError(
            f"the evaluation split has {n} batch(es), fewer than the {world_size} ranks; "
            "use fewer devices, a smaller --batch-size or a smaller --bptt"
        )
    return DataLoader(dataset, sampler=list(range(rank, n, world_size)), batch_size=None)


class ShardedData(L.LightningDataModule):
    """An already set-up ``LMDataModule``, with world-size-independent evaluation splits.

    Training batches come from the data module itself: each rank reads its own contiguous
    streams, and after a restart its sampler skips the batches the checkpoint already trained on
    (the data module reads that from the restored trainer), so resume is exact.
    """

    def __init__(self, dm: Any) -> None:
        super().__init__()
        self.dm = dm

    def train_dataloader(self) -> DataLoader:
        # The data module reads rank, world size and restart progress from the trainer.
        self.dm.trainer = self.trainer
        return self.dm.train_dataloader()

    def _eval_loader(self, split: str) -> DataLoader:
        dm = self.dm
        dataset = StreamBatches(
            dm.splits[split], dm.eval_batch_size, dm.bptt, pad_tail=True, start_id=dm.vocab.eos_id
        )
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return shard_eval_loader(dataset, rank, world)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


# ------------------------------------------------------------------------------------------------
def _global_rank_from_env() -> int:
    """Global rank as set by Lightning's launcher, torchrun or SLURM (0 when single-process)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def _strategy(args: argparse.Namespace) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    # broadcast_buffers=False: head buffers (counts, trees, cutoffs) are built identically on every
    # rank from the whole training vocabulary and never change; broadcasting them every forward is
    # wasted traffic, and a per-forward collective would deadlock evaluation, where ranks may hold
    # different numbers of batches.
    many = args.num_nodes > 1 or (isinstance(args.devices, int) and args.devices > 1)
    if args.strategy == "ddp" or (args.strategy == "auto" and many):
        return DDPStrategy(broadcast_buffers=False)
    if args.strategy == "ddp_spawn":
        return DDPStrategy(start_method="spawn", broadcast_buffers=False)
    return args.strategy


def _resolve_resume(args: argparse.Namespace) -> Path | None:
    if args.resume is None:
        return None
    if args.resume == "last":
        path = args.output_dir / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise SystemExit(f"--resume last: no checkpoint at {path}")
        return path
    path = Path(args.resume)
    if not path.exists():
        raise SystemExit(f"--resume: no such checkpoint: {path}")
    return path


def _peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS (rank 0)"


def _similarity(model: LanguageModel, dm: Any, simlex: Path | None) -> dict[str, Any]:
    """SimLex-999 (real data) or the synthetic ground-truth pairs, for input and output rows."""
    pairs = getattr(dm, "similarity_pairs", None)
    source = "synthetic ground-truth pairs"
    reason = None
    if pairs is None:
        path = simlex if simlex is not None else find_simlex(getattr(dm, "data_dir", None))
        if path is None:
            reason = "no SimLex-999 file found (pass --simlex PATH)"
        else:
            pairs = load_simlex(path)
            source = str(path)
    tables = {
        "input": model.backbone.embedding.weight,
        "output": model.head.output_embeddings(),
    }
    out: dict[str, Any] = {"source": source if reason is None else None}
    for name, table in tables.items():
        if reason is not None:
            out[name] = {"measured": False, "reason": reason}
        elif table is None:
            why = f"head {model.hparams.head!r} has no output row per word"
            out[name] = {"measured": False, "reason": why}
        else:
            res = word_similarity(table.detach().float().cpu(), dm.vocab.stoi, pairs)
            out[name] = {
                "measured": res.spearman is not None,
                "spearman": res.spearman,
                "covered": res.covered,
                "total": res.total,
                "reason": res.reason,
            }
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the recipe; returns the results dict on global rank 0 (``None`` on other ranks)."""
    args = parse_args(argv)
    rank = _global_rank_from_env()
    ranks_here = args.devices if isinstance(args.devices, int) else 1
    threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, ranks_here))
    if args.accelerator in ("cpu", "auto") and not torch.cuda.is_available():
        torch.set_num_threads(threads)
    L.seed_everything(args.seed, workers=True, verbose=False)

    dm = LMDataModule(
        data=args.data,
        batch_size=args.batch_size,
        bptt=args.bptt,
        cache_dir=args.cache_dir,
        min_count=args.min_count,
        max_size=args.max_size,
        synthetic_vocab_size=args.synthetic_vocab_size,
        synthetic_tokens=args.synthetic_tokens,
        seed=args.seed,
        num_workers=args.num_workers,
    )
    dm.prepare_data()
    dm.setup("fit")
    if rank == 0:
        print(f"{dm.description} [--data {args.data}]", flush=True)

    model = LanguageModel(
        vocab_size=dm.vocab_size,
        counts=torch.as_tensor(dm.counts),
        head=args.head,
        head_options=args.head_options,
        model=args.model,
        embed_dim=args.embed_dim,
        d_model=args.d_model,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        positions=args.positions,
        dropout=args.dropout,
        max_len=max(512, args.bptt),
        tie_weights=args.tie_weights,
        input_layer=args.input_layer,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps,
    )
    data = ShardedData(dm)
    out_dir: Path = args.output_dir
    resume = _resolve_resume(args)

    loggers: list[Any] = [CSVLogger(out_dir, name="logs")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        from lightning.pytorch.loggers.tensorboard import _TENSORBOARD_AVAILABLE

        if _TENSORBOARD_AVAILABLE:
            loggers.append(TensorBoardLogger(out_dir, name="tensorboard"))
    except ImportError:
        pass
    checkpoint = ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        every_n_train_steps=args.checkpoint_every,
        save_top_k=1,
        save_last=True,
    )
    clock = TrainClock(args.max_time)
    limits = {
        f"limit_{k}_batches": getattr(args, f"limit_{k}_batches")
        for k in ("train", "val", "test")
        if getattr(args, f"limit_{k}_batches") is not None
    }
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=_strategy(args),
        precision=args.precision,
        max_steps=args.max_steps,
        max_epochs=args.max_epochs if args.max_epochs is not None else -1,
        val_check_interval=args.val_check_interval,
        check_val_every_n_epoch=None if isinstance(args.val_check_interval, int) else 1,
        gradient_clip_val=args.grad_clip or None,
        logger=loggers,
        callbacks=[
            clock,  # before FinalCheckpoint, which saves last.ckpt when the clock stops training
            checkpoint,
            FinalCheckpoint(out_dir / "checkpoints" / "last.ckpt", args.checkpoint_every),
        ],
        default_root_dir=out_dir,
        log_every_n_steps=args.log_every,
        enable_progress_bar=args.progress_bar,
        enable_model_summary=rank == 0,
        use_distributed_sampler=False,  # ShardedData deals the windows to ranks itself
        num_sanity_val_steps=0 if resume is not None else 2,
        **limits,
    )

    train_seconds, train_loss = 0.0, None
    if args.eval_only:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    else:
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=data, ckpt_path=resume)
        train_seconds = time.perf_counter() - t0
        train_loss = _last_train_loss(trainer)  # read before validate() clears callback_metrics
    if args.final_val_batches is not None:
        trainer.limit_val_batches = args.final_val_batches
    val = trainer.validate(model, datamodule=data, verbose=False)
    test = trainer.test(model, datamodule=data, verbose=False)
    if not trainer.is_global_zero:
        return None

    peak, peak_what = _peak_memory_mib(trainer.strategy.root_device)  # model is back on CPU
    results: dict[str, Any] = {
        "head": args.head,
        "head_options": args.head_options,
        "head_is_exact": model.head.loss_is_exact(training=True),
        # The resolved structure (e.g. the cutoffs that cutoffs="auto" chose), to reuse as options.
        "head_structure": model.head.extra_repr(),
        "model": args.model,
        "tie_weights": args.tie_weights,
        "input_layer": args.input_layer,
        "data": args.data,
        "data_description": dm.description,
        "vocab_size": int(dm.vocab_size),
        "parameters": sum(p.numel() for p in model.parameters()),
        "global_step": int(trainer.global_step),
        "world_size": int(trainer.world_size),
        "val_ppl": float(val[0]["val_ppl"]),
        "test_ppl": float(test[0]["test_ppl"]),
        "entropy_floor_ppl": getattr(dm, "entropy_floor_ppl", None),
        "train_loss_last": train_loss,
        "train_tokens_per_s": clock.tokens_per_s,
        "train_seconds": train_seconds,
        "stopped_by_time": clock.stopped_by_time,
        "train_step_seconds": clock.seconds,
        "peak_memory_mib": peak,
        "peak_memory_kind": peak_what,
        "wall_seconds": time.perf_counter() - _START,
        "checkpoint_last": str(out_dir / "checkpoints" / "last.ckpt"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if not args.eval_only:
        # The final validation closes the curve (it may cover more batches than the periodic
        # ones: --final-val-batches); its point is marked so plots can tell.
        clock.add_point(int(trainer.global_step), results["val_ppl"])
        clock.curve[-1]["final"] = True
    results["val_curve"] = clock.curve
    if args.target_ppl is not None:
        results["time_to_target"] = time_to_target(clock.curve, args.target_ppl)
    results["similarity"] = _similarity(model, dm, args.simlex)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    _print_summary(results, out_dir / "results.json")
    return results


def _last_train_loss(trainer: L.Trainer) -> float | None:
    value = trainer.callback_metrics.get("train_loss")
    return float(value) if value is not None else None


def _print_summary(r: dict[str, Any], path: Path) -> None:
    def fmt(x: Any, spec: str = ".2f") -> str:
        return "n/a" if x is None else format(x, spec)

    lines = [
        f"head            {r['head']} {r['head_options'] or ''}",
        f"head structure  {r['head_structure']}",
        f"data            {r['data_description']} (V={r['vocab_size']})",
        f"steps           {r['global_step']} on {r['world_size']} rank(s)",
        f"val ppl         {fmt(r['val_ppl'])}",
        f"test ppl        {fmt(r['test_ppl'])}",
    ]
    if r["entropy_floor_ppl"] is not None:
        lines.append(f"entropy floor   {fmt(r['entropy_floor_ppl'])} (best possible ppl)")
    sim = r.get("similarity", {})
    for side in ("input", "output"):
        s = sim.get(side)
        if isinstance(s, dict):
            if s.get("measured"):
                pairs = f"{s['covered']}/{s['total']} pairs"
                lines.append(f"similarity {side:7s}rho={s['spearman']:.3f} ({pairs})")
            else:
                lines.append(f"similarity {side:7s}not measured: {s.get('reason')}")
    lines += [
        f"tokens/s        {fmt(r['train_tokens_per_s'], ',.0f')} (training, all ranks)",
        f"peak memory     {fmt(r['peak_memory_mib'], ',.0f')} MiB ({r['peak_memory_kind']})",
        f"wall time       {fmt(r['wall_seconds'], '.1f')} s",
        f"results         {path}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
