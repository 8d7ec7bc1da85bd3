"""``scripts/results.py``: aggregation and reports (in-process), and ``--quick`` end to end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "results.py"


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


def _run(head: str, budget: str, seed: int, val: float, tok_s: float, **extra) -> dict:
    curve = [
        {"step": 10, "train_seconds": 1.0, "tokens": 100, "val_ppl": val * 2},
        {"step": 20, "train_seconds": 2.0, "tokens": 200, "val_ppl": val, "final": True},
    ]
    sim = {"measured": True, "spearman": 0.1 * seed, "covered": 900, "total": 999}
    result = {
        "val_ppl": val, "test_ppl": val * 1.1, "train_tokens_per_s": tok_s, "global_step": 20,
        "peak_memory_mib": 500.0, "train_step_seconds": 2.0, "vocab_size": 1000,
        "val_curve": curve, "entropy_floor_ppl": extra.pop("floor", None),
        "similarity": {"input": sim, "output": {"measured": False, "reason": "no rows"}},
    }  # fmt: skip
    result.update(extra)
    return {"suite": "s", "budget": budget, "head": head, "seed": seed, "result": result}


def test_mean_spread_first_reach_and_pareto_front(results) -> None:
    stat = results.mean_spread([1.0, 3.0, None, float("nan")])
    assert stat == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0)), "n": 2}
    assert results.mean_spread([5.0])["std"] is None
    assert results.mean_spread([None])["mean"] is None

    curve = [{"train_seconds": 1.0, "val_ppl": 50.0}, {"train_seconds": 3.0, "val_ppl": 20.0}]
    assert results.first_reach(curve, 30.0) == 3.0
    assert results.first_reach(curve, 50.0) == 1.0  # reached means <= target
    assert results.first_reach(curve, 10.0) is None

    points = [(100.0, 50.0), (200.0, 60.0), (50.0, 70.0), (300.0, 60.0)]
    assert sorted(results.pareto_front(points)) == [(100.0, 50.0), (300.0, 60.0)]


def test_aggregate_seeds_targets_failures_and_checks(results) -> None:
    runs = [
        _run("full", "steps", 1, 100.0, 1000.0),
        _run("full", "steps", 2, 110.0, 1200.0),
        _run("adaptive", "steps", 1, 104.0, 3000.0),
        _run("adaptive", "steps", 2, 1.0, 1.0),
        _run("nce", "steps", 1, 150.0, 2000.0),
        _run("full", "time", 1, 90.0, 1000.0),
        _run("adaptive", "time", 1, 80.0, 3000.0),
    ]
    runs[3]["result"] = {"error": "exit status 1", "log_tail": ["boom"]}
    rows, targets = results.aggregate(runs)
    # Default target: 1.25 × the full head's mean validation perplexity under equal steps.
    assert targets == {"s": pytest.approx(1.25 * 105.0)}
    full = results._row(rows, "s", "steps", "full")
    assert full["val_ppl"]["mean"] == pytest.approx(105.0)
    assert full["val_ppl"]["std"] == pytest.approx(math.sqrt(50.0))
    assert full["seeds"] == [1, 2] and full["failed"] == 0
    assert full["simlex_input"]["mean"] == pytest.approx(0.15)
    assert full["coverage_input"]["mean"] == pytest.approx(0.9009, abs=1e-4)
    assert full["simlex_output"]["mean"] is None  # not measured is not a zero
    # Curves: 2× val at 1 s, val at 2 s; the target 131.25 is first reached at 2 s.
    assert full["time_to_target_s"]["mean"] == pytest.approx(2.0)
    adaptive = results._row(rows, "s", "steps", "adaptive")
    assert adaptive["failed"] == 1 and adaptive["errors"] == ["exit status 1"]
    assert adaptive["val_ppl"] == {"mean": 104.0, "std": None, "n": 1}
    nce = results._row(rows, "s", "steps", "nce")
    assert nce["reached_target"] == 0 and nce["time_to_target_s"]["mean"] is None

    checks = {c["claim"].split(" (")[0]: c["holds"] for c in results.literature_checks(rows, "s")}
    assert checks["adaptive reaches about full's perplexity"] is True  # 104 vs 105
    assert checks["adaptive trains at a fraction of full's cost"] is True  # 3000 vs 1100
    assert checks["for the same training time, adaptive beats full"] is True  # 80 < 90
    assert checks["the sampled head nce trails the full softmax at equal steps"] is True
    assert not any("spherical" in c for c in checks)  # not run: not claimed either way

    _, fixed = results.aggregate(runs, target_ppl=42.0)
    assert fixed == {"s": 42.0}


def test_entropy_floor_ratio_is_per_run(results) -> None:
    # Each seed draws its own synthetic language, so test/floor is taken per run, then averaged.
    runs = [
        _run("full", "steps", 1, 100.0, 1.0, floor=10.0),
        _run("full", "steps", 2, 100.0, 1.0, floor=20.0),
    ]
    (row,), _ = results.aggregate(runs)
    assert row["entropy_floor_ppl"] == pytest.approx(15.0)
    assert row["test_over_floor"]["mean"] == pytest.approx((11.0 + 5.5) / 2)


def test_results_md_section_is_replaced(results, tmp_path) -> None:
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\nintro\n{results.MARK_BEGIN}\nold\n{results.MARK_END}\noutro\n")
    results.write_results_md(doc, "new table")
    assert doc.read_text() == (
        f"# R\nintro\n{results.MARK_BEGIN}\nnew table\n{results.MARK_END}\noutro\n"
    )
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- results:begin -->"):
        results.write_results_md(tmp_path / "bare.md", "x")


def test_bad_arguments_are_refused(results, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        results.parse_args(["--heads", "full", "nonexistent"])
    assert "unknown head(s) ['nonexistent']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results.parse_args(["--suites", "wikitext-2", "--data", str(tmp_path)])
    assert "no train.txt" in capsys.readouterr().err


def test_recipe_time_budget_and_validation_curve(tmp_path, monkeypatch) -> None:
    """The recipe options the table needs: --max-time, the val curve, --target-ppl."""
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


def test_quick_sweep_end_to_end(results, tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    report = json.loads((out / "results.json").read_text())
    assert report["command"] == f"python scripts/results.py --quick --output-dir {out}"
    assert report["machine"]["cpu_count"] >= 1
    runs = report["runs"]
    assert {(r["budget"], r["head"]) for r in runs} == {
        (b, h) for b in ("steps", "time") for h in ("full", "adaptive")
    }
    for r in runs:
        res = r["result"]
        assert "error" not in res, res
        assert 1.0 < res["entropy_floor_ppl"] < res["val_ppl"] and math.isfinite(res["test_ppl"])
        assert res["train_tokens_per_s"] > 0 and res["peak_memory_mib"] > 0
        assert res["similarity"]["input"]["measured"] is True
        assert res["val_curve"][-1]["final"] is True
        if r["budget"] == "steps":
            assert res["global_step"] == 12 and res["stopped_by_time"] is False
        else:
            assert res["stopped_by_time"] is True
    assert len(report["rows"]) == 4
    assert all(row["test_over_floor"]["mean"] > 1.0 for row in report["rows"])

    table = (out / "results.md").read_text()
    assert "| head | budget | steps |" in table and "test / floor" in table
    assert "| `adaptive` | time |" in table and "Exact entropy floor" in table
    for name in ("curves_synthetic.png", "pareto_synthetic.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "runs" / "synthetic" / "steps" / "full" / "seed1" / "checkpoints").exists()
    assert not (tmp_path / "lightning_logs").exists()

    # Run again: every finished run with the same recipe command is reused, none retrained.
    again = results.main(["--quick", "--output-dir", str(out)])
    assert all(r["result"].get("reused") for r in again["runs"])
    assert [r["val_ppl"] for r in again["rows"]] == [r["val_ppl"] for r in report["rows"]]
