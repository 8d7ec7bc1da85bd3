"""Why the recipe keeps its ``TrainClock`` beside Lightning's ``Timer`` and ``ThroughputMonitor``.

One fit of a tiny model whose data loading and validation are slow (sleeps), timed by all three.
The clock's seconds are the training steps alone; ``Timer`` counts the validation too, and
``ThroughputMonitor`` counts the data loading and keeps nothing for a resumed run. If Lightning
ever measures what the clock measures, these tests fail and the clock can go.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ThroughputMonitor, Timer
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, Dataset

from recipes.language_model import TrainClock

BATCH, LENGTH, STEPS, VAL_BATCHES = 4, 8, 6, 2
LOAD_SECONDS, VAL_SECONDS = 0.02, 0.15  # per batch
RATE = "train/device/items_per_sec"  # ThroughputMonitor's tokens/s of this rank


class SlowWindows(Dataset):
    """``(inputs, targets)`` windows that take ``LOAD_SECONDS`` per batch to load."""

    def __len__(self) -> int:
        return BATCH * STEPS

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(LOAD_SECONDS / BATCH)
        return torch.randn(LENGTH, 3), torch.zeros(LENGTH, dtype=torch.long)


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        logits = self.layer(batch[0]).flatten(0, 1)
        return torch.nn.functional.cross_entropy(logits, batch[1].flatten())

    def validation_step(self, batch: Any, idx: int) -> None:
        time.sleep(VAL_SECONDS)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(SlowWindows(), batch_size=BATCH)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(SlowWindows(), batch_size=BATCH)


class Recorded(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict[str, float]] = []

    name, version = "recorded", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(scope="module")
def timed(tmp_path_factory) -> dict[str, Any]:
    clock, timer = TrainClock(), Timer()
    monitor = ThroughputMonitor(
        batch_size_fn=lambda batch: batch[1].shape[0],
        length_fn=lambda batch: batch[1].numel(),
        window_size=STEPS - 1,
    )
    logger = Recorded()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_val_batches=VAL_BATCHES,
        num_sanity_val_steps=0, log_every_n_steps=1, callbacks=[clock, timer, monitor],
        logger=logger, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path_factory.mktemp("clock"),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers, flops_per_batch
        trainer.fit(Tiny())
    rates = [m[RATE] for m in logger.metrics if RATE in m]  # from the window's end on
    seconds = [m["train/time"] for m in logger.metrics if "train/time" in m]
    return {"clock": clock, "timer": timer, "monitor": monitor, "monitor_rate": rates[-1],
            "monitor_seconds": seconds[-1]}  # fmt: skip


def test_lightning_timer_counts_the_validation_that_the_clock_leaves_out(timed) -> None:
    clock, timer = timed["clock"], timed["timer"]
    assert timer.time_elapsed("train") >= clock.seconds + VAL_BATCHES * VAL_SECONDS


def test_throughput_monitor_counts_the_data_loading_that_the_clock_leaves_out(timed) -> None:
    clock = timed["clock"]
    # The first batch is loaded before training starts; each later one inside the monitor's time.
    assert timed["monitor_seconds"] >= clock.seconds + (STEPS - 1) * LOAD_SECONDS
    assert timed["monitor_rate"] <= BATCH * LENGTH / LOAD_SECONDS  # bounded by the loading
    assert timed["monitor"].state_dict() == {}  # a resumed run starts its throughput afresh
    assert clock.state_dict()["tokens"] == BATCH * LENGTH * STEPS
