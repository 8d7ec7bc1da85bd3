"""Smoke tests of ``scripts/bench_heads.py``: ``--quick`` runs end to end and reports every head."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lm_heads import HEADS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_heads.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_heads", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench_heads.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    return out, _run("--quick", out=out)


def test_quick_writes_json_table_and_plot(quick: tuple[Path, dict]) -> None:
    out, report = quick
    assert (out / "bench_heads.png").stat().st_size > 0
    table = (out / "bench_heads.md").read_text()
    labels = {r["label"] for r in report["results"]}
    assert {"naive", "matmul"} <= labels
    for name in HEADS:
        # --quick may add set-up options to a head's label ("prototypes:proto_steps=5").
        mine = [label for label in labels if label == name or label.startswith(name + ":")]
        assert mine, f"head {name!r} missing from the JSON results"
        assert f"`{mine[0]}`" in table, f"head {name!r} missing from the markdown table"
        assert mine[0] in report["plot_labels"], f"head {name!r} missing from the plot"
    machine = report["machine"]
    assert machine["cpu_model"] and machine["torch_version"] and machine["torch_threads"] >= 1


def test_quick_measures_every_case(quick: tuple[Path, dict]) -> None:
    _, report = quick
    for r in report["results"]:
        if r["kind"] == "torch_adaptive" and r["status"] == "skipped":
            assert "cutoff" in r["reason"]  # "auto" may choose a plain softmax at tiny V
            continue
        assert r["status"] == "ok", (r["label"], r.get("reason"))
        phases = ("eval",) if r["kind"] == "matmul" else ("train", "eval")
        for phase in phases:
            entry = r[phase]
            assert entry["status"] == "ok", (r["label"], phase, entry.get("reason"))
            assert entry["median_s"] > 0 and entry["tokens_per_s"] > 0
            # RSS counters are per-thread caches: peak and baseline may differ by a few pages.
            assert entry["peak_bytes"] > 0 and entry["baseline_bytes"] > 0
            assert entry["extra_bytes"] >= 0
        assert r["ratios"]["train"]["time_vs_naive"] is not None or r["kind"] == "matmul"
    naive = [r for r in report["results"] if r["label"] == "naive"]
    assert all(r["ratios"]["train"]["time_vs_naive"] == pytest.approx(1.0) for r in naive)
    assert all(t["verdict"] in ("PASS", "FAIL", "n/a") for t in report["targets"])


def test_subprocess_mode_and_memory_skip(tmp_path: Path) -> None:
    # Baselines only, in fresh subprocesses; a tiny memory cap turns every case into a skip.
    report = _run(
        "--quick", "--subprocess", "--heads", "--vocab-sizes", "500", out=tmp_path / "run"
    )
    (naive,) = (r for r in report["results"] if r["label"] == "naive")
    assert naive["status"] == "ok" and naive["train"]["extra_bytes"] > 0
    assert naive["memory_method"].startswith(("VmHWM", "ru_maxrss"))
    skipped = _run("--quick", "--heads", "--max-memory-gb", "0.001", out=tmp_path / "skip")
    assert all(r["status"] == "skipped" for r in skipped["results"])
    assert all("needs ~" in r["reason"] for r in skipped["results"])


def test_spec_parsing() -> None:
    bench = _load_script()
    assert bench.parse_spec("full") == ("full", {})
    assert bench.parse_spec("full:chunk_size=4096") == ("full", {"chunk_size": 4096})
    assert bench.parse_spec("adaptive:cutoffs=[20000,60000],div_value=4.0") == (
        "adaptive",
        {"cutoffs": [20000, 60000], "div_value": 4.0},
    )
    assert bench.parse_spec("adaptive:cutoffs=auto") == ("adaptive", {"cutoffs": "auto"})
    assert bench.parse_spec("spherical:gram=False") == ("spherical", {"gram": False})
    assert bench.spec_label("adaptive", {"cutoffs": [20000, 60000]}) == (
        "adaptive:cutoffs=[20000,60000]"
    )
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_spec("full:4096")


def test_memory_estimate_skips_naive_at_one_billion_words() -> None:
    bench = _load_script()
    case = {"label": "naive", "kind": "naive", "role": "baseline", "vocab_size": 793_471}
    # The figure: 3 · n · V · 4 B ≈ 39 GB for n = 4096.
    assert bench.estimate_bytes(case, 4096, 512)["train"] > 39e9
