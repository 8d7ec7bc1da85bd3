"""Smoke tests of ``scripts/bench_heads.py``: ``--quick`` runs end to end and reports every head."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

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
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench_heads.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    return out, _run("--quick", "--ratio", "full/naive", "adaptive/torch_adaptive", out=out)


def test_quick_reports_every_head_and_baseline(quick: tuple[Path, dict]) -> None:
    out, report = quick
    table = (out / "bench_heads.md").read_text()
    bench = _load_script()
    for name in [*HEADS, *filter(bench.importable, bench.BASELINES)]:
        cases = [c for c in report["cases"] if c["spec"] == name]
        assert len(cases) == 2, f"{name!r} missing from the JSON results"
        assert f"`{name}`" in table, f"{name!r} missing from the markdown table"
    assert report["machine"]["cpu"] and report["machine"]["torch"]


def test_quick_measures_every_case(quick: tuple[Path, dict]) -> None:
    _, report = quick
    for case in report["cases"]:
        assert case["status"] == "ok", (case["spec"], case.get("reason"))
        phases = ("eval",) if case["spec"] == "matmul" else ("train", "eval")
        for phase in phases:
            entry = case[phase]
            assert entry["median_s"] > 0 and entry["extra_bytes"] >= 0
            assert len(entry["times_s"]) == report["config"]["rounds"]
        assert ("train" in case) == (case["spec"] != "matmul")
    ratios = {(r["a"], r["b"], r["vocab_size"], r["phase"]) for r in report["ratios"]}
    assert ("full", "naive", 2_000, "train") in ratios
    assert ("adaptive", "torch_adaptive", 300, "eval") in ratios
    full = next(r for r in report["ratios"] if r["a"] == "full" and r["phase"] == "train")
    assert full["time"] > 0


def test_subprocess_rounds_memory_and_naive_skip(tmp_path: Path) -> None:
    # Fresh subprocesses, two interleaved rounds; a memory cap below naive's n·V·12 bytes skips it.
    report = _run(
        # naive needs 256 * 50,000 * 12 bytes = 154 MB > the 120 MB cap; chunked full stays far
        # below it, with room for the allocator's own address-space reservations (64 MB arenas).
        *("--heads", "naive", "full:chunk_size=8", "--vocab-sizes", "50000", "--dim", "16"),
        *("--tokens", "256", "--rounds", "2", "--threads", "1", "--max-memory-gb", "0.12"),
        out=tmp_path / "run",
    )
    naive, full = report["cases"]
    assert naive["status"] == "skipped" and "needs ~" in naive["reason"]
    assert full["status"] == "ok", full.get("reason")
    assert len(full["rounds"]) == 2 and full["train"]["extra_bytes"] > 0
    assert full["memory"].startswith("VmHWM")


def test_a_case_over_the_memory_cap_fails_cleanly(tmp_path: Path) -> None:
    # 64 × 2,000,000 float32 logits = 512 MB > the 0.2 GB cap: the worker fails, the run goes on.
    report = _run(
        *("--heads", "matmul", "--vocab-sizes", "2000000", "--dim", "4", "--tokens", "64"),
        *("--rounds", "1", "--threads", "1", "--max-memory-gb", "0.2", "--phases", "eval"),
        out=tmp_path / "cap",
    )
    (case,) = report["cases"]
    assert case["status"] == "failed" and case["reason"]


def test_spec_parsing() -> None:
    bench = _load_script()
    assert bench.parse_spec("full") == ("full", {})
    assert bench.parse_spec("full:chunk_size=4096") == ("full", {"chunk_size": 4096})
    assert bench.parse_spec("adaptive:cutoffs=[20000,60000],div_value=4.0") == (
        "adaptive",
        {"cutoffs": [20000, 60000], "div_value": 4.0},
    )
    assert bench.parse_spec("adaptive:cutoffs=auto") == ("adaptive", {"cutoffs": "auto"})
    assert bench.parse_spec("torch_lce:batch_chunk_size=512") == (
        "torch_lce",
        {"batch_chunk_size": 512},
    )
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_spec("full:4096")
    with pytest.raises(ValueError, match="unknown head or baseline 'fool'"):
        bench.parse_spec("fool:chunk_size=4")


def test_default_specs_come_from_the_registry() -> None:
    # Adding a head must touch only the registry and the conformance cases.
    bench = _load_script()
    assert bench.default_specs() == [*filter(bench.importable, bench.BASELINES), *HEADS]
    # Other packages' kernels are in the default run only where they import.
    assert set(bench.BASELINES) - set(bench.default_specs()) == {
        name for name, module in bench.EXTERNAL.items() if importlib.util.find_spec(module) is None
    }


def test_external_baselines_get_the_autocast_dtype_by_hand() -> None:
    bench = _load_script()
    h, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    assert all(x.dtype == torch.float32 for x in bench.autocast_inputs(h, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = bench.autocast_inputs(h, w, None)
    assert [x.dtype for x in cast[:2]] == [torch.bfloat16] * 2 and cast[2] is None
