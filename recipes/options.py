"""The model's, the Trainer's and the run's options, declared once: each is a field of a
dataclass below, with its type, its default and (in the docstring under it) its ``--help`` text
(the data's are ``lm_heads.data.DataOptions``).

``recipes/cli.py`` turns every field into a command-line option (``embed_dim`` → ``--embed-dim``)
and ``LanguageModel(**options)`` accepts exactly these fields (typed for mypy by
:class:`ModelOptionsDict`), so adding a model option is a field here, its name and type in
``ModelOptionsDict`` (a test holds the two equal) and the code that reads it;
:class:`TrainerOptions` go to ``L.Trainer`` by name, and :class:`RunOptions` are what
``recipes/lm.py`` does around ``fit``. This module
imports no torch: the command line is parsed (and a typo reported) before the slow imports start.

The optimizer and learning rate default to what trains each backbone: pytorch/examples' SGD at
lr 20 drives the LSTM well but makes a Transformer diverge (val ppl 4.7e6 after 20 steps on
WikiText-2), which trains with AdamW at lr 1e-3 instead.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from jsonargparse.typing import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

if TYPE_CHECKING:  # restricted numbers at run time, made by calls mypy cannot follow
    from _typeshed import DataclassInstance

    Fraction = float
    Limit = int | float
else:
    Fraction = restricted_number_type("Fraction", float, [(">=", 0.0), ("<", 1.0)])
    # Lightning's limit convention: an int counts batches, a float is a fraction of them.
    Limit = PositiveInt | restricted_number_type("UnitFraction", float, [(">", 0.0), ("<=", 1.0)])

T = TypeVar("T", bound="DataclassInstance")
BACKBONE_OPTIMIZER = {"lstm": "sgd", "transformer": "adamw"}
"""The optimizer of each backbone when ``--optimizer`` is not given."""
OPTIMIZER_LR = {"sgd": 20.0, "adam": 1e-3, "adamw": 1e-3}
"""The learning rate of each optimizer when ``--lr`` is not given."""


@dataclass(frozen=True)
class HeadOptions:
    """The output layer."""

    head: str = "adaptive"
    """output layer: a name of lm_heads.HEADS (adaptive, full, class, hierarchical, ...)"""
    head_options: dict[str, Any] = field(default_factory=dict)
    """head keyword arguments"""


@dataclass(frozen=True)
class BackboneOptions:
    """The backbone and its input layer."""

    model: Literal["lstm", "transformer"] = "lstm"
    """backbone"""
    input_layer: Literal["embedding", "adaptive"] = field(
        default="embedding", metadata={"aliases": ("--input",)}
    )
    """input layer: a plain embedding or an adaptive input"""
    embed_dim: PositiveInt = 200
    """input word vector size"""
    d_model: PositiveInt = 200
    """hidden size"""
    num_layers: PositiveInt = 2
    """LSTM layers / Transformer blocks"""
    num_heads: PositiveInt = field(default=4, metadata={"only_with": ("model", ("transformer",))})
    """attention heads (transformer only)"""
    positions: Literal["learned", "sinusoidal"] = field(
        default="learned", metadata={"only_with": ("model", ("transformer",))}
    )
    """transformer position encoding"""
    dropout: Fraction = 0.2
    """dropout probability in [0, 1)"""
    tie_weights: bool = False
    """share input embedding and head output rows"""
    carry_state: bool = field(default=True, metadata={"only_with": ("model", ("lstm",))})
    """LSTM: carry the recurrent state from one BPTT window to the next"""
    compile: bool = False
    """torch.compile the model"""


PLATEAU = ("lr_schedule", ("plateau",))
"""``metadata["only_with"]`` of an option that only some values of another use (here: the
schedules that read it): ``recipes/cli.py`` refuses it, given with any other value."""
DECAYING = ("lr_schedule", ("plateau", "step"))


@dataclass(frozen=True)
class OptimizerOptions:
    """Optimizer and learning-rate schedule."""

    optimizer: Literal["adam", "adamw", "sgd"] | None = None
    """optimizer (none: the backbone's, sgd for lstm, adamw for transformer)"""
    lr: PositiveFloat | None = None
    """learning rate (none: the optimizer's, 20 for sgd, 0.001 for adam and adamw)"""
    weight_decay: NonNegativeFloat = 0.0
    """weight decay"""
    lr_schedule: Literal["constant", "cosine", "plateau", "step"] = "plateau"
    """plateau: divide the LR by --lr-decay when the epoch-end validation stops improving;
    step: divide it at the start of each epoch of --lr-milestones"""
    lr_decay: PositiveFloat = field(default=4.0, metadata={"only_with": DECAYING})
    """plateau and step schedules: LR divisor"""
    lr_milestones: list[PositiveInt] = field(
        default_factory=list, metadata={"only_with": ("lr_schedule", ("step",))}
    )
    """step schedule: the epochs (1 = the first) at whose start the LR is divided by --lr-decay"""
    lr_patience: NonNegativeInt = field(default=0, metadata={"only_with": PLATEAU})
    """plateau schedule: validations"""
    warmup_steps: NonNegativeInt = 0
    """linear LR warm-up steps"""


MODEL_GROUPS = (HeadOptions, BackboneOptions, OptimizerOptions)


class ModelOptionsDict(TypedDict, total=False):
    """The fields of :data:`MODEL_GROUPS` by name and type, as ``LanguageModel``'s keyword
    parameters (``**options: Unpack[ModelOptionsDict]``): a checkpoint's hyperparameters stay the
    flat mapping Lightning passes back to ``__init__``, and mypy sees every option. Defaults and
    help are the dataclasses'; ``tests/recipes/test_language_model.py`` holds the two equal."""

    head: str
    head_options: dict[str, Any]
    model: Literal["lstm", "transformer"]
    input_layer: Literal["embedding", "adaptive"]
    embed_dim: int
    d_model: int
    num_layers: int
    num_heads: int
    positions: Literal["learned", "sinusoidal"]
    dropout: float
    tie_weights: bool
    carry_state: bool
    compile: bool
    optimizer: Literal["adam", "adamw", "sgd"] | None
    lr: float | None
    weight_decay: float
    lr_schedule: Literal["constant", "cosine", "plateau", "step"]
    lr_decay: float
    lr_milestones: list[int]
    lr_patience: int
    warmup_steps: int


@dataclass(frozen=True)
class TrainerOptions:
    """The options that go to ``L.Trainer``: each field is the Trainer parameter of its name,
    or of its name in :data:`TRAINER_NAMES` (``tests/recipes`` checks both against Trainer's
    signature); :meth:`trainer_kwargs` passes them on."""

    grad_clip: float = 0.25
    """max gradient norm (0: off)"""
    max_steps: int = -1
    """optimizer steps; -1: none (--max-epochs)"""
    max_epochs: int | None = 2
    """epochs (none: no limit)"""
    accelerator: str = "auto"
    """auto | cpu | gpu | cuda | mps | ..."""
    devices: PositiveInt | Literal["auto"] = 1
    """devices per node"""
    num_nodes: PositiveInt = 1
    """nodes"""
    strategy: str = "auto"
    """auto (ddp when devices > 1) | ddp | ..."""
    precision: str = "32-true"
    """64-true | 32-true | 16-mixed | bf16-mixed | 16-true | bf16-true | ..."""
    limit_train_batches: Limit | None = None
    """train batches per epoch: a count (int) or a fraction (float)"""
    limit_val_batches: Limit | None = None
    """val batches per epoch: a count (int) or a fraction (float)"""
    limit_test_batches: Limit | None = None
    """test batches per epoch: a count (int) or a fraction (float)"""
    log_every: PositiveInt = 10
    """steps between logged metrics"""

    def trainer_kwargs(self) -> dict[str, Any]:
        """These options as ``L.Trainer``'s keyword arguments (a limit left out: Lightning's)."""
        kwargs = {TRAINER_NAMES.get(k, k): v for k, v in asdict(self).items()}
        kwargs["gradient_clip_val"] = self.grad_clip or None  # 0: off
        kwargs["max_epochs"] = -1 if self.max_epochs is None else self.max_epochs
        return {k: v for k, v in kwargs.items() if not (k.startswith("limit_") and v is None)}


TRAINER_NAMES = {"grad_clip": "gradient_clip_val", "log_every": "log_every_n_steps"}
"""The recipe's name of a :class:`TrainerOptions` field → ``L.Trainer``'s name for it."""

Logger = Literal["csv", "tensorboard", "wandb", "mlflow"]


@dataclass(frozen=True)
class RunOptions:
    """What the recipe does around ``fit``: its budget, files, evaluations and output."""

    max_time: PositiveFloat | None = None
    """training budget in seconds (optimizer steps only); stops after the step that crosses it,
    or at --max-steps, whichever comes first"""
    dist_timeout: PositiveFloat = 600.0
    """seconds a rank waits for the others (to start the process group, and in each collective)
    before it stops with an error naming the likely cause, e.g. another node that failed; raise
    it if one node is much slower to start than the others"""
    threads: PositiveInt | None = None
    """CPU threads per rank"""
    output_dir: str = "runs/lm"
    """checkpoints, logs, results.json"""
    resume: str | None = None
    """checkpoint path, or 'last'"""
    overwrite: bool = False
    """start afresh in an --output-dir that holds an earlier run"""
    eval_only: bool = False
    """skip training: evaluate the weights of --resume on val and test"""
    # --val-check-interval: 0.2's name, when it drove Lightning's validation loop.
    curve_every: PositiveInt | None = field(
        default=None, metadata={"aliases": ("--val-check-interval",)}
    )
    """every N steps, add a val_subset_ppl point to the curve (the first --curve-batches
    validation batches); the whole split is validated at each epoch end regardless, and only
    that drives the plateau schedule (default: epoch ends only)"""
    curve_batches: PositiveInt = field(default=50, metadata={"only_with": ("curve_every", None)})
    """validation batches of each --curve-every point"""
    final_val_batches: Limit | None = None
    """limit of the final validation only (default: --limit-val-batches)"""
    target_ppl: PositiveFloat | None = None
    """report when validation perplexity first reached this (time_to_target)"""
    checkpoint_every: PositiveInt = 100
    """steps between checkpoints"""
    logger: Logger | list[Logger] | None = None
    """logger(s) by name: csv, or a list, e.g. [csv,mlflow] (default: csv, and tensorboard if
    installed)"""
    progress_bar: bool | None = None
    """progress bar (default: on when stdout is a terminal; else one line per --log-every steps)"""
    similarity: str | None = field(default=None, metadata={"aliases": ("--simlex",)})
    """word-similarity file: SimLex-999, WordSim-353 or SimVerb-3500 format"""


def option_group(cls: type[T], options: Any) -> T:
    """The dataclass ``cls`` of the parsed ``options`` (a mapping with its field names; a field
    it lacks keeps its default)."""
    return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


def option_names() -> list[str]:
    """Every option ``LanguageModel`` takes besides ``vocab_size``, ``counts`` and ``max_len``."""
    return [f.name for group in MODEL_GROUPS for f in fields(group)]


def field_default(f: Field[Any]) -> Any:
    """The default of the dataclass field ``f``: its value, or a new one of its factory."""
    return f.default_factory() if callable(f.default_factory) else f.default


def resolve(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` over the defaults, with the backbone's optimizer and the optimizer's lr
    filled in where they are ``None``; ``TypeError`` names any key that is not an option."""
    unknown = sorted(set(options) - set(option_names()))
    if unknown:
        raise TypeError(f"unknown model option(s) {unknown}; the options are {option_names()}")
    declared = {f.name: field_default(f) for group in MODEL_GROUPS for f in fields(group)}
    out = {**declared, **options}
    out["head_options"] = dict(out["head_options"] or {})
    if out["optimizer"] is None:
        out["optimizer"] = BACKBONE_OPTIMIZER.get(out["model"], "adamw")
    if out["lr"] is None:
        out["lr"] = OPTIMIZER_LR.get(out["optimizer"], 1e-3)
    return out


@cache
def attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` (as litgpt's configs document theirs)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs
