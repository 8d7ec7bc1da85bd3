"""2-GPU NCCL DDP: every registered head trains 3 SGD steps, one rank per GPU, and every rank
must end with the same parameters (run as a subprocess by ``test_cuda.py``).

Usage: ``python tests/cuda/ddp_cuda.py [HEAD ...]``; prints ``ok <head>`` per head on rank 0,
exits 0 on success; a failing rank prints its traceback and exits 134. The first step only
targets the 3 most frequent words, so a head that skipped empty clusters would leave parameters
without a gradient, which DDP reports at the next step.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_heads import HEADS, build_head

V, D, B, T = 64, 16, 4, 6
COUNTS = torch.ceil(1000.0 / torch.arange(1, V + 1)).long()
OPTIONS = {"importance": {"num_samples": 8}, "nce": {"num_samples": 8}}


class HeadLM(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.head = build_head(name, D, V, counts=COUNTS, **OPTIONS.get(name, {}))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)), targets).loss


def train_head(rank: int, world: int, name: str, device: torch.device) -> None:
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    ddp = DDP(HeadLM(name).to(device), device_ids=[device.index])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(3):
        high = 3 if step == 0 else V
        tokens = torch.randint(0, high, (B, T), generator=gen).to(device)
        targets = torch.randint(0, high, (B, T), generator=gen)
        targets[0, 0] = -100
        opt.zero_grad()
        loss = ddp(tokens, targets.to(device))
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite loss {loss}")
        loss.backward()
        missing = [n for n, p in ddp.named_parameters() if p.grad is None]
        if missing:
            raise RuntimeError(f"{name}: no gradient for {missing}")
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError(f"{name}: parameters differ across ranks after DDP steps")


def spawned(rank: int, world: int, port: int, names: list[str]) -> None:
    try:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        for name in names:
            train_head(rank, world, name, device)
            if rank == 0:
                print(f"ok {name}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(134)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(HEADS)
    unknown = sorted(set(names) - set(HEADS))
    if unknown:
        sys.exit(f"unknown head(s) {unknown}; registered: {sorted(HEADS)}")
    if torch.cuda.device_count() < 2:
        sys.exit(f"needs 2 CUDA devices, found {torch.cuda.device_count()}")
    mp.spawn(spawned, args=(2, free_port(), names), nprocs=2, join=True)
