"""The progress a user reads (recipes/progress.py): step of total, epoch, lr, tokens/s, ETA."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from recipes.language_model import TrainClock
from recipes.progress import ProgressStats, duration

# step 4/4  epoch 1/2  loss 3.1234  lr 20  4,567 tokens/s  ETA 0s
LINE = re.compile(
    r"^step (?P<step>[\d,]+)/(?P<total>[\d,]+|\?)  epoch (?P<epoch>\d+(/\d+)?)  "
    r"loss \d+\.\d{4}  lr (?P<lr>\S+)(  (?P<speed>[\d,]+) tokens/s)?  ETA (?P<eta>\S+)$"
)


def _lines(out: str) -> list[re.Match]:
    return [m for line in out.splitlines() if (m := LINE.match(line))]


@pytest.mark.parametrize(
    ("options", "total", "epoch"),
    [
        (["--max-steps", "4"], "4", "1/2"),  # the step limit
        (["--max-steps", "-1", "--max-epochs", "1", "--limit-train-batches", "4"], "4", "1/1"),
        (["--max-steps", "4", "--max-epochs", None, "--max-time", "600"], "4", "1"),
    ],
)
def test_log_line_shows_total_epoch_lr_speed_and_eta(lm, tiny_args, capsys, options, total, epoch):
    options = [o if o is not None else "null" for o in options]
    lm.main([*tiny_args, "--head", "adaptive", "--log-every", "2", "--lr", "0.5", *options])
    lines = _lines(capsys.readouterr().out)
    assert [m["step"] for m in lines] == ["2", "4"]
    for m in lines:
        assert (m["total"], m["epoch"], m["lr"]) == (total, epoch, "0.5")
        assert m["speed"] is not None and int(m["speed"].replace(",", "")) > 0
    assert lines[0]["eta"] != "?" and lines[-1]["eta"] == "0s"  # nothing left after the last


def test_progress_bar_carries_the_same_fields(lm, tiny_args, capsys) -> None:
    args = [a for a in tiny_args if a != "--no-progress-bar"]
    lm.main([*args, "--progress-bar", "--head", "adaptive", "--max-steps", "3"])
    captured = capsys.readouterr()
    err = captured.out + captured.err  # tqdm writes to stdout in recent Lightning
    assert re.search(r"step=3/3.*lr=20.*tokens/s=[\d,]+.*ETA=0s", err), err[-2000:]
    assert "v_num" not in err


def _trainer(step: int, max_steps: int = -1) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, estimated_stepping_batches=max_steps,
                           max_epochs=None, current_epoch=0, optimizers=[])  # fmt: skip


def test_eta_is_the_sooner_of_steps_left_and_time_budget_left(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("recipes.progress.time.perf_counter", lambda: now[0])
    clock = TrainClock(max_seconds=None)
    stats = ProgressStats(clock)
    stats.start(_trainer(0, max_steps=100))
    now[0], clock.seconds = 110.0, 5.0  # 10 steps in 10 s of wall time (5 s of training)
    assert stats.eta_seconds(_trainer(10)) == pytest.approx(90.0)
    clock.max_seconds = 20.0  # 15 training seconds left = 30 s of wall time at this pace
    assert stats.eta_seconds(_trainer(10)) == pytest.approx(30.0)
    only_time = ProgressStats(clock)
    only_time.start(_trainer(0, max_steps=float("inf")))  # type: ignore[arg-type]
    assert only_time.fields(_trainer(0))["step"] == "0/?"


def test_duration_reads_at_a_glance() -> None:
    assert [duration(s) for s in (0, 42.4, 61, 3599, 7260)] == ["0s", "42s", "1m01s", "59m59s",
                                                               "2h01m"]  # fmt: skip
