"""scripts/parity_report.py: epoch-end whole-split values, seeds and ratios from results.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("parity_report", REPO / "scripts/parity_report.py")
assert spec is not None and spec.loader is not None
parity_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity_report)


def _run(root: Path, name: str, head: str, epoch_vals: list[float], test: float, speed: float,
         legacy: bool = False) -> None:  # fmt: skip
    curve = []
    for epoch, val in enumerate(epoch_vals, 1):
        if legacy:  # 0.2: subset points named val_ppl, the final whole-split point marked
            curve.append({"step": 100 * epoch - 50, "val_ppl": 5 * val})
        else:
            curve.append({"step": 100 * epoch - 50, "val_subset_ppl": 5 * val, "lr": 20.0})
            curve.append({"step": 100 * epoch, "val_ppl": val, "lr": 20.0})
    if legacy:
        curve.append({"step": 100 * len(epoch_vals), "val_ppl": epoch_vals[-1], "final": True})
    results = {
        "head": head, "head_options": {}, "head_structure": "", "input_layer": "embedding",
        "tie_weights": False, "global_step": 100 * len(epoch_vals), "val_ppl": epoch_vals[-1],
        "test_ppl": test, "train_tokens_per_s": speed, "train_step_seconds": 1.0,
        "similarity": {}, "args": {"seed": 1}, "val_curve": curve,
    }  # fmt: skip
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(results))


def test_groups_seeds_and_ratios(tmp_path, capsys) -> None:
    _run(tmp_path, "full_s1", "full", [200.0], 190.0, 1000.0, legacy=True)
    _run(tmp_path, "full_s2", "full", [220.0], 210.0, 1000.0)
    _run(tmp_path, "adaptive_s1", "adaptive", [205.0, 150.0], 140.0, 4000.0)
    _run(tmp_path, "adaptive_s2", "adaptive", [215.0, 160.0], 150.0, 5000.0)
    (tmp_path / "unfinished_s1").mkdir()
    report = parity_report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plot"])
    table = report["summary"]
    assert set(table) == {"full", "adaptive"}
    assert table["full"]["val_ppl_by_epoch"][0] == {"mean": 210.0, "min": 200.0, "max": 220.0,
                                                     "n": 2}  # fmt: skip
    assert table["adaptive"]["epochs"] == 2
    assert table["adaptive"]["epoch1_over_full"] == pytest.approx(210.0 / 210.0)
    assert table["adaptive"]["speed_over_full"] == pytest.approx(4.5)
    assert table["adaptive"]["test_ppl"]["mean"] == pytest.approx(145.0)
    # The legacy run's subset points are not taken for epoch-end values.
    assert report["runs"]["full"][0]["epoch_val_ppl"] == [200.0]
    assert "| adaptive |" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["full"]["seeds"] == [1, 2]


def test_no_finished_run_is_an_error(tmp_path) -> None:
    with pytest.raises(SystemExit):
        parity_report.main([str(tmp_path), "--no-plot"])


def test_stopped_runs_come_from_their_checkpoint_marked_unfinished(tmp_path, capsys) -> None:
    import torch

    _run(tmp_path, "full_s1", "full", [200.0], 190.0, 1000.0)
    curve = [{"step": 50, "val_subset_ppl": 900.0, "lr": 20.0},
             {"step": 100, "val_ppl": 230.0, "lr": 20.0},
             {"step": 150, "val_subset_ppl": 700.0, "lr": 20.0}]  # fmt: skip
    clock = {"seconds": 11.0, "tokens": 3000, "curve": curve, "first_step": (1.0, 1000)}
    for name, points in (("lever_s1", curve), ("early_s1", curve[:1])):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        torch.save({"global_step": 150, "recipe_args": {"head": "adaptive", "head_options": {}},
                    "callbacks": {"TrainClock": {**clock, "curve": points}}},
                   tmp_path / name / "checkpoints" / "last.ckpt")  # fmt: skip
    finished_only = parity_report.main([str(tmp_path), "--out", str(tmp_path / "a"), "--no-plot"])
    assert set(finished_only["summary"]) == {"full"}
    report = parity_report.main([str(tmp_path), "--out", str(tmp_path / "b"), "--no-plot",
                                 "--stopped"])  # fmt: skip
    assert set(report["summary"]) == {"full", "lever"}  # "early" has no epoch end yet
    lever = report["summary"]["lever"]
    assert (lever["finished"], lever["test_ppl"], lever["steps"]) == (False, None, [150])
    assert lever["val_ppl_by_epoch"][0]["mean"] == 230.0
    assert lever["tokens_per_s"]["mean"] == pytest.approx(200.0)
    assert "stopped at step 150" in capsys.readouterr().out


def test_a_continued_run_puts_each_validation_at_its_epoch(tmp_path, capsys) -> None:
    # full6_s1235 was continued from full_s1235's checkpoint after epoch 1: its curve starts at
    # epoch 2 (its committed points, results/parity.json). It was printed as its epoch 1.
    full6 = json.loads((REPO / "results" / "parity.json").read_text())["runs"]["full6"][0]
    curve = [p for p in full6["curve"] if "val_ppl" in p]
    assert [round(p["epoch"], 3) for p in curve] == [2.0, 3.0, 4.0, 5.024, 6.024]
    _run(tmp_path, "full_s1", "full", [260.0], 240.0, 1300.0)
    _run(tmp_path, "full6_s1235", "full", [1.0], 140.15, 1330.0)
    saved = json.loads((tmp_path / "full6_s1235" / "results.json").read_text())
    saved |= {"val_curve": curve, "args": {"seed": 1235, "max_epochs": 6}}
    (tmp_path / "full6_s1235" / "results.json").write_text(json.dumps(saved))
    report = parity_report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plot"])
    run = report["runs"]["full6"][0]
    assert run["epoch_val_ppl"] == [None] + [p["val_ppl"] for p in curve]
    assert run["finished"]
    row = report["summary"]["full6"]
    assert row["val_ppl_by_epoch"][0] is None and "epoch1_over_full" not in row
    assert row["val_ppl_by_epoch"][1]["mean"] == pytest.approx(198.17708255656126)
    out = capsys.readouterr().out
    assert "| full6 |" in out and "198.18; " not in out.split("| full6 |")[1].split("|")[3]


def test_a_smoke_run_is_short_not_finished(tmp_path, capsys) -> None:
    _run(tmp_path, "full_s1", "full", [260.0], 240.0, 1300.0)
    _run(tmp_path, "adaptive_s1", "adaptive", [1.0], 120.0, 5000.0)
    smoke = json.loads((tmp_path / "adaptive_s1" / "results.json").read_text())
    smoke |= {"global_step": 20, "args": {"seed": 1, "max_steps": 20, "max_epochs": 6},
              "val_curve": [{"step": 20, "epoch": 20 / 2983, "val_ppl": 120.0, "lr": 20.0,
                             "final": True}]}  # fmt: skip
    (tmp_path / "adaptive_s1" / "results.json").write_text(json.dumps(smoke))
    report = parity_report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--no-plot"])
    row = report["summary"]["adaptive"]
    assert row["finished"] is False and row["epochs"] == 0
    assert "epoch1_over_full" not in row and "speed_over_full" not in row  # no "0.462× full"
    assert "| adaptive | short: no epoch end (steps 20) |" in capsys.readouterr().out
