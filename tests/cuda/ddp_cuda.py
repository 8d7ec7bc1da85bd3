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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_heads import HEADS
from tests.distributed.ddp_script import HeadLM, train_identically


def spawned(rank: int, world: int, port: int, names: list[str]) -> None:
    try:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        for name in names:
            torch.manual_seed(0)  # same initial weights on every rank (DDP broadcasts them too)
            train_identically(rank, world, name, HeadLM(name), device)
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
