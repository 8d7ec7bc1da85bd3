"""The recipe's checkpoints: what they carry besides weights, and how they are read back.

A checkpoint of ``recipes/lm.py`` holds the model's hyperparameters, its weights, and (from
:class:`CheckpointExtras`) the vocabulary and options it was trained with, so that ``generate.py``,
``evaluate.py`` and ``export_embeddings.py`` need nothing but the checkpoint. Before a run resumes
from one, :func:`check_resume` compares it with the model and data of this run and says what
differs (head, vocabulary, sizes) instead of failing inside ``load_state_dict``, and
:func:`check_batching` refuses a mid-epoch resume with another split of the global batch over
ranks. :func:`newest_checkpoint` is what ``--resume last`` (and a requeued SLURM job) continues.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lm_heads.data import Vocabulary
from recipes.cli import UsageError
from recipes.language_model import LanguageModel, hpc_checkpoints
from recipes.options import option_names


class CheckpointExtras(Callback):
    """Stores the training vocabulary (words in id order, and counts), the recipe's options
    (``recipe_args``) and how the global batch was made (``batching``: see :func:`batching`, and
    where in its epoch the run was) in every checkpoint."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = args
        self.vocab: Vocabulary | None = None  # set once the data module has built it

    def on_save_checkpoint(self, trainer: L.Trainer, module: Any, checkpoint: dict) -> None:
        checkpoint["recipe_args"] = self.args
        if self.vocab is not None:
            checkpoint["vocabulary"] = {"words": self.vocab.itos, "counts": self.vocab.counts}
        per_epoch = trainer.num_training_batches
        checkpoint["batching"] = {
            **batching(trainer, int(self.args["batch_size"])),
            "epoch_batches_done": _batches_processed(trainer),
            "epoch_batches": int(per_epoch) if math.isfinite(per_epoch) else None,
        }


def _batches_processed(trainer: L.Trainer) -> int:
    """Batches of this epoch whose step finished (a save at a step's end counts that step)."""
    current = trainer.fit_loop.epoch_loop.batch_progress.current
    # Lightning annotates ``current`` as the base tracker; a batch's is a _ProcessedTracker.
    return int(current.processed)  # type: ignore[attr-defined]


def batching(trainer: L.Trainer, batch_size: int) -> dict[str, int]:
    """How a run makes its global batch: ``batch_size`` windows per rank and step, on
    ``world_size`` ranks, over ``accumulate_grad_batches`` steps."""
    world, accumulate = int(trainer.world_size), int(trainer.accumulate_grad_batches)
    return {
        "world_size": world,
        "batch_size": batch_size,
        "accumulate_grad_batches": accumulate,
        "global_batch": batch_size * world * accumulate,
    }


class FitTimer(Callback):
    """Wall-clock seconds of ``fit`` over the whole run: a resumed run adds to the saved time."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of the runs this one resumes
        self._start: float | None = None

    def on_fit_start(self, trainer: L.Trainer, module: Any) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        now = 0.0 if self._start is None else time.perf_counter() - self._start
        return self.before + now

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = float(state.get("seconds", 0.0))


def read_checkpoint(path: Path, option: str = "--checkpoint") -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors memory-mapped); :class:`UsageError` if unreadable.

    ``option`` is the command-line option that named ``path``, for the advice in the error.
    """
    advice = (
        "pick another checkpoint, or start afresh without --resume"
        if option == "--resume"
        else f"give {option} a .ckpt file that recipes/lm.py wrote (in <output-dir>/checkpoints)"
    )
    if not path.is_file():
        raise UsageError(f"{option} {path}: no such file; {advice}")
    text = _text_kind(path)
    if text is not None:
        raise UsageError(f"{option} {path} is {text}, not a checkpoint; {advice}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise UsageError(
            f"cannot read checkpoint {path}: it is damaged (e.g. cut short by a full disk or a "
            f"kill) or not a PyTorch checkpoint ({type(error).__name__}: {error}); {advice}"
        ) from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= set(ckpt):
        raise UsageError(
            f"{path} is a PyTorch file but not a checkpoint of recipes/lm.py (it lacks "
            f"'state_dict' or 'hyper_parameters'); {advice}"
        )
    return ckpt


def _text_kind(path: Path) -> str | None:
    """What a text file given as a checkpoint is (``None``: not text; checkpoints are zip files)."""
    with path.open("rb") as handle:
        head = handle.read(4096)
    if not head or head.startswith(b"PK") or b"\0" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if head.lstrip()[:1] in (b"{", b"["):
        results = " (a run's results.json: its checkpoints are in checkpoints/ beside it)"
        return "a JSON file" + (results if b'"val_ppl"' in head or b'"args"' in head else "")
    return "a text file"


def _vocab_difference(words: list[str], vocab: Vocabulary) -> str | None:
    if words == vocab.itos:
        return None
    pairs = enumerate(zip(words, vocab.itos, strict=False))
    first = next((i for i, (a, b) in pairs if a != b), None)
    where = (
        f"first difference at id {first}: {words[first]!r} there, {vocab.itos[first]!r} here"
        if first is not None
        else "one is a prefix of the other"
    )
    return f"{len(words):,} words there, {len(vocab):,} here; {where}"


def check_resume(ckpt: dict[str, Any], path: Path, model: LanguageModel, vocab: Vocabulary) -> None:
    """Raise :class:`UsageError` when ``ckpt`` cannot continue ``model`` on ``vocab``."""
    hp, now = ckpt["hyper_parameters"], dict(model.hparams)
    if hp.get("head") != now["head"]:
        raise UsageError(
            f"checkpoint {path} was trained with --head {hp.get('head')} (options "
            f"{hp.get('head_options') or {}}), not --head {now['head']}: resume it with --head "
            f"{hp.get('head')}, or train {now['head']} afresh without --resume"
        )
    saved = ckpt.get("vocabulary")
    differs = (
        _vocab_difference(list(saved["words"]), vocab)
        if isinstance(saved, dict)
        else (None if hp.get("vocab_size") == len(vocab) else f"V={hp.get('vocab_size')} there")
    )
    if differs is not None:
        raise UsageError(
            f"checkpoint {path} was trained on a different vocabulary than this run's data "
            f"({differs}): resume with the --data, --min-count and --max-size it was trained "
            "with, or start afresh without --resume"
        )
    changed = [f"{k}={hp[k]!r} (now {now[k]!r})" for k in now if k in hp and hp[k] != now[k]]
    mismatch = _state_mismatch(ckpt["state_dict"], model.state_dict())
    if mismatch:
        because = f"it was trained with {', '.join(changed)}" if changed else mismatch
        raise UsageError(
            f"checkpoint {path} does not fit this model: {because}; resume with the options it "
            "was trained with, or start afresh without --resume"
        )


def check_batching(ckpt: dict[str, Any], path: Path, now: dict[str, int]) -> str | None:
    """Compare the global batch of ``ckpt`` with this run's (``now``, from :func:`batching`).

    Mid-epoch, another split is refused (:class:`UsageError`): each rank reads its own streams of
    ``batch_size x world_size``, and the data resumes by skipping the batches done, so another
    split would train part of the epoch twice and skip another (carried state or not). At an
    epoch's end the next epoch simply starts with the new split: the warning returned says how
    the global batch changes (``None``: it does not, or the checkpoint predates the record).
    """
    then = _recorded_batching(ckpt)
    keys = ("world_size", "batch_size", "accumulate_grad_batches")
    if then is None or all(then[k] == now[k] for k in keys):
        return None
    done, per_epoch = then.get("epoch_batches_done"), then.get("epoch_batches")
    mid_epoch = done is not None and done > 0 and (per_epoch is None or done < per_epoch)
    if mid_epoch:
        of = f" of {per_epoch}" if per_epoch is not None else ""
        raise UsageError(
            f"checkpoint {path} was saved mid-epoch (after batch {done}{of}) by a run of "
            f"{_describe(then)}; this run has {_describe(now)}. Each rank reads its own share of "
            "the training streams, which depends on both, so continuing this epoch would train "
            "part of it twice and skip another (with --no-carry-state too): resume with "
            f"{then['world_size']} rank(s) (--devices x --num-nodes) and --batch-size "
            f"{then['batch_size']}, or from a checkpoint saved at an epoch's end"
        )
    return (
        f"checkpoint {path} was trained with {_describe(then)}; this run continues with "
        f"{_describe(now)}: each optimizer step now averages the gradient over "
        f"{now['global_batch']} windows instead of {then['global_batch']}, at the same --lr"
    )


def _recorded_batching(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's ``batching``; for checkpoints that predate it, what their carried
    recurrent state tells (``[world, 2, layers, batch_size, d]``, saved mid-epoch only)."""
    if isinstance(ckpt.get("batching"), dict):
        return dict(ckpt["batching"])
    carried = ckpt.get("carried_state")
    if not isinstance(carried, dict):
        return None
    world, batch_size = int(carried["state"].shape[0]), int(carried["state"].shape[3])
    return {
        "world_size": world,
        "batch_size": batch_size,
        "accumulate_grad_batches": 1,
        "global_batch": world * batch_size,
        "epoch_batches_done": int(carried["batches_in_epoch"]),
        "epoch_batches": None,
    }


def _describe(shape: dict[str, Any]) -> str:
    accumulated = shape["accumulate_grad_batches"]
    over = f" x {accumulated} accumulated steps" if accumulated != 1 else ""
    return (
        f"{shape['world_size']} rank(s) x --batch-size {shape['batch_size']}{over} (global batch "
        f"{shape['global_batch']} windows)"
    )


def newest_checkpoint(out_dir: Path) -> Path | None:
    """The checkpoint a run in ``out_dir`` continues from: ``checkpoints/last.ckpt`` or one of
    SLURM's ``hpc_ckpt_N.ckpt``, whichever holds the later step (on a tie, the later written:
    e.g. last.ckpt after the epoch-end validation that followed an hpc save at the epoch's last
    step). An unreadable file (cut short by the kill that ended its job) ranks last.
    """
    candidates = [out_dir / "checkpoints" / "last.ckpt", *hpc_checkpoints(out_dir)]
    return max((p for p in candidates if p.is_file()), key=_progress, default=None)


def _progress(path: Path) -> tuple[int, int]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step = int(ckpt["global_step"])
    except Exception:  # any damage: read_checkpoint explains it if this one is chosen
        step = -1
    return step, path.stat().st_mtime_ns


def _state_mismatch(saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> str:
    missing = sorted(set(model) - set(saved))
    extra = sorted(set(saved) - set(model))
    shapes = [k for k in model if k in saved and saved[k].shape != model[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight(s) missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected weight(s), e.g. {extra[0]}")
    if shapes:
        k = shapes[0]
        parts.append(f"{k} is {list(saved[k].shape)} there, {list(model[k].shape)} here")
    return "; ".join(parts)


def load_model(
    path: Path, vocab_file: Path | None = None
) -> tuple[LanguageModel, Vocabulary, dict[str, Any]]:
    """The trained model (eval mode, CPU), vocabulary and recipe options of a checkpoint.

    ``vocab_file`` (a cache's ``vocab.json``) is needed only for checkpoints written before they
    carried their vocabulary.
    """
    ckpt = read_checkpoint(path)
    saved = ckpt.get("vocabulary")
    if isinstance(saved, dict):
        vocab = Vocabulary(list(saved["words"]), saved["counts"])
    elif vocab_file is not None:
        try:
            vocab = Vocabulary.load(vocab_file)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
    else:
        raise UsageError(
            f"checkpoint {path} carries no vocabulary (it predates that); pass --vocab with the "
            "vocab.json of the token cache it was trained on"
        )
    hp = dict(ckpt["hyper_parameters"])
    state = ckpt["state_dict"]
    # A structure chosen at training time (cutoffs="auto" measures the device) is read back from
    # the weights' buffers, so the rebuilt head has exactly the trained shapes.
    options = dict(hp.get("head_options") or {})
    for key, value in options.items():
        if value == "auto" and isinstance(state.get(f"head.{key}"), torch.Tensor):
            options[key] = state[f"head.{key}"].tolist()
    hp["head_options"] = options
    accepted = {"vocab_size", "max_len", *option_names()}
    kwargs = {k: v for k, v in hp.items() if k in accepted}
    if kwargs.get("vocab_size") != len(vocab):
        raise UsageError(
            f"vocabulary has {len(vocab):,} words but checkpoint {path} was trained with "
            f"V={hp.get('vocab_size')}: give the vocab.json it was trained with"
        )
    model = LanguageModel(**kwargs, counts=vocab.counts)
    mismatch = _state_mismatch(state, model.state_dict())
    if mismatch:
        raise UsageError(f"checkpoint {path} does not match its own hyperparameters: {mismatch}")
    model.load_state_dict(state)
    return model.eval(), vocab, dict(ckpt.get("recipe_args") or {})
