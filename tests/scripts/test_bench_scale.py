"""``scripts/bench_threads.py`` and ``scripts/bench_lm1b.py`` at tiny sizes: the settings they
compare, and one head trained end to end on a 1B-Word-shaped corpus with its floor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_thread_settings_are_what_the_table_says() -> None:
    bench = _load("bench_threads")
    assert bench.setting_env("1-thread", 4) == (["--threads", "1"], {})
    assert bench.setting_env("openmp-default", 4) == (["--threads", "4"], {"OMP_WAIT_POLICY": ""})
    assert bench.setting_env("2-threads-passive", 4)[1] == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert bench.setting_env("new-default", 4) == ([], {})  # recipes/threads.py decides
    with pytest.raises(ValueError, match="choose from"):
        bench.setting_env("many-threads", 4)
    assert bench.usable_cpus("0,2-3") == 3


@pytest.mark.slow
def test_lm1b_bench_trains_a_head_on_its_corpus_and_reports_the_floor(tmp_path: Path) -> None:
    bench = _load("bench_lm1b")
    out = tmp_path / "bench.json"
    argv = ["--tokens", "30_000", "--types", "800", "--max-time", "3", "--val-batches", "2",
            "--heads", "adaptive-auto", "--corpus-dir", str(tmp_path / "corpus"),
            "--work-dir", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    (row,) = bench.main(argv)
    assert "error" not in row, row
    report = json.loads(out.read_text())
    floor = report["meta"]["entropy_floor_ppl"]
    assert 1.0 < floor < row["val_ppl"]  # a model cannot beat the language's entropy rate
    assert row["steps"] >= 1 and row["tokens_per_s"] > 0 and row["peak_rss_mib"] > 0
    assert row["val_passes"] and row["val_passes_agree"], row["val_passes"]
    assert row["val_passes"][-1] == pytest.approx(row["val_ppl"])
    assert not (tmp_path / "runs" / "adaptive-auto" / "checkpoints").exists()


def test_lm1b_bench_reads_every_validation_pass_and_flags_a_disagreement(tmp_path: Path) -> None:
    # The recipe validates the same batches at the time stop and again at the end: one value
    # expected; a second, different value means state leaked from one evaluation to the next.
    bench = _load("bench_lm1b")
    log = tmp_path / "logs" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(
        "epoch,step,test_ppl,train_loss,train_ppl,val_ppl\n"
        "0,19,,7.79,2426.1,\n0,45,,,,1834.2\n1,46,,,,1834.2\n1,46,1895.8,,,\n"
    )
    older = tmp_path / "logs" / "version_10" / "metrics.csv"  # a later run, same folder
    older.parent.mkdir()
    older.write_text("epoch,step,test_ppl,val_ppl\n0,9,,1300.5\n")
    assert bench.validation_passes(tmp_path) == [1300.5]  # the newest run only (10 > 0)
    older.unlink()
    passes = bench.validation_passes(tmp_path)
    assert passes == [1834.2, 1834.2] and bench.agree(passes)
    assert not bench.agree([1245.0, 2983.0]) and bench.agree([])
