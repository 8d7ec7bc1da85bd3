"""``LMHeadMixin`` under ``Trainer(strategy="ddp")`` on 2 gloo ranks (run by test_ddp_mixin.py).

Lightning's launcher starts rank 1 by running this script again. 7 samples of unequal lengths on
2 ranks, so Lightning's DistributedSampler repeats one (sample 0, the longest), evaluated with

- ``val``: a collate_fn that sorts each batch's rows longest first (as for pack_padded_sequence),
  so the repeat is not where the padded order put it;
- ``test``: a length-bucketing ``batch_sampler``, into which Lightning injects its sampler.

Rank 0 prints ``ok <stage> <logged ppl> <float64 single-process ppl>`` and ``warned <stage>
<message>`` for each EvaluationSamplingWarning.
"""

from __future__ import annotations

import copy
import math
import warnings

import lightning as L
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lm_heads.mixin import EvaluationSamplingWarning, LMHeadMixin

V, D, N, T = 40, 8, 7, 9


class Tiny(LMHeadMixin, L.LightningModule):
    """An embedding and a full head: the model of this script and ``ddp_script.py mixin_eval``."""

    def __init__(self, vocab_size: int = V, dim: int = D) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.configure_head("full", in_features=dim, vocab_size=vocab_size)

    def validation_step(self, batch, batch_idx):
        self.head_evaluation_step(self.embed(batch[0]), batch[1], stage="val")

    def test_step(self, batch, batch_idx):
        self.head_evaluation_step(self.embed(batch[0]), batch[1], stage="test")


def longest_first(rows):
    inputs, targets = (torch.stack(column) for column in zip(*rows, strict=True))
    order = (targets != -100).sum(1).argsort(descending=True, stable=True)
    return inputs[order], targets[order]


class LengthBuckets(BatchSampler):
    """The sampler's indices, longest sample first, in batches (drawn at each pass)."""

    def __iter__(self):
        indices = sorted(self.sampler, key=lambda index: -LENGTHS[index])
        for start in range(0, len(indices), self.batch_size):
            yield indices[start : start + self.batch_size]


gen = torch.Generator().manual_seed(1)
INPUTS = torch.randint(0, V, (N, T), generator=gen)
TARGETS = torch.randint(0, V, (N, T), generator=gen)
for row in range(1, N):
    TARGETS[row, row + 1 :] = -100  # sample 0 keeps all T tokens: counting it twice shows
LENGTHS = (TARGETS != -100).sum(1).tolist()


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Tiny()
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        log_p = reference.head.target_log_prob(reference.embed(INPUTS), TARGETS)
    exact = math.exp(-float(log_p.sum()) / int((TARGETS != -100).sum()))
    data = TensorDataset(INPUTS, TARGETS)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EvaluationSamplingWarning)
        val = DataLoader(data, batch_size=2, collate_fn=longest_first)
        logged = {"val": trainer.validate(model, val, verbose=False)[0]["val_ppl"]}
        buckets = LengthBuckets(SequentialSampler(data), batch_size=2, drop_last=False)
        test = DataLoader(data, batch_sampler=buckets)
        logged["test"] = trainer.test(model, test, verbose=False)[0]["test_ppl"]
    if trainer.global_rank == 0:
        for stage, value in logged.items():
            print(f"ok {stage} {value:.12g} {exact:.12g}", flush=True)
        for warning in caught:
            if issubclass(warning.category, EvaluationSamplingWarning):
                print(f"warned {str(warning.message).split('_')[0]} {warning.message}", flush=True)
    # Lightning leaves the process group open; closing it keeps gloo's threads from aborting
    # the interpreter's exit.
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
