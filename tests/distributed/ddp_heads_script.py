"""Plain 2-rank gloo DDP over every registered head (run by test_ddp.py as a subprocess).

For each head: Embedding → head wrapped in ``DistributedDataParallel`` with
``find_unused_parameters=False``, three SGD steps on rank-dependent batches, the first of which
only targets the 3 most frequent words (so heads that skip empty clusters would leave parameters
without gradient and make DDP raise). After the steps every rank must hold identical parameters.
Usage: python ddp_heads_script.py [HEAD ...]   (default: all). Exits 0 on success; a failing rank
prints its traceback and exits 134.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_heads import HEADS, build_head

V, D, B, T = 64, 16, 4, 6
OPTIONS = {"importance": {"num_samples": 8}, "nce": {"num_samples": 8}}


class TinyLM(torch.nn.Module):
    def __init__(self, name: str, counts: torch.Tensor) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(V, D)
        self.head = build_head(name, D, V, counts=counts, **OPTIONS.get(name, {}))

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)), targets).loss


def run(rank: int, world: int, port: int, names: list[str]) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        counts = torch.ceil(1000.0 / torch.arange(1, V + 1)).long()
        for name in names:
            torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
            model = DDP(TinyLM(name, counts), find_unused_parameters=False)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            gen = torch.Generator().manual_seed(100 + rank)
            for step in range(3):
                tokens = torch.randint(0, V, (B, T), generator=gen)
                high = 3 if step == 0 else V
                targets = torch.randint(0, high, (B, T), generator=gen)
                targets[0, 0] = -100
                opt.zero_grad()
                loss = model(tokens, targets)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{name}: non-finite loss {loss}")
                loss.backward()
                opt.step()
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
                raise RuntimeError(f"{name}: parameters differ across ranks after DDP steps")
            if rank == 0:
                print(f"ok {name}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(134)


if __name__ == "__main__":
    heads = sys.argv[1:] or sorted(HEADS)
    unknown = sorted(set(heads) - set(HEADS))
    if unknown:
        sys.exit(f"unknown head(s) {unknown}; registered: {sorted(HEADS)}")
    port = int(os.environ.get("DDP_TEST_PORT", "29517"))
    mp.spawn(run, args=(2, port, heads), nprocs=2, join=True)
