"""scripts/study.py (the lanes' runner) and scripts/study_report.py (the one table), on synthetic
per-run files and on a 3-step run of the real recipe."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


study = _load("study")
study_report = _load("study_report")
PLAN_ARGS = {**study_report.PLAN, "lr": 20.0}


def _write_run(
    root: Path,
    name: str,
    head: str,
    vals: list[float],
    test: float,
    speed: float,
    seconds_per_epoch: float,
    **changes,
) -> None:
    curve = [
        {
            "step": 100 * e,
            "val_ppl": v,
            "epoch_end": e,
            "train_seconds": seconds_per_epoch * e,
            "tokens": 70_000 * e,
            "lr": 20.0,
        }
        for e, v in enumerate(vals, 1)
    ]
    results = {
        "head": head,
        "head_options": {},
        "val_ppl": vals[-1],
        "test_ppl": test,
        "train_tokens_per_s": speed,
        "val_curve": curve,
        "args": dict(PLAN_ARGS),
        "git": {"commit": "abc123", "dirty": False},
        "similarity": {
            side: {"measured": True, "spearman": 0.1, "covered": 990, "total": 999}
            for side in ("input", "output")
        },
    }
    for key, value in changes.items():
        results[key] = value
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(results))
    (root / name / "run.json").write_text(json.dumps({"attempts": [{"lane": 0}]}))


FULL = {
    1234: [260, 200, 180, 170, 150, 145],
    1235: [262, 202, 181, 172, 152, 148],
    1236: [258, 199, 179, 171, 149, 142],
}


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, vals in FULL.items():
        _write_run(root, f"full_chunked_s{seed}", "full", vals, vals[-1] - 8, 1350.0, 1550.0)
    _write_run(
        root,
        "adaptive_default_s1234",
        "adaptive",
        [250, 196, 178, 168, 151, 146],
        139.0,
        5000.0,
        420.0,
    )
    _write_run(
        root,
        "adaptive_default_s1235",
        "adaptive",
        [248, 197, 177, 169, 150, 147],
        140.0,
        4800.0,
        430.0,
    )
    # Unfinished: stopped after epoch 3 (no results.json yet, only the lane's folder).
    (root / "adaptive_default_s1236").mkdir()
    # Short: trained 20 steps, its only validation mid-epoch.
    _write_run(
        root,
        "class_default_s1234",
        "class",
        [300.0],
        290.0,
        3000.0,
        100.0,
        val_curve=[{"step": 20, "val_ppl": 900.0, "train_seconds": 5.0, "final": True}],
    )
    _write_run(
        root,
        "cosine_default_s1234",
        "cosine",
        [270, 210, 190, 180, 160, 155],
        150.0,
        1300.0,
        1600.0,
    )
    _write_run(
        root,
        "nce_default_s1234",
        "nce",
        [270, 210, 190, 180, 160, 155],
        150.0,
        1300.0,
        1600.0,
        git={"commit": "abc123", "dirty": True},
    )
    return root


def _report(runs: Path, tmp_path: Path) -> dict:
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(
        f"# R\n\nbefore\n\n{study_report.START}\nold\n{study_report.END}\n\nafter\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# lm\n\n{study_report.SUMMARY_START}\nold\n{study_report.SUMMARY_END}\n")
    return study_report.main(
        [
            "--runs",
            str(runs),
            "--out",
            str(tmp_path / "out"),
            "--results-md",
            str(results_md),
            "--no-plot",
        ]
    )


def test_table_ratios_and_marks_from_the_per_run_files(runs, tmp_path) -> None:
    report = _report(runs, tmp_path)
    rows = report["summary"]["variants"]
    assert rows["full_chunked"]["runs"] == 3 and rows["adaptive_default"]["runs"] == 2
    assert rows["adaptive_default"]["val_by_epoch"][0] == pytest.approx(249.0)
    assert rows["adaptive_default"]["test_mean"] == pytest.approx(139.5)
    assert rows["adaptive_default"]["speed_over_full"] == pytest.approx(4900 / 1350)
    iv = rows["adaptive_default"]["vs_full"]
    assert iv["ratio"] == pytest.approx(146.5 / 145.0)
    assert iv["lo"] < 1 < iv["hi"] and iv["wording"].startswith("level within ±")
    # Unfinished, short and dirty runs are marked and enter nothing.
    left = rows["adaptive_default"]["left_out"]
    assert left == {"adaptive_default_s1236": ["unfinished: no results.json"]}
    assert rows["class_default"]["runs"] == 0
    assert (
        "no validation at the end of epoch(s) [1, 2, 3, 4, 5, 6]"
        in (rows["class_default"]["left_out"]["class_default_s1234"][0])
    )
    assert (
        rows["nce_default"]["runs"] == 0
        and "not from a clean commit" in (rows["nce_default"]["left_out"]["nce_default_s1234"][0])
    )
    # One seed: full's relative spread stands in for its own, marked.
    assert rows["cosine_default"]["vs_full"]["assumed_spread"]
    assert rows["cosine_default"]["vs_full"]["df"] == 2.0
    # Equal time: adaptive reaches full's epoch-1 validation (260) inside its first epoch.
    assert rows["adaptive_default"]["seconds_to_full_epoch1"] == pytest.approx(425.0)
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.startswith("# R\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old" not in text and "| `hierarchical_kary` | 0 of 2 | not yet run |" in text
    assert "Left out of every mean" in text and "`adaptive_default_s1236`" in text
    # adaptive; then huffman, importance, spherical, taylor, class (no run), nce (dirty only)
    verdicts = [v["verdict"] for v in report["summary"]["verdicts"]]
    assert verdicts == ["not reproduced (provisional)"] + ["not yet run"] * 6
    grave = report["summary"]["verdicts"][0]  # hi above 1.05 with these two seeds of three
    assert "hi ≤ 1.05" in grave["numbers"]
    assert "provisional: adaptive_default 2 of 3 seeds" in grave["numbers"]
    assert "full_chunked" not in grave["numbers"].split("provisional")[1]  # full has all 3
    # Again: the markers stay, the table is replaced, not appended.
    _report(runs, tmp_path)
    assert (tmp_path / "RESULTS.md").read_text().count(study_report.START) == 1


def test_the_readme_summary_ranks_heads_by_their_ratio_to_full(runs, tmp_path) -> None:
    report = _report(runs, tmp_path)
    rows = report["summary"]["variants"]
    text = (tmp_path / "README.md").read_text()
    block = text.split(study_report.SUMMARY_START)[1].split(study_report.SUMMARY_END)[0]
    assert "old" not in block and text.count(study_report.SUMMARY_START) == 1
    table = [line for line in block.splitlines() if line.startswith("| `")]
    ranked = sorted((v for v, r in rows.items() if "vs_full" in r),
                    key=lambda v: rows[v]["vs_full"]["ratio"])  # fmt: skip
    assert [line.split("`")[1] for line in table] == ranked
    assert len(ranked) == 3  # full, adaptive and cosine have finished runs
    cosine = next(line for line in table if "`cosine_default`" in line)
    assert "(spread assumed: 1 seed)" in cosine and cosine.endswith("(runs) |")
    assert "Not yet run to the end: " in block and "`class_default`" in block
    assert "**not reproduced (provisional)**" in block
    # Without a README beside RESULTS.md (and no --readme), the report writes RESULTS.md only.
    (tmp_path / "README.md").unlink()
    again = study_report.main(
        ["--runs", str(runs), "--out", str(tmp_path / "out"), "--no-plot",
         "--results-md", str(tmp_path / "RESULTS.md")]
    )  # fmt: skip
    assert again["summary"] == report["summary"]
    assert not (tmp_path / "README.md").exists()


def test_throughput_ratios_come_from_the_measurement_when_there_is_one(runs, tmp_path) -> None:
    # Two rounds, the second with everything slower (a busier machine): each ratio is taken
    # within its round, so the slowdown cancels.
    rounds = [
        [{"run": "full_chunked_s1234", "tokens_per_s": 1200.0},
         {"run": "adaptive_default_s1234", "tokens_per_s": 4800.0}],
        [{"run": "adaptive_default_s1234", "tokens_per_s": 4200.0},
         {"run": "full_chunked_s1234", "tokens_per_s": 1000.0}],
        [{"run": "adaptive_default_s1234", "tokens_per_s": 9999.0}],  # no full: no ratio
    ]  # fmt: skip
    measured = {"git": {"commit": "f" * 40, "dirty": False}, "steps": 100, "rounds": rounds}
    (runs.parent / "throughput.json").write_text(json.dumps(measured))
    report = _report(runs, tmp_path)
    adaptive = report["summary"]["variants"]["adaptive_default"]
    assert adaptive["speed_over_full"] == pytest.approx((4.0 + 4.2) / 2)
    assert adaptive["speed_over_full_runs"] == pytest.approx(4900 / 1350)
    assert report["summary"]["throughput"]["adaptive_default"]["rounds"] == 2
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 4.10 |" in text and "(runs)" in text  # cosine was not measured: its runs' ratio
    assert "measured by `python scripts/study.py --throughput` at fffffff" in text


def test_throughput_measures_each_run_in_alternating_rounds(tmp_path) -> None:
    tiny = (
        "--data synthetic --synthetic-vocab-size 60 --synthetic-tokens 4000 --batch-size 4 "
        f"--bptt 8 --embed-dim 16 --d-model 16 --cache-dir {tmp_path / 'c'}"
    )
    results = tmp_path / "study" / "runs"
    argv = [sys.executable, str(REPO / "scripts" / "study.py"), "--throughput", "--steps", "3",
            "--queue", "full_chunked_s1234", "adaptive_default_s1234", "--no-taskset",
            "--allow-dirty", "--results", str(results), "--extra", tiny]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    measured = json.loads((tmp_path / "study" / "throughput.json").read_text())
    order = [[m["run"] for m in round_] for round_ in measured["rounds"]]
    assert order == [["full_chunked_s1234", "adaptive_default_s1234"],
                     ["adaptive_default_s1234", "full_chunked_s1234"]]  # fmt: skip
    assert all(m["tokens_per_s"] > 0 for round_ in measured["rounds"] for m in round_)
    assert measured["steps"] == 3 and set(measured["git"]) >= {"commit", "dirty"}


def test_the_equal_time_view_reads_one_clock_the_measured_tokens_per_s(runs, tmp_path) -> None:
    # cosine trained on lane `both` (2 threads) and adaptive on a faster machine: their own
    # clocks are not comparable. With a measurement, every run's seconds are its tokens ÷ its
    # variant's measured one-core tokens/s.
    text = lambda: (tmp_path / "RESULTS.md").read_text()  # noqa: E731
    unmeasured = _report(runs, tmp_path)["summary"]["variants"]
    assert unmeasured["cosine_default"]["seconds_by_epoch"][0] == pytest.approx(1600.0)
    assert unmeasured["cosine_default"]["clock"] == "own" and "(own clock)" in text()
    rounds = [[{"run": "full_chunked_s1234", "tokens_per_s": 1000.0},
               {"run": "cosine_default_s1234", "tokens_per_s": 500.0},
               {"run": "adaptive_default_s1234", "tokens_per_s": 3500.0}]]  # fmt: skip
    measured = {"git": {"commit": "f" * 40, "dirty": False}, "steps": 100, "rounds": rounds}
    (runs.parent / "throughput.json").write_text(json.dumps(measured))
    report = _report(runs, tmp_path)
    rows = report["summary"]["variants"]
    for variant, tokens_per_s in [("full_chunked", 1000), ("cosine_default", 500),
                                  ("adaptive_default", 3500)]:  # fmt: skip
        assert rows[variant]["clock"] == "measured"
        assert rows[variant]["seconds_by_epoch"] == pytest.approx(
            [70_000 * e / tokens_per_s for e in range(1, 7)]
        )
    (cosine,) = report["runs"]["cosine_default"]
    assert cosine["own_seconds_by_epoch"][0] == pytest.approx(1600.0)
    # adaptive is below full's epoch-1 validation (260) at its first epoch end: 70,000 / 3,500.
    assert rows["adaptive_default"]["seconds_to_full_epoch1"] == pytest.approx(20.0)
    assert "(own clock)" not in text()


def test_lane_both_pins_both_cores_and_shares_no_runs(tmp_path, monkeypatch) -> None:
    both = study.command("cosine_default_s1234", tmp_path, study.CONFIG, [], "both")
    assert both[:3] == ["taskset", "-c", "0,1"] and both[both.index("--threads") + 1] == "2"
    one = study.command("taylor_default_s1234", tmp_path, study.CONFIG, [], "0")
    assert one[:3] == ["taskset", "-c", "0"] and one[one.index("--threads") + 1] == "1"
    unpinned = study.command("taylor_default_s1234", tmp_path, study.CONFIG, [], None)
    assert unpinned[0] == "python" and unpinned[unpinned.index("--threads") + 1] == "1"
    visited: dict[str, list[str]] = {}
    for lane in study.QUEUES:
        args = study.parse(["--lane", lane, "--work", str(tmp_path / lane), "--results",
                            str(tmp_path / "results")])  # fmt: skip
        visited[lane] = []
        monkeypatch.setattr(study, "run_one", lambda name, _, v=visited[lane]: v.append(name) or 0)
        assert study.run_lane(args) == 0
    margin = set(study.QUEUES["both"])
    assert visited["both"] == list(study.QUEUES["both"])
    assert visited["0"][: len(study.QUEUES["0"])] == list(study.QUEUES["0"])
    assert set(visited["0"]) == set(visited["1"]) == set(study.all_runs()) - margin
    with pytest.raises(SystemExit, match="one core"):
        study.main(["--throughput", "--lane", "both"])


def test_ratio_interval_by_hand() -> None:
    x, y = [146.0, 147.0], [145.0, 148.0, 142.0]
    iv = study_report.ratio_interval(x, y)
    mx, my = sum(x) / 2, sum(y) / 3
    vx = 0.5 / (2 * mx**2)
    vy = 9.0 / (3 * my**2)
    df = (vx + vy) ** 2 / (vx**2 / 1 + vy**2 / 2)
    scipy_stats = pytest.importorskip("scipy.stats")
    t = scipy_stats.t.ppf(0.975, df)
    assert iv["df"] == pytest.approx(df)
    assert iv["lo"] == pytest.approx(mx / my * math.exp(-t * math.sqrt(vx + vy)), rel=1e-9)
    assert iv["hi"] == pytest.approx(mx / my * math.exp(t * math.sqrt(vx + vy)), rel=1e-9)


@pytest.mark.parametrize("df", [1.0, 2.0, 2.7, 5.0, 30.0])
def test_t_quantile_matches_scipy(df) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    assert study_report.t_quantile(0.975, df) == pytest.approx(
        scipy_stats.t.ppf(0.975, df), rel=1e-7
    )


def test_wording_never_says_beats_for_an_interval_containing_one() -> None:
    assert study_report.wording({"lo": 0.92, "hi": 1.03}) == "level within ±8%"
    assert study_report.wording({"lo": 1.02, "hi": 1.10}) == "behind full by 2–10%"
    assert study_report.wording({"lo": 0.90, "hi": 0.99}) == "ahead of full by 1–10%"


def test_queues_hold_every_planned_run_once() -> None:
    queued = [name for queue in study.QUEUES.values() for name in queue]
    assert sorted(queued) == sorted(study.all_runs()) and len(queued) == len(set(queued)) == 26


def test_runner_trains_copies_and_skips_finished_runs(tmp_path) -> None:
    work, results = tmp_path / "work", tmp_path / "results"
    tiny = (
        "--data synthetic --synthetic-vocab-size 60 --synthetic-tokens 4000 --batch-size 4 "
        f"--bptt 8 --embed-dim 16 --d-model 16 --max-steps 3 --cache-dir {tmp_path / 'c'}"
    )
    argv = [
        sys.executable,
        str(REPO / "scripts" / "study.py"),
        "--lane",
        "1",
        "--queue",
        "adaptive_default_s1235",
        "--no-taskset",
        "--allow-dirty",
        "--work",
        str(work),
        "--results",
        str(results),
        "--extra",
        tiny,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    kept = results / "adaptive_default_s1235"
    assert sorted(p.name for p in kept.iterdir()) == [
        "command.txt",
        "metrics.csv",
        "results.json",
        "run.json",
    ]
    res = json.loads((kept / "results.json").read_text())
    assert res["global_step"] == 3 and res["args"]["seed"] == 1235 and res["head"] == "adaptive"
    assert set(res["git"]) >= {"commit", "dirty"}
    command = (kept / "command.txt").read_text()
    assert command.startswith("python recipes/lm.py --config recipes/configs/study_wikitext2.yaml")
    assert (work / "claims" / "adaptive_default_s1235.lane").read_text() == "1\n"
    # Its last.ckpt would be resumed; being finished, it is skipped: nothing runs again.
    assert "--resume" in study.command("adaptive_default_s1235", work, study.CONFIG, [], "1")
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "adaptive_default_s1235" not in again.stdout
    # A run another lane claimed is left to it.
    assert not study._claim(work / "claims", "adaptive_default_s1235", 0)


def test_git_state_is_dirty_only_when_the_code_differs(tmp_path) -> None:
    from recipes.provenance import git_state

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "lm.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "new.json").write_text("{}")  # results beside a study: not code
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "recipes" / "lm.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
    assert git_state(tmp_path / "missing")["commit"] is None


def test_the_figure_is_drawn(runs, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text(f"{study_report.START}\n{study_report.END}\n")
    study_report.main(["--runs", str(runs), "--out", str(tmp_path / "out"),
                       "--results-md", str(results_md)])  # fmt: skip
    assert (tmp_path / "out" / "validation_time.png").stat().st_size > 10_000


def test_the_committed_table_comes_from_the_committed_per_run_files() -> None:
    """RESULTS.md's study table is what study_report.py makes of results/study/runs/ as git has
    it: no hand edits, and no per-run file left out of git (an ignore rule once hid them all)."""
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "results/study/runs"],
                             capture_output=True, text=True)  # fmt: skip
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    runs = REPO / "results" / "study" / "runs"
    on_disk = {p.relative_to(REPO).as_posix() for p in runs.glob("*/*") if p.is_file()}
    assert on_disk <= set(tracked.stdout.split()), "per-run files git does not track"
    text = (REPO / "RESULTS.md").read_text()
    committed = text.split(study_report.START, 1)[1].split(study_report.END, 1)[0].strip()
    throughput = study_report.load_throughput(runs.parent / "throughput.json")
    summary = study_report.summarize(study_report.load(runs), throughput)
    assert committed == study_report.markdown(summary)
    readme = (REPO / "README.md").read_text()
    short = readme.split(study_report.SUMMARY_START, 1)[1].split(study_report.SUMMARY_END, 1)[0]
    assert short.strip() == study_report.readme_summary(summary)


def _tiny(tmp_path: Path) -> str:
    return (
        "--data synthetic --synthetic-vocab-size 60 --synthetic-tokens 2000 --batch-size 4 "
        f"--bptt 8 --embed-dim 16 --d-model 16 --max-epochs 2 --cache-dir {tmp_path / 'c'}"
    )


def _lane(tmp_path: Path, *more: str):
    argv = ["--lane", "0", "--queue", "taylor_default_s1234", "--no-taskset", "--allow-dirty",
            "--work", str(tmp_path / "work"), "--results", str(tmp_path / "study" / "runs"),
            "--extra", _tiny(tmp_path), "--poll", "0.2", *more]  # fmt: skip
    return study.parse(argv)


def test_a_diverged_run_stops_after_epoch_1_and_its_head_waits_for_its_sweep(
    tmp_path, monkeypatch, capsys
) -> None:
    """PLAN.md: a head whose epoch-1 validation is worse than uniform gets its lr from a sweep;
    the runner stops the run there instead of training it to the end (here every perplexity
    counts as diverged), and starts the head's runs again only at the sweep's choice."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setattr(study, "DIVERGED_ABOVE", 1.0)
    assert study.run_lane(_lane(tmp_path)) == 0  # the lane goes on after a divergence
    out = tmp_path / "work" / "taylor_default_s1234"
    stopped = json.loads((out / "diverged.json").read_text())
    # Stopped by SIGTERM after the check (143), or ended first on so small a corpus (0).
    assert stopped["exit_status"] in (0, 143) and stopped["epoch1_val_ppl"] > 1.0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "study" / "runs" / "taylor_default_s1234").exists()
    assert "diverged (epoch-1 validation" in capsys.readouterr().out
    # Started again: it waits, and nothing trains.
    assert study.run_lane(_lane(tmp_path)) == 0
    assert "waits for its sweep's lr" in capsys.readouterr().out
    # The sweep: 1 epoch at each lr; with every value "diverged", none is chosen.
    monkeypatch.setattr(study, "SWEEP_LRS", (10.0, 2.5))
    chosen = study.sweep("taylor_default", _lane(tmp_path))
    assert chosen["lr"] is None and set(chosen["epoch1_val_ppl"]) == {"10", "2.5"}
    # Judged for real (nothing diverges on this corpus), the lower epoch-1 validation wins.
    monkeypatch.setattr(study, "DIVERGED_ABOVE", 33_278.0)
    chosen = study.sweep("taylor_default", _lane(tmp_path))
    ppl = chosen["epoch1_val_ppl"]
    assert chosen["lr"] == float(min(ppl, key=ppl.get))
    table = (tmp_path / "study" / "lr_sweep.md").read_text()
    assert "| `taylor_default` |" in table and f"lr {chosen['lr']:g} |" in table
    kept = tmp_path / "study" / "sweeps" / "taylor_default_lr10_sweep_s1234" / "results.json"
    assert json.loads(kept.read_text())["args"]["lr"] == 10.0
    # With the choice, the run starts afresh at that lr; the diverged attempt is kept aside.
    assert study.run_lane(_lane(tmp_path)) == 0
    result = json.loads((tmp_path / "study" / "runs" / "taylor_default_s1234" / "results.json")
                        .read_text())  # fmt: skip
    assert result["args"]["lr"] == chosen["lr"] and result["global_step"] > 0
    assert (tmp_path / "work" / "taylor_default_s1234_lr20_diverged" / "diverged.json").is_file()


def test_first_validation_reads_the_recipes_epoch_end_line(tmp_path) -> None:
    log = tmp_path / "log.txt"
    assert study.first_validation(log) is None
    log.write_text("step 10/20  epoch 1/2  loss 4.1  lr 20  900 tokens/s  ETA 1s\n")
    assert study.first_validation(log) is None
    log.write_text(log.read_text() + "step 20  val_ppl inf\nstep 40  val_ppl 55.00\n")
    assert math.isinf(study.first_validation(log)) and study.diverged(float("nan"))
    assert not study.diverged(33_278.0) and study.diverged(33_278.5)
