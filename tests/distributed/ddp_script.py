"""2-rank gloo DDP runs on CPU, one mode per invocation (run as subprocesses by the ddp tests).

Usage: ``python ddp_script.py MODE [ARGS]``. Exits 0 on success; a failing rank prints its
traceback and exits 134.

- ``heads [HEAD ...]`` (default: every registered head): Embedding → head in plain
  ``DistributedDataParallel`` with ``find_unused_parameters=False``; prints ``ok <head>``.
- ``adaptive_input``: AdaptiveInput → tanh → adaptive head for each tying mode (none, weights,
  weights + projections); prints ``ok <mode> <parameter count>``.
- ``mixin_eval``: ``LMHeadMixin`` under ``Trainer(strategy="ddp")`` validates and tests on an
  odd-sized set, which Lightning's default sampler pads with a repeated sample; prints
  ``ok <stage> <logged ppl> <exact ppl>``.
- ``slurm_task ARGS``: ``recipes/lm.py ARGS`` as one task of a SLURM job (the caller starts one
  per rank with SLURM's variables, as ``srun`` would); with ``SIGUSR1_AT=STEP`` in the
  environment, the task sends itself SIGUSR1 in the middle of that training step.

The two plain-DDP modes take three SGD steps on rank-dependent batches, the first of which only
targets the 3 most frequent words (so a module that skipped empty clusters or tail bands would
leave parameters without gradient, which DDP reports at the next step); every rank must then
hold identical parameters.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_heads import HEADS, AdaptiveInput, build_head

V, D, B, T = 64, 16, 4, 6
COUNTS = torch.ceil(1000.0 / torch.arange(1, V + 1)).long()
HEAD_OPTIONS = {"importance": {"num_samples": 8}, "nce": {"num_samples": 8}}
TYING = {
    "untied": {},
    "tied": {"tie_weights": True},
    "tied_proj": {"tie_weights": True, "tie_proj": True},
}


class HeadLM(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.head = build_head(name, D, V, counts=COUNTS, **HEAD_OPTIONS.get(name, {}))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)), targets).loss


class AdaptiveLM(nn.Module):
    def __init__(self, **tie: bool) -> None:
        super().__init__()
        self.head = build_head("adaptive", D, V, counts=COUNTS, cutoffs=[4, 20], div_value=2.0)
        self.embed = AdaptiveInput.from_head(self.head, **tie)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)), targets).loss


def train_identically(
    rank: int, world: int, label: str, model: nn.Module, device: torch.device | None = None
) -> nn.Module:
    """Three SGD steps under DDP (on ``device``: one GPU per rank; CPU when None); raises unless
    every rank ends with the same parameters."""
    device_ids = None if device is None else [device.index]
    ddp = DDP(model.to(device or "cpu"), device_ids=device_ids, find_unused_parameters=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(3):
        high = 3 if step == 0 else V
        tokens = torch.randint(0, high, (B, T), generator=gen)
        targets = torch.randint(0, high, (B, T), generator=gen)
        targets[0, 0] = -100
        opt.zero_grad()
        loss = ddp(tokens.to(device or "cpu"), targets.to(device or "cpu"))
        if not torch.isfinite(loss):
            raise RuntimeError(f"{label}: non-finite loss {loss}")
        loss.backward()
        missing = [n for n, p in ddp.named_parameters() if p.grad is None]
        if missing:
            raise RuntimeError(f"{label}: no gradient for {missing}")
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError(f"{label}: parameters differ across ranks after DDP steps")
    return model


def heads_mode(rank: int, world: int, names: list[str]) -> None:
    for name in names:
        torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
        train_identically(rank, world, name, HeadLM(name))
        if rank == 0:
            print(f"ok {name}", flush=True)


def adaptive_input_mode(rank: int, world: int, _: list[str]) -> None:
    for mode, tie in TYING.items():
        torch.manual_seed(0)
        model = train_identically(rank, world, mode, AdaptiveLM(**tie))
        if rank == 0:
            print(f"ok {mode} {sum(p.numel() for p in model.parameters())}", flush=True)


def _spawned(rank: int, world: int, port: int, mode: Callable, args: list[str]) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        mode(rank, world, args)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(134)


def mixin_eval_mode() -> None:
    """Lightning's own DDP launcher: it starts rank 1 by running this script again."""
    import lightning as L
    from mixin_script import Tiny  # this folder is the script's sys.path[0]
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Tiny(V, D)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, V, (7, 9), generator=gen)  # 7 samples: 2 ranks get 4 each
    targets = torch.randint(0, V, (7, 9), generator=gen)
    for row in range(7):
        targets[row, row + 2 :] = -100  # unequal lengths: a repeat would shift the mean
    with torch.no_grad():
        log_p = model.head.target_log_prob(model.embed(inputs), targets).double()
    exact = math.exp(-float(log_p.sum()) / int((targets != -100).sum()))
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    logged = {
        "val": trainer.validate(model, loader, verbose=False)[0]["val_ppl"],
        "test": trainer.test(model, loader, verbose=False)[0]["test_ppl"],
    }
    if trainer.global_rank == 0:
        for stage, value in logged.items():
            print(f"ok {stage} {value:.9g} {exact:.9g}", flush=True)
    # Lightning leaves the process group open; closing it ourselves keeps gloo's threads from
    # aborting the interpreter's exit (seen as exit -6 after both ranks had passed).
    dist.destroy_process_group()


def slurm_task_mode(argv: list[str]) -> None:
    from recipes import language_model, lm

    at = os.environ.get("SIGUSR1_AT")
    if at is not None:
        step = language_model.LanguageModel.training_step

        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == int(at):  # mid-step, where Lightning's handler saved
                os.kill(os.getpid(), signal.SIGUSR1)
            return step(self, batch, batch_idx)

        language_model.LanguageModel.training_step = training_step
    lm.main(argv)


MODES = {"heads": heads_mode, "adaptive_input": adaptive_input_mode}
OWN_LAUNCH = ("mixin_eval", "slurm_task")  # each rank started by Lightning or by the caller

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in (*MODES, *OWN_LAUNCH):
        sys.exit(f"usage: {Path(__file__).name} {{{'|'.join((*MODES, *OWN_LAUNCH))}}} [ARGS]")
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "mixin_eval":
        mixin_eval_mode()
        sys.exit(0)
    if mode == "slurm_task":
        slurm_task_mode(args)
        sys.exit(0)
    if mode == "heads":
        args = args or sorted(HEADS)
        unknown = sorted(set(args) - set(HEADS))
        if unknown:
            sys.exit(f"unknown head(s) {unknown}; registered: {sorted(HEADS)}")
    port = int(os.environ.get("DDP_TEST_PORT", "29517"))
    mp.spawn(_spawned, args=(2, port, MODES[mode], args), nprocs=2, join=True)
