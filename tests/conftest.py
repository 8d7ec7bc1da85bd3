import os
from collections.abc import Callable

# The hub is unreachable on CI machines: fail at once instead of retrying for ~23 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

# Unit tests run tiny matmuls: extra threads only add contention on small shared machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fit_two_steps(tmp_path) -> Callable:
    """``fit(model, tokens [N, 2, T])``: two optimizer steps of a quiet CPU Trainer on (inputs,
    targets) batches of 4; returns the Trainer."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    def fit(model: L.LightningModule, tokens: torch.Tensor) -> L.Trainer:
        data = DataLoader(TensorDataset(tokens[:, 0], tokens[:, 1]), batch_size=4)
        trainer = L.Trainer(
            accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, data)
        return trainer

    return fit
