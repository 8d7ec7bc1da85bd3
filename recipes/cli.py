"""The command line of ``recipes/lm.py``: the declared option groups as options, and the checks
of options that are fine alone but not together.

Built on ``jsonargparse`` (as litgpt's CLI): ``--config FILE`` reads YAML (or a ``results.json``
of an earlier run, whose ``args`` are its options), ``--print_config`` writes the resolved options
as YAML that ``--config`` reads back, and the command line overrides the file. Option names use
dashes on the command line (``--max-steps``) and underscores in files (``max_steps``).

Head options are a mapping: ``head_options: {cutoffs: [2000, 10000]}`` in a file, or repeated
``--head-option KEY=VALUE`` (the value is read as YAML) on the command line; they are checked
against the head's signature here, before anything runs.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import importlib.util
import json
import operator
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, cast, get_args, get_origin, get_type_hints

import yaml
from jsonargparse import (
    ActionConfigFile,
    ActionYesNo,
    ArgumentParser,
    Namespace,
    get_loader,
    set_loader,
)
from jsonargparse.typing import NonNegativeInt, PositiveInt

from recipes import options

if TYPE_CHECKING:  # at run time through data_options(), which imports no torch
    from lm_heads.data.options import DataOptions

# Nothing here imports torch or lightning: a mistake on the command line is reported at once.
DATA_NAMES = ("auto", "synthetic", "wikitext-2", "wikitext-103", "lm1b")
"""``--data`` values that name a corpus rather than a folder (``lm_heads.data.DATA_CHOICES``)."""
PRECISIONS = (
    "64-true",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "transformer-engine",
    "transformer-engine-float16",
    "64",
    "32",
    "16",
    "bf16",
)
_LEGACY_KEYS = {"simlex": "similarity"}  # results.json of earlier versions
PARSER_MODE = "lm_recipe"


class UsageError(ValueError):
    """A mistake in the options or the files they name: reported in one paragraph, exit code 2."""


def usage_exit(error: BaseException | str, prog: str = "recipes/lm.py", status: int = 2) -> None:
    """Print ``error`` as one paragraph on stderr and exit with ``status`` (2: a usage error, as
    argparse's convention)."""
    text = " ".join(str(error).split())
    print(f"{prog}: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class HeadOption(argparse.Action):
    """``--head-option KEY=VALUE``: adds ``KEY`` to the ``head_options`` mapping (repeatable)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        key, sep, raw = str(values).partition("=")
        if not sep or not key.strip():
            parser.error(f"--head-option: expected KEY=VALUE, got {values!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            parser.error(f"--head-option {key}: value {raw!r} is not valid YAML ({err})")
        options = dict(namespace.get("head_options") or {})
        options[key.strip()] = value
        namespace["head_options"] = options


def _load_config(text: str) -> Any:
    """YAML, or the ``args`` of a ``results.json`` (with keys renamed since then)."""
    value = get_loader("yaml")(text)
    if isinstance(value, dict) and isinstance(value.get("args"), dict) and "val_ppl" in value:
        args = {_LEGACY_KEYS.get(k, k): v for k, v in value["args"].items()}
        args.pop("config", None)
        _legacy_validation(args)
        return args
    return value


def _legacy_validation(args: dict[str, Any]) -> None:
    """0.2's ``val_check_interval`` validated through Lightning's loop; a number of steps is now
    a curve point every that many steps (the whole split is validated at each epoch end)."""
    interval = args.pop("val_check_interval", None)
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 1:
        args["curve_every"] = interval


set_loader(PARSER_MODE, _load_config, exceptions=(yaml.YAMLError,))


class Parser(ArgumentParser):
    """jsonargparse's parser, reporting a mistake as one paragraph (no usage dump), and a value
    that does not fit its option's type as a sentence in words (not Python's type names)."""

    def error(self, message: str, ex: Exception | None = None) -> Any:
        if not self.exit_on_error:  # jsonargparse probing a value: it catches the exception
            return super().error(message, ex)
        usage_exit(self._plain(message) or f"{message} (see {self.prog} --help)", self.prog)

    def _plain(self, message: str) -> str | None:
        """``--lr: expected a number > 0 or null, got 'abc'`` for jsonargparse's dump of a value
        that fits none of the option's types; ``None`` for any other message."""
        key = re.match(r'Parser key "([^"]+)":', message)
        action = next((a for a in self._actions if key and a.dest == key[1]), None)
        hint = getattr(action, "_typehint", None)
        if action is None or hint is None:
            return None
        # The value as jsonargparse quotes it: the last "Given value:" of a Union (a list's items
        # come first), or what a single type's message names.
        given = re.findall(r"(?:Given|Got) value: (.*)", message)
        for pattern in _VALUE_IN_MESSAGE:
            given = given or re.findall(pattern, message)
        name = (action.option_strings or [f"--{action.dest}"])[0]
        got = f", got {given[-1].strip()!r}" if given else ""
        return f"{name}: expected {describe_type(hint)}{got}"


def describe_type(hint: Any) -> str:
    """An option's type in words: ``PositiveInt | None`` is "a whole number > 0 or null"."""
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(describe_type(h) for h in get_args(hint))
    if get_origin(hint) is Literal:
        values = [str(v) for v in get_args(hint)]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if get_origin(hint) is list:
        return f"a list, each {describe_type(get_args(hint)[0])}" if get_args(hint) else "a list"
    if hint is type(None):
        return "null"  # YAML's spelling, which the parser reads as None ("none" is text)
    if hint is dict or get_origin(hint) is dict:
        return "a mapping, e.g. {key: value}"
    base = getattr(hint, "_type", hint)  # jsonargparse's restricted numbers: e.g. PositiveInt
    words = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    limits = [f"{_OPERATORS[op]} {bound:g}" for op, bound in getattr(hint, "_restrictions", [])]
    return " ".join(
        [words.get(base, getattr(base, "__name__", str(base))), " and ".join(limits)]
    ).strip()


_VALUE_IN_MESSAGE = (
    r"Not of type \w+: (.*?) does not conform",
    r"with base 10: '(.*)'",
    r"Not of type \w+: (\S+) not an integer",
)
_OPERATORS = {operator.gt: ">", operator.ge: ">=", operator.lt: "<", operator.le: "<="}


def build_parser() -> ArgumentParser:
    """Every option of ``recipes/lm.py`` with its type, default and help (shown by ``--help``)."""
    p = Parser(
        prog="recipes/lm.py",
        description="Train a word-level LM with an lm_heads head; report perplexity and word "
        "similarity. Options come from --config FILE (YAML, or an earlier run's results.json), "
        "then the command line.",
        parser_mode=PARSER_MODE,
        exit_on_error=True,
    )
    p.add_argument("--config", action=ActionConfigFile, help="YAML options file (CLI wins)")
    head = p.add_argument_group("head")
    _add_fields(head, options.HeadOptions)
    _head_option(head.add_argument)
    _data(p.add_argument_group("data"))
    _add_fields(p.add_argument_group("model"), options.BackboneOptions)
    _add_fields(p.add_argument_group("optimizer"), options.OptimizerOptions)
    _optimisation(p.add_argument_group("optimisation"))
    _hardware_and_run(p.add_argument_group("hardware and run"))
    return p


def _head_option(add: Any) -> None:
    add(
        "--head-option",
        action=HeadOption,
        metavar="KEY=VALUE",
        default=argparse.SUPPRESS,
        help="one head option, value read as YAML (repeatable), e.g. cutoffs=[2000,10000] "
        "(default: none; adds to --head-options)",
    )


def _data(group: Any) -> None:
    """The data (``LMDataModule``'s options) and the word-similarity file."""
    data = ("data", "encoding", "cache_dir", "min_count", "max_size", "synthetic_vocab_size",
            "synthetic_tokens", "num_workers")  # fmt: skip
    _add_fields(group, data_options(), data)
    _add_fields(group, options.RunOptions, ("similarity",))


def data_options() -> type[DataOptions]:
    """``lm_heads.data.options.DataOptions``, the data options' one declaration, without
    importing ``lm_heads`` (whose ``__init__`` loads torch: seconds before a typo is reported).
    The module is registered under its own name, so the package later imports this same one."""
    name = "lm_heads.data.options"
    if name not in sys.modules:
        package = importlib.util.find_spec("lm_heads")  # finds, without importing it
        assert package is not None and package.origin is not None, "lm_heads is not installed"
        path = Path(package.origin).parent / "data" / "options.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name].DataOptions


def _add_fields(group: Any, cls: type, names: Sequence[str] | None = None) -> None:
    """One option per field of the dataclass ``cls`` (``recipes/options.py``, or ``names`` of
    them): its type, its default, and the docstring under it as the help."""
    hints, docs = get_type_hints(cls), options.attribute_docs(cls)
    chosen = {f.name: f for f in fields(cls)}
    for f in [chosen[name] for name in names] if names is not None else fields(cls):
        flags = (f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ()))
        default = options.field_default(f)
        if set(get_args(hints[f.name]) or [hints[f.name]]) <= {bool, type(None)}:
            kind: dict[str, Any] = {"action": ActionYesNo(no_prefix="no-")}
        else:
            kind = {"type": _parsed_type(hints[f.name], f.metadata.get("minimum"))}
        group.add_argument(*flags, dest=f.name, default=default, help=docs[f.name], **kind)


def _parsed_type(hint: Any, minimum: int | None) -> Any:
    """The type the command line parses: a path is text, and an ``int`` with a ``minimum``
    (``lm_heads.data.options``) jsonargparse's restricted int, refused as the option is read."""
    if get_origin(hint) in (Union, UnionType):
        kept = [
            _parsed_type(h, minimum) for h in get_args(hint) if get_origin(h) is not os.PathLike
        ]
        return functools.reduce(operator.or_, kept)
    if hint is int and minimum is not None:
        return {0: NonNegativeInt, 1: PositiveInt}[minimum]
    return hint


def _optimisation(group: Any) -> None:
    """Batches, gradient clipping and the training length."""
    _add_fields(group, options.TrainerOptions, ("grad_clip",))
    _add_fields(group, data_options(), ("batch_size", "eval_batch_size", "bptt"))
    _add_fields(group, options.TrainerOptions, ("max_steps", "max_epochs"))
    _add_fields(group, options.RunOptions, ("max_time",))


def _hardware_and_run(group: Any) -> None:
    """Devices, precision, seeds, output, resume, evaluation and logging."""
    _add_fields(group, options.TrainerOptions, ("accelerator", "devices", "num_nodes", "strategy"))
    _add_fields(group, options.RunOptions, ("dist_timeout",))
    _add_fields(group, options.TrainerOptions, ("precision",))
    _add_fields(group, options.RunOptions, ("threads",))
    _add_fields(group, data_options(), ("seed",))
    outputs = ("output_dir", "resume", "overwrite", "eval_only", "curve_every", "curve_batches")
    _add_fields(group, options.RunOptions, outputs)
    limits = tuple(f"limit_{split}_batches" for split in ("train", "val", "test"))
    _add_fields(group, options.TrainerOptions, limits)
    _add_fields(group, options.RunOptions, ("final_val_batches", "target_ppl", "checkpoint_every"))
    _add_fields(group, options.TrainerOptions, ("log_every",))
    _add_fields(group, options.RunOptions, ("logger", "progress_bar"))


def parse_args(argv: Sequence[str] | None = None) -> Namespace:
    """Parse ``argv`` (``sys.argv[1:]`` when ``None``) and check the options that depend on others.

    Exits with status 2 and one paragraph on a mistake.
    """
    parser = build_parser()
    argv = [_dashed(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        args = parser.parse_args(argv)
    except UnicodeDecodeError:  # jsonargparse reads --config FILE as text
        usage_exit(_not_a_config(argv))
    for key, value in args.items():
        if key != "config":  # jsonargparse's int/float subclasses would not load weights_only
            args[key] = json.loads(json.dumps(value))
    if isinstance(args.logger, str):
        args.logger = [args.logger]
    try:
        check_args(args, parser.get_defaults())
    except UsageError as err:
        usage_exit(err)
    return args


def _not_a_config(argv: list[str]) -> str:
    """The sentence for a ``--config FILE`` that is not text (a checkpoint, often)."""
    given = [
        a.partition("=")[2] or b
        for a, b in zip(argv, [*argv[1:], ""], strict=True)
        if a.startswith("--config")
    ]
    files = [f for f in given if Path(f).is_file() and not _is_text(Path(f))]
    name = files[0] if files else " ".join(given)
    return (
        f"--config {name} is not a text file (YAML or an earlier run's results.json) but binary "
        "data, e.g. a checkpoint: continue from a checkpoint with --resume CHECKPOINT"
    )


def _is_text(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _dashed(arg: str) -> str:
    """``--max_steps`` as ``--max-steps``: both spellings work, as in generate.py and evaluate.py
    (jsonargparse's own ``--print_config`` takes its underscore in either spelling)."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    if name in ("--print_config", "--print-config"):
        return "--print_config" + sep + value
    return name.replace("_", "-") + sep + value


def check_args(args: Namespace, defaults: Namespace | None = None) -> None:
    """Raise :class:`UsageError` for options that are fine alone but not together, or that
    would be dropped silently (``defaults``: the parser's, to tell which options were given)."""
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision {args.precision!r} is not one of {', '.join(PRECISIONS)}")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise UsageError(f"--max-epochs {args.max_epochs} trains nothing; give 1 or more")
    if args.max_steps == 0 and not args.eval_only:
        raise UsageError("--max-steps 0 trains nothing; use --eval-only to only evaluate")
    if args.max_steps < -1:
        raise UsageError(
            f"--max-steps {args.max_steps}: give a positive number of optimizer steps, or -1 "
            "for no step limit (then --max-epochs sets the length)"
        )
    if args.max_steps == -1 and args.max_epochs is None and args.max_time is None:
        raise UsageError("--max-steps -1 (no step limit) needs --max-epochs or --max-time")
    if args.lr_schedule == "cosine" and args.max_steps == -1 and args.max_epochs is None:
        raise UsageError(
            "--lr-schedule cosine decays over the run's steps, and --max-time alone gives no step "
            "count: add --max-steps N (or --max-epochs N), or use --lr-schedule constant"
        )
    if args.eval_only and args.resume is None:
        raise UsageError("--eval-only needs --resume CHECKPOINT (or --resume last)")
    if args.overwrite and args.resume is not None:
        raise UsageError("--overwrite starts afresh and --resume continues: give only one")
    if args.grad_clip < 0:
        raise UsageError(f"--grad-clip must be >= 0 (0: off), got {args.grad_clip}")
    if args.max_size is not None and args.max_size < 3:
        raise UsageError(
            f"--max-size {args.max_size} counts <unk> and <eos>, so it keeps no word: give 3 "
            "or more (or leave it out to keep every word)"
        )
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise UsageError(
            f"--encoding {args.encoding!r} is not a text encoding Python knows; e.g. utf-8, "
            "latin-1, cp1252"
        ) from None
    _check_hardware(args)
    if defaults is not None:
        _check_not_dropped(args, defaults)
    check_paths(args)
    _check_head(args.head, args.head_options)


def only_with() -> dict[str, tuple[str, tuple[Any, ...] | None]]:
    """Every option that does something only when another option takes one of some values
    (``None``: when that option is given at all), as its field declares in
    ``metadata["only_with"]`` (recipes/options.py)."""
    return {
        f.name: f.metadata["only_with"]
        for group in (*options.MODEL_GROUPS, options.RunOptions)
        for f in fields(group)
        if "only_with" in f.metadata
    }


def _check_not_dropped(args: Namespace, defaults: Namespace) -> None:
    """Refuse an option that was given but would do nothing with the others chosen."""
    for name, (other, values) in only_with().items():
        if args[name] == defaults[name]:
            continue
        if values is None and args[other] is None:
            raise UsageError(
                f"{_flag(name)} does nothing without {_flag(other)}: add {_flag(other)} N, or "
                f"drop {_flag(name)}"
            )
        if values is not None and args[other] not in values:
            wanted = " or ".join(f"{_flag(other)} {v}" for v in values)
            raise UsageError(
                f"{_flag(name)} does nothing with {_flag(other)} {args[other]} (it applies to "
                f"{wanted} only): drop {_flag(name)}, or choose {wanted}"
            )
    given = [n for n in ("min_count", "max_size") if args[n] != defaults[n]]
    if given and args.data == "synthetic":
        raise UsageError(
            f"{_flag(given[0])} does nothing with --data synthetic (its vocabulary is "
            f"--synthetic-vocab-size words): drop {_flag(given[0])}, or give a corpus as --data"
        )


def _check_hardware(args: Namespace) -> None:
    """Contradictions among the hardware options that Lightning would resolve silently."""
    if "single" in args.strategy and (args.num_nodes > 1 or args.devices not in (1, "auto")):
        raise UsageError(
            f"--strategy {args.strategy} runs one process, but --devices {args.devices} "
            f"--num-nodes {args.num_nodes} asks for more: give --devices 1, or a multi-process "
            "strategy such as --strategy ddp"
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_paths(args: Namespace) -> None:
    """The files and folders the options name: checked before torch loads (seconds), so that a
    mistyped path is reported at once rather than after the imports and the data."""
    if args.data not in DATA_NAMES:
        data = Path(args.data).expanduser()
        if not data.exists():
            raise UsageError(
                f"--data {args.data} is neither one of {', '.join(DATA_NAMES)} nor an existing "
                "directory with train/valid/test files"
            )
        if not data.is_dir():
            raise UsageError(
                f"--data {args.data} is a file; give the directory holding the train, valid and "
                "test files"
            )
    check_output_dir(Path(args.output_dir))
    check_resume_exists(args, Path(args.output_dir))
    if args.similarity is not None:
        similarity = Path(args.similarity).expanduser()
        if not similarity.exists():
            raise UsageError(f"--similarity {args.similarity}: the file does not exist")
        if similarity.is_dir():
            raise UsageError(
                f"--similarity {args.similarity} is a directory; give the word-similarity file "
                "(e.g. SimLex-999.txt)"
            )


def check_output_dir(out_dir: Path) -> None:
    """The run must be able to create ``out_dir`` (or write in it): checked now, not at the first
    checkpoint after the data has loaded."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(
            f"--output-dir {out_dir} is a file; give a directory (it will hold checkpoints/, "
            "logs/ and results.json)"
        )
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--output-dir {out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == out_dir.absolute() else f"its parent {existing}"
        raise UsageError(
            f"--output-dir {out_dir}: {where} is not writable by this user; choose an "
            "--output-dir in a folder you can write to (or fix its permissions)"
        )


def check_resume_exists(args: Namespace, out_dir: Path) -> None:
    """A checkpoint for ``--resume`` exists (``last``: ``out_dir``'s last.ckpt or one of SLURM's
    hpc_ckpt_N.ckpt). Which of them is continued, by step, is ``preflight.resolve_resume``'s
    choice: that reads the checkpoints, so it waits for torch."""
    if args.resume is None:
        return
    if args.resume == "last":
        path = out_dir / "checkpoints" / "last.ckpt"
        if not path.is_file() and not any(out_dir.glob("hpc_ckpt_*.ckpt")):
            raise UsageError(f"--resume last: no checkpoint at {path}")
    elif not Path(args.resume).is_file():
        raise UsageError(f"--resume {args.resume}: no such checkpoint: {args.resume}")


def _check_head(head: str, given: dict[str, Any]) -> None:
    """The head's name and option names (checked last: this imports torch)."""
    from lm_heads import HEADS, head_options

    if head not in HEADS:
        heads = ", ".join(sorted(HEADS))
        raise UsageError(f"--head {head!r} is not a head; the heads are: {heads}")
    known = head_options(head)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(
            f"head {head!r} has no option(s) {unknown}; its options are: "
            + ", ".join(f"{k}={v!r}" for k, v in known.items())
        )


@dataclass(frozen=True)
class RecipeOptions:
    """The parsed options as typed groups, each the signature of what it configures."""

    model: options.ModelOptionsDict
    """``LanguageModel``'s keyword options"""
    data: DataOptions
    """``LMDataModule``'s options (it subclasses :class:`DataOptions`)"""
    trainer: options.TrainerOptions
    run: options.RunOptions
    recorded: dict[str, Any]
    """every option, as results.json and the checkpoints record them (``--config`` reads it)"""


def grouped(args: Namespace) -> RecipeOptions:
    """``args`` (from :func:`parse_args`) as its option groups."""
    model = {name: args[name] for name in options.option_names()}
    return RecipeOptions(
        model=cast(options.ModelOptionsDict, model),
        data=options.option_group(data_options(), args),
        trainer=options.option_group(options.TrainerOptions, args),
        run=options.option_group(options.RunOptions, args),
        recorded=recorded_args(args),
    )


def recorded_args(args: Namespace) -> dict[str, Any]:
    """The options as a plain dict that ``--config`` accepts back (results.json ``args``)."""
    out = args.clone().as_dict()
    out.pop("config", None)
    out.pop("__path__", None)
    return out


def run_command(function: Any, argv: Sequence[str] | None, prog: str) -> Any:
    """``function``'s typed parameters as a command line (help from its docstring); a mistake in
    them, or a :class:`UsageError` it raises, exits with status 2 and one paragraph."""
    from jsonargparse import auto_cli

    argv = sys.argv[1:] if argv is None else list(argv)
    # Dashes as in recipes/lm.py (--num-words) or underscores as jsonargparse names them.
    argv = [re.sub(r"^--[a-z][a-z0-9-]*", lambda m: m[0][:2] + m[0][2:].replace("-", "_"), a)
            for a in argv]  # fmt: skip
    try:
        return auto_cli(function, args=argv, parser_class=Parser, as_positional=False, prog=prog)
    except UsageError as error:
        usage_exit(error, prog)
    except Exception as error:
        # Imported only now: parsing the command line must not wait for torch (seconds).
        from lm_heads.data import CacheError, DataUnavailableError

        if not isinstance(error, (DataUnavailableError, CacheError)):
            raise
        usage_exit(error, prog)
