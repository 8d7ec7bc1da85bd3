"""``scripts/bench_gpu.py`` in its reduced (CPU) mode: the GPU run's script end to end, so that
it cannot rot between the rare occasions a CUDA machine runs it in full."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_gpu.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reduced mode is the CPU's")
def test_reduced_mode_runs_tests_and_times_heads(tmp_path: Path) -> None:
    proc = subprocess.run(
        # No time budget here: on a loaded machine every case must still run.
        [sys.executable, str(SCRIPT), "--output-dir", str(tmp_path), "--budget-s", "600"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    table = (tmp_path / "bench_gpu.md").read_text()
    assert report["config"]["reduced"] and report["device"]["type"] == "cpu"
    tests = report["tests"]
    assert tests["status"] == "passed" and tests["device_under_test"] == "cpu"
    assert " passed" in tests["summary"] and "failed" not in tests["summary"]
    assert report["peaks"]["fp32"] > 0 and report["peaks"]["bf16"] > 0
    bench = _load()
    rows = report["timings"]
    specs = bench.specs_for(report["config"])
    for precision in ("fp32", "bf16"):
        for vocab in report["config"]["vocab_sizes"]:
            found = [r for r in rows if r["precision"] == precision and r["vocab_size"] == vocab]
            assert [r["spec"] for r in found] == specs
            for r in found:
                if r["spec"] in ("cce", "liger"):  # Triton kernels: CUDA only
                    assert r["status"] == "skipped" and "not importable" in r["reason"]
                    continue
                assert r["status"] == "ok", (r["spec"], r.get("reason"))
                assert r["ms"] > 0 and r["extra_bytes"] >= 0 and r["syncs_per_step"] is None
                assert ("fraction_of_bound" in r) == (r["spec"].split(":")[0] in bench.BOUND_NAMES)
    assert "synchronisations are not counted" in table and "## bf16, V = 2,000" in table


def test_dense_cases_that_cannot_fit_are_skipped_before_they_run() -> None:
    bench = _load()
    cfg = {"tokens": 8192}
    assert bench.dense_bytes("naive", 793_471, cfg) == 12 * 8192 * 793_471
    assert bench.dense_bytes("full", 1000, cfg) == bench.dense_bytes("cosine", 1000, cfg) > 0
    assert bench.dense_bytes("full:chunk_size=auto", 793_471, cfg) == 0
    assert bench.dense_bytes("torch_lce:batch_chunk_size=1024", 10, cfg) == 12 * 1024 * 10
    assert bench.dense_bytes("torch_lce", 10, cfg) == 0  # default options: small chunks


def test_full_size_plan() -> None:
    bench = _load()
    args = bench.parse_args(["--device", "cuda"])  # parsing only: nothing touches the device
    assert args.vocab_sizes == [33_278, 267_735, 793_471]
    assert (args.tokens, args.dim, args.reduced) == (8_192, 512, False)
    cfg = vars(args)
    specs = bench.specs_for(cfg)
    from lm_heads import HEADS

    assert set(HEADS) <= set(specs)
    assert {"naive", "full:chunk_size=auto", "torch_lce", "cce", "liger"} <= set(specs)
    assert "torch_lce:batch_chunk_size=8192" in specs  # one chunk of all n rows
