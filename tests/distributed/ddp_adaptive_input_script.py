"""Plain 2-rank gloo DDP over adaptive input + adaptive softmax (run by test_ddp_adaptive_input.py).

For each tying mode (none, weights, weights + projections): AdaptiveInput → tanh → adaptive head,
wrapped in ``DistributedDataParallel`` with ``find_unused_parameters=False``. The first of three
SGD steps feeds and targets only the 3 most frequent words, so every tail band and cluster is
missed by the batch: a module that skipped them would leave parameters without gradient, which
DDP reports at the next step. Every rank must end with identical parameters. Exits 0 on success;
a failing rank prints its traceback and exits 134.
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

from lm_heads import AdaptiveInput, build_head

V, D, B, T = 64, 16, 4, 6
MODES = {
    "untied": {},
    "tied": {"tie_weights": True},
    "tied_proj": {"tie_weights": True, "tie_proj": True},
}


class TinyLM(torch.nn.Module):
    def __init__(self, counts: torch.Tensor, **tie: bool) -> None:
        super().__init__()
        self.head = build_head("adaptive", D, V, counts=counts, cutoffs=[4, 20], div_value=2.0)
        self.embed = AdaptiveInput.from_head(self.head, **tie)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)), targets).loss


def run(rank: int, world: int, port: int) -> None:
    try:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        counts = torch.ceil(1000.0 / torch.arange(1, V + 1)).long()
        for mode, tie in MODES.items():
            torch.manual_seed(0)
            model = DDP(TinyLM(counts, **tie), find_unused_parameters=False)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            gen = torch.Generator().manual_seed(100 + rank)
            for step in range(3):
                high = 3 if step == 0 else V
                tokens = torch.randint(0, high, (B, T), generator=gen)
                targets = torch.randint(0, high, (B, T), generator=gen)
                opt.zero_grad()
                loss = model(tokens, targets)
                loss.backward()
                missing = [n for n, p in model.named_parameters() if p.grad is None]
                if missing:
                    raise RuntimeError(f"{mode}: no gradient for {missing}")
                opt.step()
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(world)]
            dist.all_gather(gathered, flat)
            if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
                raise RuntimeError(f"{mode}: parameters differ across ranks after DDP steps")
            if rank == 0:
                count = sum(p.numel() for p in model.parameters())
                print(f"ok {mode} {count}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(134)


if __name__ == "__main__":
    port = int(os.environ.get("DDP_TEST_PORT", "29518"))
    mp.spawn(run, args=(2, port), nprocs=2, join=True)
