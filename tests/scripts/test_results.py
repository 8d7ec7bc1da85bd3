"""``scripts/results.py`` (the study driver) and ``scripts/study_report.py`` (its tables)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "results.py"

FAKE_EXAMPLES = """\
import argparse

p = argparse.ArgumentParser()
for name in ("--data", "--model", "--save"):
    p.add_argument(name)
for name in ("--epochs", "--emsize", "--nhid", "--nlayers", "--batch_size", "--bptt", "--seed"):
    p.add_argument(name, type=int)
for name in ("--lr", "--clip", "--dropout"):
    p.add_argument(name, type=float)
args = p.parse_args()
train_data = open(args.data + "/train.txt").read().split()
batches = 0
for batch, i in enumerate(range(0, len(train_data) - 1, args.bptt)):
    batches += 1
print("| epoch   1 |   200/ 2983 batches | lr 20.00 | ms/batch 350.00 | loss  7.00 |")
print("| end of epoch   1 | time:  1.00s | valid loss  5.00 | valid ppl {:8.2f}".format(batches))
print("| End of training | test loss  5.00 | test ppl {:8.2f}".format(batches + 0.5))
"""
"""Stands in for pytorch/examples' main.py: its perplexity is the number of batches it ran."""


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results() -> ModuleType:
    return _load("results_script", SCRIPT)


@pytest.fixture(scope="module")
def report(results) -> ModuleType:
    return sys.modules["study_report"]


def _curve(*points: tuple[float, int, float], epoch0: float = 0.0) -> list[dict]:
    return [{"train_seconds": s, "step": k, "tokens": 10 * k, "val_ppl": v,
             "epoch": epoch0 + k / 100, "simlex_input": k / 1000, "simlex_output": None}
            for s, k, v in points]  # fmt: skip


def test_curves_first_reach_and_stitching(report) -> None:
    curve = _curve((1.0, 10, 50.0), (3.0, 20, 20.0))
    assert report.first_reach(curve, 30.0) == 3.0
    assert report.first_reach(curve, 50.0) == 1.0  # reached means <= target
    assert report.first_reach(curve, 10.0) is None

    prior = {"train_step_seconds": 3.5, "val_curve": curve}
    # The recipe's clock restarted on resume: the continuation's seconds and tokens are offset.
    cont = {"result": {"val_curve": _curve((2.0, 40, 10.0)), "train_step_seconds": 2.5},
            "prior": prior, "persisted": False}  # fmt: skip
    stitched = report.stitched_curve(cont)
    assert [(p["train_seconds"], p["step"]) for p in stitched] == [(1.0, 10), (3.0, 20), (5.5, 40)]
    assert stitched[-1]["tokens"] == 400 + 200
    assert report.total_seconds(cont["result"], prior, persisted=False) == 6.0
    # A persisted clock: the continuation's curve is the whole history, taken as it is.
    whole = _curve((1.0, 10, 50.0), (3.0, 20, 20.0), (5.5, 40, 10.0))
    cont = {"result": {"val_curve": whole}, "prior": prior, "persisted": True}
    assert report.stitched_curve(cont) == whole
    assert report.total_seconds({"train_step_seconds": 5.5}, prior, persisted=True) == 5.5


def test_simlex_trend_takes_the_points_nearest_each_epoch(report) -> None:
    curve = _curve((1.0, 90, 300.0), (2.0, 110, 250.0), (3.0, 290, 200.0), (4.0, 610, 150.0))
    trend = report.simlex_trend(curve)
    assert [(p["epoch"], p["simlex_input"]) for p in trend] == [(0.9, 0.09), (2.9, 0.29),
                                                                (6.1, 0.61)]  # fmt: skip
    assert report.simlex_trend(curve[:2]) == trend[:1]  # no point near 3 or 6 epochs: left out
    final = {"step": 700, "train_seconds": 5.0, "tokens": 7000, "val_ppl": 140.0, "final": True}
    assert report._epochs([*curve, final]) == pytest.approx(7.0)  # 100 steps per epoch


def test_examples_log_is_parsed_and_loop_is_capped(results, report, tmp_path) -> None:
    log = (
        "| epoch   1 |   400/ 2983 batches | lr 20.00 | ms/batch 350.00 | loss  6.50 |\n"
        "| end of epoch   1 | time: 210.00s | valid loss  6.46 | valid ppl   636.70\n"
        "| End of training | test loss  6.37 | test ppl   583.30\n"
    )
    parsed = report.parse_examples_log(log, batch_tokens=700)
    assert parsed == {"val_ppl": 636.7, "test_ppl": 583.3, "train_tokens_per_s": pytest.approx(2e3)}
    assert report.parse_examples_log("Traceback", 700)["val_ppl"] is None
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    dest.mkdir()
    (src / "main.py").write_text(FAKE_EXAMPLES)
    (src / "model.py").write_text("")
    (src / "data.py").write_text("")
    results.patch_examples(src, dest, steps=7)
    patched = (dest / "main.py").read_text()
    assert "    if batch >= 7:  # step cap" in patched and "        break" in patched
    assert (src / "main.py").read_text() == FAKE_EXAMPLES  # the checkout is untouched
    (src / "main.py").write_text("print('no loop')\n")
    with pytest.raises(SystemExit, match="found 0; cannot cap it"):
        results.patch_examples(src, dest, steps=7)


def _row(head: str, val: float, tok_s: float, curve: list[dict]) -> dict:
    return {"head": head, "val_ppl": val, "test_ppl": val, "tokens_per_s": tok_s,
            "train_seconds": 360.0, "curve": curve}  # fmt: skip


def test_literature_checks_are_computed_from_the_rows(report) -> None:
    study = {
        "equal_time": [
            _row("full", 300.0, 2000.0, _curve((360.0, 100, 300.0))),
            _row("adaptive", 200.0, 14000.0, _curve((60.0, 100, 290.0), (360.0, 600, 200.0))),
            _row("spherical", 280.0, 2000.0, []),
            _row("nce", 330.0, 6000.0, []),
            {"head": "taylor", "error": "exit status 1"},
        ],
        "headline": [],
    }
    checks = {c["claim"].split(" (")[0]: c for c in report.literature_checks(study)}
    grave = checks["adaptive reaches full's perplexity with 2-10× less training time"]
    assert grave["holds"] is True and "6.0× less time" in grave["evidence"]  # 6 min vs 1 min
    spherical = checks["spherical is behind the log-softmax on language modelling"]
    assert spherical["holds"] is False and "-6.7%" in spherical["evidence"]
    assert checks["the sampled head nce trails the full softmax"]["holds"] is True
    assert not any("taylor" in c for c in checks)  # failed: not claimed either way
    winner = checks["winner at equal time"]
    assert winner["evidence"].startswith("adaptive 200.0, spherical 280.0")
    # With a headline run, full's longer run sets the perplexity adaptive must reach.
    study["headline"] = [{"head": "full", "val_ppl": 250.0, "train_minutes": 12.0, "curve": []}]
    grave = report.literature_checks(study)[0]
    assert "after 12.0 training min (headline)" in grave["evidence"]
    assert "adaptive reached it after 6.0 min: 2.0× less time" in grave["evidence"]


def test_results_md_section_is_replaced(report, tmp_path) -> None:
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\nintro\n{report.MARK_BEGIN}\nold\n{report.MARK_END}\noutro\n")
    report.write_results_md(doc, "new table")
    assert (
        doc.read_text() == f"# R\nintro\n{report.MARK_BEGIN}\nnew table\n{report.MARK_END}\noutro\n"
    )
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- results:begin -->"):
        report.write_results_md(tmp_path / "bare.md", "x")


def test_bad_arguments_are_refused(results, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        results.parse_args(["--heads", "full", "nonexistent"])
    assert "unknown head(s) ['nonexistent']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results.parse_args(["--data", str(tmp_path)])
    assert "no train.txt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results.parse_args(["--data", "synthetic", "--config", str(tmp_path / "none.yaml")])
    assert "does not exist" in capsys.readouterr().err


def test_finished_runs_are_reused_and_killed_runs_resume(results, tmp_path, monkeypatch) -> None:
    calls: list[list[str]] = []

    def fake_process(cmd: list[str], cwd: Path, log: Path, **env: str) -> dict:
        calls.append(cmd)
        (cwd / "results.json").write_text(json.dumps({"val_ppl": 1.0}))
        return {"returncode": 0, "load": {"wall_s": 1.0}}

    monkeypatch.setattr(results, "run_process", fake_process)
    args = results.parse_args(["--quick", "--output-dir", str(tmp_path)])
    run = {"head": "full", "dir": tmp_path / "run", "argv": ["--head", "full"]}
    assert results.run_recipe(run, args)["resumed_from"] is None  # fresh
    assert results.run_recipe(run, args)["reused"] is True and len(calls) == 1
    # Killed mid-way (no results.json, a last.ckpt): resumed if the checkpoint holds the clock...
    (run["dir"] / "results.json").unlink()
    (run["dir"] / "checkpoints").mkdir()
    (run["dir"] / "checkpoints" / "last.ckpt").write_text("")
    monkeypatch.setattr(results, "clock_persisted", lambda path: True)
    assert results.run_recipe(run, args)["resumed_from"] == "last"
    assert calls[-1][-2:] == ["--resume", "last"]
    # ... else started again (its --max-time would otherwise restart from 0).
    (run["dir"] / "results.json").unlink()
    monkeypatch.setattr(results, "clock_persisted", lambda path: False)
    assert results.run_recipe(run, args)["resumed_from"] is None
    assert not (run["dir"] / "checkpoints").exists()
    # A changed command is a new run; a continuation starts from its source checkpoint.
    run["argv"] = ["--head", "full", "--lr", "2"]
    run["start"] = tmp_path / "source.ckpt"
    assert "no checkpoint" in results.run_recipe(run, args)["error"]
    run["start"].write_text("")
    assert results.run_recipe(run, args)["resumed_from"] == str(run["start"])
    assert results.run_recipe(run, args, execute=False)["reused"] is True


def test_recipe_time_budget_and_validation_curve(tmp_path, monkeypatch) -> None:
    """The recipe options the study needs: --max-time, the val curve, --target-ppl."""
    monkeypatch.chdir(tmp_path)
    lm = _load("recipes.lm", REPO / "recipes" / "lm.py")
    out = lm.main([
        "--data", "synthetic", "--synthetic-vocab-size", "60", "--synthetic-tokens", "4000",
        "--batch-size", "4", "--bptt", "8", "--embed-dim", "16", "--d-model", "16",
        "--no-progress-bar", "--threads", "1", "--accelerator", "cpu", "--head", "full",
        "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run"),
        "--max-steps", "100000", "--max-time", "0.3", "--val-check-interval", "5",
        "--limit-val-batches", "1", "--final-val-batches", "1.0", "--target-ppl", "1e9",
        "--checkpoint-every", "100000",
    ])  # fmt: skip
    assert out["stopped_by_time"] is True and 0 < out["global_step"] < 100_000
    assert out["train_step_seconds"] >= 0.3
    curve = out["val_curve"]
    steps = [p["step"] for p in curve]
    assert steps == sorted(set(steps)) and steps[0] == 5
    assert all(a["train_seconds"] <= b["train_seconds"] for a, b in itertools.pairwise(curve))
    # The last point is the final validation (whole split), at the last step.
    assert curve[-1]["final"] is True and curve[-1]["step"] == out["global_step"]
    assert curve[-1]["val_ppl"] == pytest.approx(out["val_ppl"])
    assert out["time_to_target"]["step"] == 5  # any perplexity is below 1e9
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # stopped by time: saved


def _tiny_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    path.mkdir()
    for split, n in (("train", 3000), ("valid", 400), ("test", 400)):
        (path / f"{split}.txt").write_text(" ".join(rng.choice(words) for _ in range(n)) + "\n")
    return path


def test_quick_study_end_to_end(results, tmp_path) -> None:
    out, examples = tmp_path / "out", tmp_path / "examples"
    examples.mkdir()
    (examples / "main.py").write_text(FAKE_EXAMPLES)
    (examples / "model.py").write_text("")
    (examples / "data.py").write_text("")
    corpus = _tiny_corpus(tmp_path / "corpus")
    argv = ["--quick", "--output-dir", str(out), "--examples", str(examples),
            "--reference-data", str(corpus)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    study = json.loads((out / "study.json").read_text())
    assert study["command"] == "python scripts/results.py " + " ".join(argv)
    eq = {r["head"]: r for r in study["equal_time"]}
    assert set(eq) == {"full", "adaptive"} and not any("error" in r for r in eq.values())
    for r in eq.values():
        assert r["train_seconds"] >= 1.0 and r["steps"] > 0 and r["peak_rss_mib"] > 0
        assert r["epochs"] > 0
        assert r["simlex_input"] is not None  # the synthetic ground-truth pairs
    ada, full = study["headline"]
    assert (ada["head"], full["head"]) == ("adaptive", "full")
    # full was continued to adaptive's training seconds (the clock stops after the crossing step).
    assert full["train_minutes"] == pytest.approx(ada["train_minutes"], rel=0.2)
    assert ada["steps"] > eq["adaptive"]["steps"]
    ref = study["reference"]
    assert ref["theirs_val_ppl"] == 12.0  # the fake main.py ran exactly the capped 12 batches
    assert ref["val_ratio"] == pytest.approx(ref["ours_val_ppl"] / 12.0)
    assert {(r["phase"], r["head"]) for r in study["load"]} >= {("equal_time", "full")}
    assert all(r["study_cpu_cores"] > 0 for r in study["load"])

    md = (out / "study.md").read_text()
    for text in ("| head | val ppl | test ppl | steps |", "### Headline", "pytorch/examples",
                 "Machine load during each run", "Checks against the literature"):  # fmt: skip
        assert text in md
    for name in ("curves_equal_time.png", "headline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((out / "runs").rglob("*.ckpt"))  # every checkpoint deleted once used
    assert not (tmp_path / "lightning_logs").exists()

    # Run again: every finished run is reused, none retrained.
    again = results.main(argv)
    assert all(r["reused"] for r in again["load"])
    assert [r["val_ppl"] for r in again["equal_time"]] == [
        r["val_ppl"] for r in study["equal_time"]
    ]
