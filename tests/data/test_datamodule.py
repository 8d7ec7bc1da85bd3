import numpy as np
import pytest
import torch

from lm_heads.data import DataUnavailableError, LMDataModule, StreamBatches
from lm_heads.data import datamodule as dm_module


def _module(data, tmp_path, **kwargs):
    dm = LMDataModule(data, cache_dir=tmp_path / "cache", **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_local_directory(tiny_corpus, tmp_path):
    dm = _module(str(tiny_corpus), tmp_path, batch_size=2, bptt=5)
    assert dm.description == f"data: local text from {tiny_corpus} (local)"
    assert dm.data_dir == tiny_corpus
    assert dm.entropy_floor_ppl is None and dm.similarity_pairs is None
    assert dm.vocab_size == len(dm.vocab) and dm.counts.tolist() == dm.vocab.counts.tolist()
    assert dm.counts.tolist() == sorted(dm.counts.tolist(), reverse=True)
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == targets.shape == (2, 5) and inputs.dtype == torch.long
    assert inputs[0, 0] == dm.vocab.eos_id  # nothing precedes the first token
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_train_batches_are_contiguous_streams():
    ids = np.arange(1000)
    data = StreamBatches(ids, batch_size=4, bptt=7)
    assert len(data) == (1000 // 4) // 7
    first, second = data[0][1], data[1][1]
    assert torch.equal(second[:, 0], first[:, -1] + 1), "batch k+1 continues batch k"
    assert torch.equal(data[1][0][:, 0], first[:, -1]), "inputs are the previous tokens"
    assert first[:, 0].tolist() == [0, 250, 500, 750]


def test_ranks_own_disjoint_streams():
    ids = np.arange(1200)
    per_rank = [StreamBatches(ids, 3, 5, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([b[1] for b in data]).reshape(-1).tolist() for data in per_rank]
    assert not set(seen[0]) & set(seen[1])
    assert len(per_rank[0]) == len(per_rank[1])
    assert per_rank[1][0][1][:, 0].tolist() == [600, 800, 1000]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 97, 1000])
def test_eval_counts_every_token_once(world, size):
    ids = np.arange(size) + 5
    seen = []
    lengths = set()
    for rank in range(world):
        data = StreamBatches(ids, 4, 6, rank=rank, world_size=world, pad_tail=True, start_id=0)
        lengths.add(len(data))
        for inputs, targets in data:
            keep = targets != -100
            seen += targets[keep].tolist()
            # every counted target is preceded by its true previous token
            assert torch.equal(inputs[keep], torch.where(targets[keep] == 5, 0, targets[keep] - 1))
    assert sorted(seen) == ids.tolist()
    assert len(lengths) == 1, "every rank runs the same number of batches"


def test_too_little_training_data():
    with pytest.raises(ValueError, match="too few"):
        StreamBatches(np.arange(10), batch_size=4, bptt=5)


def test_shuffle_is_seeded_per_epoch(tiny_corpus, tmp_path):
    dm = _module(str(tiny_corpus), tmp_path, batch_size=1, bptt=3, shuffle=True, seed=1)
    loader = dm.train_dataloader()

    def order(epoch):
        loader.sampler.set_epoch(epoch)
        return [b[1][0, 0].item() for b in loader]

    assert order(0) == order(0) and order(0) != order(1)
    plain = _module(str(tiny_corpus), tmp_path, batch_size=1, bptt=3).train_dataloader()
    assert sorted(order(0)) == sorted(b[1][0, 0].item() for b in plain)


def test_cache_is_reused_and_corrupt_cache_rebuilt(tiny_corpus, tmp_path, monkeypatch):
    first = _module(str(tiny_corpus), tmp_path)
    path = first._resolve().path
    expected = np.array(first.splits["train"])  # a copy: the memmap shares the file we corrupt
    monkeypatch.setattr(LMDataModule, "_build", lambda self, cache: pytest.fail("rebuilt"))
    again = _module(str(tiny_corpus), tmp_path)
    assert again.vocab == first.vocab
    monkeypatch.undo()
    (path / "train.npy").write_bytes(b"garbage")
    rebuilt = _module(str(tiny_corpus), tmp_path)
    assert np.array_equal(rebuilt.splits["train"], expected)


def test_min_count_changes_the_cache_entry(tiny_corpus, tmp_path):
    full = _module(str(tiny_corpus), tmp_path)
    pruned = _module(str(tiny_corpus), tmp_path, min_count=30)
    assert full._resolve().path != pruned._resolve().path
    assert pruned.vocab_size < full.vocab_size


def test_synthetic(tmp_path):
    dm = _module(
        "synthetic",
        tmp_path,
        synthetic_vocab_size=300,
        synthetic_classes=6,
        synthetic_tokens=20_000,
        batch_size=4,
        bptt=10,
    )
    assert dm.description.startswith("data: synthetic language (V=300")
    assert dm.vocab_size == 302  # + <unk>, <eos> (never occurring)
    assert dm.entropy_floor_ppl == pytest.approx(dm.language.perplexity_floor)
    assert dm.entropy_floor_ppl > 1
    assert len(dm.splits["valid"]) == len(dm.splits["test"]) == 2_000
    assert dm.counts.tolist() == sorted(dm.counts.tolist(), reverse=True)
    pairs = dm.similarity_pairs
    assert pairs and all(a in dm.vocab.stoi and b in dm.vocab.stoi for a, b, _ in pairs)
    assert dm.data_dir is None


def test_auto_falls_back_to_synthetic_when_wikitext_is_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(dm_module, "find_local", lambda name: None)
    dm = LMDataModule("auto", cache_dir=tmp_path, synthetic_vocab_size=100, synthetic_tokens=5000)
    dm.prepare_data()
    assert "synthetic language" in dm.description
    assert "WikiText-2 not found" in dm.description


def test_auto_prefers_local_wikitext(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(dm_module, "find_local", lambda name: tiny_corpus)
    dm = LMDataModule("auto", cache_dir=tmp_path)
    dm.prepare_data()
    assert dm.description == f"data: WikiText-2 from {tiny_corpus} (local)"


def test_unknown_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="neither one of auto, synthetic"):
        LMDataModule(str(tmp_path / "nowhere"), cache_dir=tmp_path).prepare_data()


def test_bad_batch_options():
    with pytest.raises(ValueError, match="batch_size"):
        LMDataModule("synthetic", batch_size=0)


@pytest.mark.integration
def test_wikitext2_end_to_end(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_HEADS_DATA", str(shared_data))
    dm = _module("wikitext-2", tmp_path, batch_size=20, bptt=35)
    assert dm.vocab_size == 33_278
    assert {k: len(v) for k, v in dm.splits.items()} == {
        "train": 2_088_628,
        "valid": 217_646,
        "test": 245_569,
    }
    counted = sum(int((t != -100).sum()) for _, t in dm.test_dataloader())
    assert counted == 245_569
    assert (dm.data_dir.parent / "simlex-999").is_dir()


class _Recorder:
    """A LightningModule that records the first target of every training batch."""

    @staticmethod
    def build():
        import lightning as L

        class Recorder(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.zeros(1))
                self.seen = []

            def training_step(self, batch, batch_idx):
                self.seen.append(int(batch[1][0, 0]))
                return (self.weight**2).sum()

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Recorder()


@pytest.mark.parametrize("step", [3, 12])  # mid-epoch 0 and mid-epoch 1 (10 batches/epoch)
def test_mid_epoch_resume_replays_the_uninterrupted_order(tmp_path, step):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(ckpt_path=None, callbacks=()):
        dm = LMDataModule(
            "synthetic",
            batch_size=2,
            bptt=50,
            cache_dir=tmp_path,
            synthetic_vocab_size=100,
            synthetic_tokens=1000,
            shuffle=True,
        )
        model = _Recorder.build()
        trainer = L.Trainer(
            max_steps=14,
            logger=False,
            callbacks=list(callbacks),
            enable_checkpointing=bool(callbacks),
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            accelerator="cpu",
        )
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model.seen

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=step, save_top_k=-1)
    uninterrupted = fit(callbacks=[saver])
    (checkpoint,) = (tmp_path / "ckpt").glob(f"*step={step}.ckpt")
    assert uninterrupted[:step] + fit(ckpt_path=checkpoint) == uninterrupted
