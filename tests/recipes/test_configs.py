"""recipes/lm.py's command line (recipes/cli.py): shipped YAMLs, --print_config round trip,
results.json as a config, help text, and clear errors for bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_heads import HEADS, head_options
from recipes.options import option_names, resolve

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def cli():
    from recipes import cli

    return cli


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"wikitext2_quick.yaml", "wikitext103.yaml", "lm1b.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(cli, path: Path) -> None:
    args = cli.parse_args(["--config", str(path)])
    assert args.head in HEADS
    assert set(args.head_options) <= set(head_options(args.head))
    # Every key is used: an option that silently kept its default would mean a typo.
    for key, value in yaml.safe_load(path.read_text()).items():
        assert args[key.replace("-", "_")] == value, key


def test_standard_recipes(cli) -> None:
    reference = cli.parse_args(["--config", str(REPO / "recipes/configs/wikitext2_reference.yaml")])
    # pytorch/examples word_language_model/main.py defaults (its README's 117.61 was PTB's).
    assert (reference.embed_dim, reference.d_model, reference.num_layers) == (200, 200, 2)
    assert (reference.optimizer, reference.lr, reference.lr_schedule) == ("sgd", 20.0, "plateau")
    assert (reference.lr_decay, reference.grad_clip, reference.dropout) == (4.0, 0.25, 0.2)
    assert (reference.batch_size, reference.bptt, reference.eval_batch_size) == (20, 35, 10)
    assert reference.carry_state and not reference.tie_weights and reference.max_epochs == 6
    w103 = cli.parse_args(["--config", str(REPO / "recipes/configs/wikitext103.yaml")])
    assert w103.head == "adaptive" and w103.head_options["cutoffs"] == [20000, 60000]
    lm1b = cli.parse_args(["--config", str(REPO / "recipes/configs/lm1b.yaml")])
    assert lm1b.head_options["cutoffs"] == [4000, 40000, 200000]
    assert lm1b.min_count == 3


def test_cli_overrides_config(cli) -> None:
    path = str(REPO / "recipes/configs/wikitext2_quick.yaml")
    args = cli.parse_args(["--config", path, "--lr", "0.01", "--head-option", "cutoffs=[100, 500]",
                           "--max-steps", "7"])  # fmt: skip
    assert args.lr == 0.01 and args.max_steps == 7
    assert args.head_options == {"cutoffs": [100, 500]}
    assert args.max_epochs == 2 and args.output_dir == "runs/wikitext2_quick"  # from the file


def test_head_option_values_are_yaml(cli) -> None:
    args = cli.parse_args(["--head", "importance", "--head-option", "num_samples=64",
                           "--head-option", "alpha=0.5", "--head-option", "proposal=uniform",
                           "--head-option", "bias=false"])  # fmt: skip
    assert args.head_options == {"num_samples": 64, "alpha": 0.5, "proposal": "uniform",
                                 "bias": False}  # fmt: skip


def test_old_option_names_keep_working(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("s.txt").write_text("old new 5.0\n")  # the similarity file is checked at once
    args = cli.parse_args(["--head", "adaptive", "--tie-weights", "--no-progress-bar",
                           "--simlex", "s.txt", "--limit-val-batches", "1.0",
                           "--limit-test-batches", "3", "--devices", "auto"])  # fmt: skip
    assert args.tie_weights is True and args.progress_bar is False
    assert args.similarity == "s.txt"  # --simlex is an alias of --similarity
    assert args.limit_val_batches == 1.0 and isinstance(args.limit_val_batches, float)
    assert args.limit_test_batches == 3 and isinstance(args.limit_test_batches, int)
    assert args.devices == "auto"
    assert cli.parse_args(["--logger", "csv"]).logger == ["csv"]
    assert cli.parse_args(["--logger", "[csv, mlflow]"]).logger == ["csv", "mlflow"]
    # Options added since: accepted with these names and defaults (by the parser: together,
    # some of them would be refused as doing nothing, e.g. --lr-decay with cosine).
    new = cli.build_parser().parse_args([
        "--no-carry-state", "--lr-schedule", "cosine", "--lr-decay", "2", "--lr-patience", "1",
        "--eval-batch-size", "5", "--input", "adaptive", "--compile"])  # fmt: skip
    assert (new.carry_state, new.lr_schedule, new.lr_decay, new.lr_patience) == (
        False, "cosine", 2.0, 1)  # fmt: skip
    assert (new.eval_batch_size, new.input_layer, new.compile) == (5, "adaptive", True)
    default = cli.parse_args([])
    assert (default.carry_state, default.lr_decay, default.lr_patience) == (True, 4.0, 0)
    assert (default.input_layer, default.compile, default.eval_batch_size) == (
        "embedding",
        False,
        10,
    )
    # The default run is pytorch/examples' WikiText-2 configuration for 2 epochs; the optimizer
    # and lr are the LSTM's when not given (they depend on the backbone).
    model = resolve({name: default[name] for name in option_names()})
    reference = (default.embed_dim, default.d_model, default.num_layers, model["optimizer"],
                 model["lr"], default.lr_schedule, default.grad_clip, default.batch_size,
                 default.bptt, default.max_steps, default.max_epochs)  # fmt: skip
    assert reference == (200, 200, 2, "sgd", 20.0, "plateau", 0.25, 20, 35, -1, 2)


def test_underscore_spelling_is_accepted(cli) -> None:
    # As generate.py and evaluate.py accept both (jsonargparse names options with underscores).
    args = cli.parse_args(["--max_steps", "7", "--embed_dim=16", "--head-option", "cutoffs=[5]"])
    assert (args.max_steps, args.embed_dim) == (7, 16)


def test_a_mistake_is_reported_before_torch_loads(repo) -> None:
    # Every command used to spend ~8 s importing torch and lightning before it read its options.
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['recipes/lm.py', '--bogus']\n"
        "try:\n"
        "    runpy.run_path('recipes/lm.py', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    assert "unrecognized arguments: --bogus" in done.stderr


def test_print_config_round_trips(cli, tmp_path, capsys) -> None:
    argv = ["--head", "class", "--head-option", "num_classes=7", "--lr", "0.01", "--bptt", "12",
            "--logger", "[csv]", "--no-carry-state"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        cli.parse_args([*argv, "--print_config"])
    assert exc.value.code == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    back = cli.parse_args(["--config", str(path)])
    assert cli.recorded_args(back) == cli.recorded_args(cli.parse_args(argv))


def test_results_json_args_are_a_config(cli, tmp_path) -> None:
    args = cli.parse_args(["--head", "full", "--head-option", "chunk_size=64", "--max-steps", "9"])
    results = {"head": "full", "val_ppl": 12.5, "args": cli.recorded_args(args)}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert cli.recorded_args(cli.parse_args(["--config", str(path)])) == cli.recorded_args(args)
    # results.json of the earlier argparse recipe: every option as its dest, simlex, config.
    simlex = tmp_path / "SimLex-999.txt"  # the files a config names are checked at once
    simlex.write_text("old new 5.0\n")
    old = {**cli.recorded_args(args), "simlex": str(simlex), "config": None}
    del old["similarity"], old["encoding"], old["carry_state"], old["logger"], old["overwrite"]
    path.write_text(json.dumps({"head": "full", "val_ppl": 1.0, "args": old}))
    again = cli.parse_args(["--config", str(path), "--max-steps", "10"])
    assert again.similarity == str(simlex) and again.max_steps == 10
    assert again.head_options == {"chunk_size": 64}


def test_every_option_has_help_with_its_default(cli) -> None:
    parser = cli.build_parser()
    text = " ".join(parser.format_help().split())
    options = [a for a in parser._actions if a.dest not in ("help", "print_config", "config")]
    assert all(a.help for a in options)
    formatter = parser._get_formatter()
    for action in options:
        assert "default" in formatter._get_help_string(action), action.dest
    assert "default: plateau)" in text and "default: adaptive)" in text  # schedule, --head


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr: fast\n", "--lr: expected a number > 0 or null, got 'fast'"),
        ("batch_size: 0\n", "--batch-size: expected a whole number > 0"),
        ("batch_size: 3.5\n", "--batch-size: expected a whole number > 0"),
        ("model: rnn\n", "--model: expected one of lstm, transformer"),
        ("learning_rate: 0.1\n", "learning_rate"),
        ("tie_weights: yes please\n", "not boolean: yes please"),
        ("bptt: [1, 2]\n", "--bptt: expected a whole number > 0"),
        ("head_options: [1, 2]\n", "--head-options: expected a mapping"),
        ("- just\n- a list\n", "Unexpected config"),
        ("lr: [\n", "Problems parsing config"),
        ("head: adaptive\nhead_options: {cutof: [1]}\n", "has no option(s) ['cutof']"),
    ],
)
def test_malformed_config_is_a_clear_error(cli, tmp_path, capsys, text: str, message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(["--config", _write(tmp_path, text)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--head", "nope"], "--head 'nope' is not a head; the heads are: adaptive"),
        (["--weight-decay", "-1"], "--weight-decay: expected a number >= 0"),
        (["--head-option", "cutoffs"], "expected KEY=VALUE"),
        (["--dropout", "1.5"], "--dropout: expected a number >= 0 and < 1"),
        (["--eval-only"], "--eval-only needs --resume"),
        (["--precision", "foo"], "--precision 'foo' is not one of"),
        (["--max-steps", "-5"], "give a positive number of optimizer steps, or -1"),
        (["--max-steps", "-1", "--max-epochs", "0"], "--max-epochs 0 trains nothing"),
        (["--max-steps", "-1", "--max-epochs", "null"], "needs --max-epochs or --max-time"),
        (["--max-steps", "0"], "--max-steps 0 trains nothing"),
        (["--logger", "[csv,foo]"], "--logger: expected one of csv"),
        (["--overwrite", "--resume", "last"], "give only one"),
    ],
)
def test_bad_cli_values(cli, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err  # one paragraph, no usage dump


OLD_OPTIONS = [
    "--accelerator",
    "--batch-size",
    "--bptt",
    "--cache-dir",
    "--checkpoint-every",
    "--config",
    "--d-model",
    "--data",
    "--devices",
    "--dropout",
    "--embed-dim",
    "--eval-only",
    "--final-val-batches",
    "--grad-clip",
    "--head",
    "--head-option",
    "--limit-test-batches",
    "--limit-train-batches",
    "--limit-val-batches",
    "--log-every",
    "--lr",
    "--lr-schedule",
    "--max-epochs",
    "--max-size",
    "--max-steps",
    "--max-time",
    "--min-count",
    "--model",
    "--no-progress-bar",
    "--no-tie-weights",
    "--num-heads",
    "--num-layers",
    "--num-nodes",
    "--num-workers",
    "--optimizer",
    "--output-dir",
    "--positions",
    "--precision",
    "--progress-bar",
    "--resume",
    "--seed",
    "--simlex",
    "--strategy",
    "--synthetic-tokens",
    "--synthetic-vocab-size",
    "--target-ppl",
    "--threads",
    "--tie-weights",
    "--val-check-interval",
    "--warmup-steps",
    "--weight-decay",
]
"""Every option of the argparse recipe that this command line replaced."""


def test_every_earlier_option_name_is_kept(cli) -> None:
    names = {name for action in cli.build_parser()._actions for name in action.option_strings}
    assert set(OLD_OPTIONS) <= names


# ------------------------------------------------------------------------------------------------
# What each shipped config means once the recipe has built it, not only that it parses: the
# reference config once held `val_check_interval: 1.0`, read as the integer 1 (a validation
# after every batch), and the Transformer trained with the LSTM's SGD at lr 20 (diverged).
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_means_what_it_says(cli, path: Path, tmp_path) -> None:
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from recipes.language_model import LanguageModel, SubsetValidation
    from recipes.options import option_names
    from recipes.preflight import build_trainer

    args = cli.parse_args(["--config", str(path), "--accelerator", "cpu"])
    given = {**cli.parse_args([]), **yaml.safe_load(path.read_text())}  # what the file says
    args.output_dir = str(tmp_path)
    trainer, _ = build_trainer(cli.grouped(args), resuming=False, rank=0)
    # The whole validation split once per epoch end, nothing in between.
    assert trainer.val_check_interval == 1.0 and isinstance(trainer.val_check_interval, float)
    assert trainer.check_val_every_n_epoch == 1
    assert trainer.max_steps == given["max_steps"]
    if given["max_steps"] > 0:  # steps set the length: the default --max-epochs 2 must not cut it
        assert trainer.max_epochs == -1
    else:
        assert trainer.max_epochs == given["max_epochs"] >= 1
    assert trainer.gradient_clip_val == (given["grad_clip"] or None)
    assert trainer.precision == given["precision"]
    assert trainer.limit_val_batches == (given["limit_val_batches"] or 1.0)
    saver = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert saver._every_n_train_steps == given["checkpoint_every"]
    # Curve points are occasional (never a validation per step), on the configured batches.
    subset = [c for c in trainer.callbacks if isinstance(c, SubsetValidation)]
    if given["curve_every"] is not None:
        assert [(c.every, c.batches) for c in subset] == [
            (given["curve_every"], given["curve_batches"])]  # fmt: skip
        assert given["curve_every"] >= 100
    else:
        assert subset == []

    # The optimizer and schedule the model builds (sizes shrunk: they do not change either).
    options = {name: args[name] for name in option_names()}
    options |= {"embed_dim": 8, "d_model": 8, "num_heads": 2}
    if options["input_layer"] == "adaptive" or options["head"] == "adaptive":
        options["head_options"] = {k: v for k, v in options["head_options"].items()
                                   if k != "cutoffs"} | {"cutoffs": [10]}  # fmt: skip
    model = LanguageModel(vocab_size=50, counts=torch.arange(50, 0, -1), **options)
    model.trainer = trainer
    config = model.configure_optimizers()
    optimizer = config["optimizer"] if isinstance(config, dict) else config
    expected = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    assert type(optimizer) is expected[given["optimizer"]]
    assert optimizer.defaults["lr"] == pytest.approx(given["lr"])  # before any warm-up factor
    assert optimizer.param_groups[0]["weight_decay"] == given["weight_decay"]
    if given["model"] == "transformer" or given["optimizer"] != "sgd":
        assert given["lr"] <= 0.01  # SGD's lr 20 made the Transformer diverge
    schedule = config.get("lr_scheduler") if isinstance(config, dict) else None
    if given["lr_schedule"] == "plateau":
        assert schedule["monitor"] == "val_ppl" and schedule["interval"] == "epoch"
        assert schedule["scheduler"].factor == pytest.approx(1 / given["lr_decay"])
    elif given["lr_schedule"] == "step":  # per epoch, fixed in advance: epoch e at lr / decay^k
        assert schedule["interval"] == "epoch"
        divided = schedule["scheduler"].lr_lambdas[0]
        expected_factors = [given["lr_decay"] ** -sum(m <= e for m in given["lr_milestones"])
                            for e in range(1, given["max_epochs"] + 1)]  # fmt: skip
        assert [divided(e) for e in range(given["max_epochs"])] == expected_factors
        assert expected_factors[-1] < 1.0  # it ends annealed
    else:  # cosine with warm-up, per step: rises to lr, then decays to 0 at max_steps
        scheduler, warmup = schedule["scheduler"], given["warmup_steps"]
        assert schedule["interval"] == "step"
        factor = scheduler.lr_lambdas[0]
        assert factor(0) == pytest.approx(1 / warmup) and factor(warmup) == pytest.approx(1.0)
        assert factor(given["max_steps"]) == pytest.approx(0.0, abs=1e-9)


def test_every_data_option_reaches_the_data_module(cli) -> None:
    parser = cli.build_parser()
    given = {"--min-count": "3", "--max-size": "7", "--encoding": "latin-1", "--cache-dir": "c",
             "--synthetic-vocab-size": "50", "--synthetic-tokens": "99", "--num-workers": "2",
             "--data": "synthetic", "--batch-size": "4", "--bptt": "5", "--eval-batch-size": "6",
             "--seed": "8"}  # fmt: skip
    args = parser.parse_args([x for pair in given.items() for x in pair])
    data = cli.grouped(args).data  # what build_data passes to LMDataModule, field by field
    got = {flag[2:].replace("-", "_"): getattr(data, flag[2:].replace("-", "_")) for flag in given}
    assert {f"--{k.replace('_', '-')}": str(v) for k, v in got.items()} == given
    # The data group holds nothing else but the similarity file, which is not the data module's.
    (group,) = [g for g in parser._action_groups if g.title == "data"]
    others = {a.dest for a in group._group_actions} - set(got)
    assert others == {"similarity"}


def test_data_options_have_one_default(cli) -> None:
    """Each data option the command line has is LMDataModule's parameter, with its very default,
    type and help: ``LMDataModule()`` in a notebook is the recipe's data (0.3 had batch_size 20
    vs 32, eval_batch_size 10 vs None, synthetic_tokens 1M vs 2M, seed 1234 vs 0)."""
    import inspect

    from lm_heads.data import DataOptions, LMDataModule
    from recipes.options import attribute_docs

    parameters = inspect.signature(LMDataModule).parameters
    actions = {a.dest: a for a in cli.build_parser()._actions}
    shared = set(parameters) & set(actions)
    assert shared >= {"data", "batch_size", "eval_batch_size", "bptt", "seed", "synthetic_tokens",
                      "min_count", "max_size", "cache_dir", "encoding", "num_workers"}  # fmt: skip
    for name in shared:
        assert actions[name].default == parameters[name].default, name
        assert actions[name].help == attribute_docs(DataOptions)[name], name
    recipe = LMDataModule()
    assert (recipe.batch_size, recipe.eval_batch_size, recipe.synthetic_tokens, recipe.seed) == (
        20, 10, 1_000_000, 1234,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("option", "value"),
    [("--batch-size", "0"), ("--min-count", "0"), ("--num-workers", "-1"), ("--max-size", "0")],
)
def test_data_option_minimum_is_checked_while_parsing(cli, capsys, option, value) -> None:
    from lm_heads.data import LMDataModule

    with pytest.raises(SystemExit) as exit:
        cli.parse_args([option, value])
    assert exit.value.code == 2
    assert f"{option}: expected a whole number >" in capsys.readouterr().err
    with pytest.raises(ValueError, match=option[2:].replace("-", "_")):
        LMDataModule(**{option[2:].replace("-", "_"): int(value)})


def test_every_trainer_option_is_a_trainer_parameter() -> None:
    # The trainer options reach L.Trainer by name: a field whose name (or its entry in
    # TRAINER_NAMES) Trainer does not take would fail here, not at the first run, and a mapped
    # name must be one the group has.
    import inspect
    from dataclasses import fields

    import lightning as L

    from recipes.options import TRAINER_NAMES, TrainerOptions

    accepted = inspect.signature(L.Trainer).parameters
    names = [TRAINER_NAMES.get(f.name, f.name) for f in fields(TrainerOptions)]
    assert [name for name in names if name not in accepted] == []
    assert set(TRAINER_NAMES) <= {f.name for f in fields(TrainerOptions)}
    assert set(TrainerOptions().trainer_kwargs()) <= set(accepted)


def test_trainer_options_reach_the_trainer(cli) -> None:
    from recipes.options import TrainerOptions, option_group

    args = cli.parse_args(["--grad-clip", "0", "--max-epochs", "null", "--max-steps", "7",
                           "--log-every", "3", "--limit-val-batches", "0.5"])  # fmt: skip
    kwargs = option_group(TrainerOptions, args).trainer_kwargs()
    assert kwargs["gradient_clip_val"] is None  # 0: off
    assert (kwargs["max_epochs"], kwargs["max_steps"], kwargs["log_every_n_steps"]) == (-1, 7, 3)
    assert kwargs["limit_val_batches"] == 0.5
    assert "limit_train_batches" not in kwargs  # not given: Lightning's default
    assert "grad_clip" not in kwargs and "log_every" not in kwargs
