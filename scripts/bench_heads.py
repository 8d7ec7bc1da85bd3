r"""Speed and memory of every head, side by side with the baselines, over vocabulary sizes.

For each spec (a registered head or a baseline, ``name[:key=value,...]``) and each vocabulary size
``V`` this measures

- the **training step of the head alone**: ``hidden [n, d]`` (requires grad) → ``loss`` →
  ``backward()`` (gradients set to ``None`` before each step, so their allocation is part of it);
- the **evaluation path**: ``target_log_prob(hidden, target)`` under ``torch.no_grad()`` in
  ``eval()`` mode (sampled heads evaluate exactly, margin heads without margin);

and reports the median time over ``--rounds`` and the peak memory of each phase above the model
and its inputs. Every round runs every case once, in turn, each in a fresh subprocess (one
warmup call, then one timed call), so a slow spell on a shared machine hits all cases alike and
the median over rounds is a median of interleaved repeats.

Baselines (measured in the same run, at every ``V``):

- ``naive``: ``F.cross_entropy(F.linear(h, W, b), t)``, the textbook full softmax. Skipped
  where its ``[n, V]`` tensors (``n·V·12`` bytes) exceed ``--max-memory-gb``;
- ``torch_lce[:batch_chunk_size=c]``: torch's ``F.linear_cross_entropy`` with
  ``LinearCrossEntropyOptions()`` (its defaults) or a fixed chunk of ``c`` rows;
- ``torch_adaptive[:cutoffs=[...],div_value=x]``: ``torch.nn.AdaptiveLogSoftmaxWithLoss``
  (default cutoffs: :func:`lm_heads.cutoffs.default_cutoffs`, as our ``adaptive``);
- ``matmul``: ``F.linear(h, W)`` alone (evaluation only): the machine's matmul speed;
- ``cce``, ``liger``: Cut Cross-Entropy and Liger's fused linear cross-entropy (CUDA; in the
  default list only where their packages import).

Data: counts follow Zipf's law (``count ∝ 1/rank``, id 0 the most frequent word), and targets
are drawn from that unigram, so frequency-structured heads see realistic cluster loads.

Memory: on CPU the peak resident set size of a phase (``VmHWM``, reset by writing ``5`` to
``/proc/self/clear_refs``) minus the resident size before it; on CUDA ``max_memory_allocated``
minus the memory allocated before it. Each worker's address space is capped near
``--max-memory-gb``, so a case that would need more fails cleanly ("failed: ...") instead of
taking the machine down, and the run goes on.

Usage::

    python scripts/bench_heads.py                       # every head and baseline, 3 V's
    python scripts/bench_heads.py --quick               # seconds: smoke test of this script
    python scripts/bench_heads.py --heads full:chunk_size=auto torch_lce \
        torch_lce:batch_chunk_size=512 --vocab-sizes 267735 --tokens 1024 \
        --ratio full:chunk_size=auto/torch_lce:batch_chunk_size=512

Outputs in ``--output-dir``: ``bench_heads.json`` (every raw number, configuration, machine) and
``bench_heads.md`` (the tables). Targets and their verdicts live in BENCHMARKS.md, not here.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm_heads.cutoffs import default_cutoffs
from lm_heads.registry import HEADS, build_head

VOCAB_SIZES = (33_278, 267_735, 793_471)
"""WikiText-2, WikiText-103, One Billion Word."""

MARKER = "@@BENCH_RESULT@@"


# ---------------------------------------------------------------------------------------------
# Baselines: modules with a ``loss`` and a ``target_log_prob``, built from (d, V, options).
class NaiveFull(nn.Module):
    """The textbook full softmax: ``F.linear`` then ``F.cross_entropy``."""

    def __init__(self, d: int, vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, d) / math.sqrt(d))
        self.bias = nn.Parameter(torch.zeros(vocab))

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(F.linear(hidden, self.weight, self.bias).float(), target)

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        logits = F.linear(hidden, self.weight, self.bias).float()
        return -F.cross_entropy(logits, target, reduction="none")


class TorchLCE(NaiveFull):
    """torch's chunked ``F.linear_cross_entropy`` (default options, or ``batch_chunk_size``)."""

    def __init__(self, d: int, vocab: int, batch_chunk_size: int | None = None) -> None:
        super().__init__(d, vocab)
        if not hasattr(F, "linear_cross_entropy"):
            raise RuntimeError(f"torch {torch.__version__} has no F.linear_cross_entropy (2.13+)")
        options = nn.LinearCrossEntropyOptions
        fixed = batch_chunk_size is not None
        self.options = (
            options(batch_chunk_size=batch_chunk_size, chunking_method=None) if fixed else options()
        )

    def _lce(self, hidden: Tensor, target: Tensor, reduction: str) -> Tensor:
        hidden, weight, bias = autocast_inputs(hidden, self.weight, self.bias)
        return F.linear_cross_entropy(
            hidden, weight, target, linear_bias=bias, reduction=reduction, options=self.options
        )

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._lce(hidden, target, "mean")

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return -self._lce(hidden, target, "none")


class CutCrossEntropy(NaiveFull):
    """Apple's Cut Cross-Entropy (``pip install cut-cross-entropy``; Triton, CUDA only)."""

    def __init__(self, d: int, vocab: int, impl: str = "cce") -> None:
        super().__init__(d, vocab)
        from cut_cross_entropy import linear_cross_entropy  # ImportError: the case is skipped

        self.impl, self._lce = impl, linear_cross_entropy

    def _call(self, hidden: Tensor, target: Tensor, reduction: str) -> Tensor:
        hidden, weight, bias = autocast_inputs(hidden, self.weight, self.bias)
        return self._lce(hidden, weight, target, bias=bias, reduction=reduction, impl=self.impl)

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self._call(hidden, target, "mean")

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return -self._call(hidden, target, "none")


class LigerFusedLCE(NaiveFull):
    """Liger Kernel's fused linear cross-entropy (``pip install liger-kernel``; Triton, CUDA)."""

    def __init__(self, d: int, vocab: int) -> None:
        super().__init__(d, vocab)
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        self.inner = LigerFusedLinearCrossEntropyLoss()

    evaluates = False  # a training loss only: no per-token log-probabilities to time

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        hidden, weight, bias = autocast_inputs(hidden, self.weight, self.bias)
        out = self.inner(weight, hidden, target, bias)
        return out[0] if isinstance(out, tuple) else out  # some versions add the z-loss


EXTERNAL = {"cce": "cut_cross_entropy", "liger": "liger_kernel"}
"""Baselines from other packages: their cases are skipped, with a note, where not importable."""


def autocast_inputs(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, ...]:
    """What autocast does for ``F.linear``, done by hand for kernels that autocast does not
    know (torch's LCE, Triton kernels): cast the matmul inputs to the autocast dtype."""
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return hidden, weight, bias  # type: ignore[return-value]
    dtype = torch.get_autocast_dtype(device)
    cast = [x if x is None else x.to(dtype) for x in (hidden, weight, bias)]
    return tuple(cast)  # type: ignore[return-value]


class TorchAdaptive(nn.Module):
    """``nn.AdaptiveLogSoftmaxWithLoss`` behind the same two calls."""

    def __init__(
        self, d: int, vocab: int, cutoffs: list[int] | None = None, div_value: float = 4.0
    ) -> None:
        super().__init__()
        cutoffs = default_cutoffs(vocab, d, div_value) if cutoffs is None else cutoffs
        self.inner = nn.AdaptiveLogSoftmaxWithLoss(d, vocab, cutoffs, div_value=div_value)

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.inner(hidden, target).loss

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.inner(hidden, target).output


class Matmul(nn.Module):
    def __init__(self, d: int, vocab: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, d) / math.sqrt(d))

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return F.linear(hidden, self.weight)


class HeadLoss(nn.Module):
    """A registered head behind the same two calls."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.head(hidden, target).loss

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.head.target_log_prob(hidden, target)


BASELINES: dict[str, Callable[..., nn.Module]] = {
    "naive": NaiveFull,
    "torch_lce": TorchLCE,
    "torch_adaptive": TorchAdaptive,
    "matmul": Matmul,
    "cce": CutCrossEntropy,
    "liger": LigerFusedLCE,
}


# ---------------------------------------------------------------------------------------------
# Specs: ``name[:key=value,...]``.
def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"adaptive:cutoffs=[20000,60000],div_value=4"`` → ``("adaptive", {...})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    depth, start, items = 0, 0, []
    for i, char in enumerate(rest + ","):  # split on commas outside brackets
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            items.append(rest[start:i].strip())
            start = i + 1
    for item in filter(None, items):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad option {item!r} in spec {spec!r}: expected key=value")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()  # a bare word such as auto
    name = name.strip()
    if name not in HEADS and name not in BASELINES:
        valid = ", ".join([*HEADS, *BASELINES])
        raise ValueError(f"unknown head or baseline {name!r} in {spec!r}; valid: {valid}")
    return name, options


def default_specs() -> list[str]:
    """Every baseline with its defaults (those of other packages where importable), then every
    registered head with its defaults."""
    return [*(b for b in BASELINES if importable(b)), *HEADS]


def importable(name: str) -> bool:
    """Whether a baseline's package can be imported (always, for torch's own)."""
    module = EXTERNAL.get(name)
    return module is None or importlib.util.find_spec(module) is not None


def build_module(spec: str, d: int, vocab: int, counts: Tensor) -> nn.Module:
    name, options = parse_spec(spec)
    if name in BASELINES:
        return BASELINES[name](d, vocab, **options)
    return HeadLoss(build_head(name, d, vocab, counts=counts, **options))


# ---------------------------------------------------------------------------------------------
# One case (spec, V) in a worker: build, then time and measure each phase once after a warmup.
class CpuMemory:
    """Peak RSS of a phase: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``."""

    method = "VmHWM after clear_refs"

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    def start(self) -> int:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")


class CudaMemory:
    method = "torch.cuda.max_memory_allocated"

    def start(self) -> int:
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()


def zipf_counts(vocab: int) -> Tensor:
    """Integer-valued counts of a 10⁹-token corpus with ``count ∝ 1/rank`` (id = rank)."""
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    return (1e9 / ranks / (1.0 / ranks).sum()).ceil()


def make_inputs(
    n: int, d: int, vocab: int, seed: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Zipf counts, targets drawn from their unigram, and ``hidden [n, d]`` requiring grad."""
    counts = zipf_counts(vocab)
    generator = torch.Generator().manual_seed(seed)
    target = torch.multinomial(counts.float(), n, replacement=True, generator=generator)
    hidden = torch.randn(n, d, generator=generator).to(device).requires_grad_(True)
    return counts, hidden, target.to(device)


def autocast(device: torch.device, name: str) -> torch.autocast:
    """``torch.autocast`` for ``"none"``, ``"bfloat16"`` or ``"float16"``."""
    dtype = getattr(torch, name, None) if name != "none" else None
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def phase_steps(
    module: nn.Module, hidden: Tensor, target: Tensor, amp: torch.autocast
) -> dict[str, Callable[[], None]]:
    """The measured calls: ``train`` (loss, backward; gradients reset first) where the module
    has a loss, and ``eval`` (target log-probabilities under ``no_grad``)."""
    params = list(module.parameters())

    def train() -> None:
        for x in (*params, hidden):
            x.grad = None
        with amp:
            loss = module.loss(hidden, target)
        loss.backward()

    def evaluate() -> None:
        with torch.no_grad(), amp:
            module.target_log_prob(hidden, target)

    steps = {"train": train, "eval": evaluate}
    if not hasattr(module, "loss"):
        del steps["train"]
    if not getattr(module, "evaluates", True):
        del steps["eval"]
    return steps


def measure(
    step: Callable[[], None],
    memory: CpuMemory | CudaMemory,
    device: torch.device,
    warmup: int,
    repeats: int = 1,
) -> dict[str, Any]:
    """``warmup`` untimed calls, then ``repeats`` timed ones: their seconds (wall and this
    process's CPU time: with one thread on a shared machine, the CPU time is the steadier), and
    the peak memory of all of them above what was allocated before the first."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    baseline = memory.start()
    for _ in range(warmup):
        step()
    times, cpu_times = [], []
    for _ in range(repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"times_s": times, "cpu_s": cpu_times, "extra_bytes": max(0, memory.peak() - baseline)}


def run_case(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Build the case's module, then time and measure its phases; return the raw numbers."""
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    memory = CudaMemory() if device.type == "cuda" else CpuMemory()
    torch.manual_seed(cfg["seed"])
    counts, hidden, target = make_inputs(
        cfg["tokens"], cfg["dim"], case["vocab_size"], cfg["seed"], device
    )
    start = time.perf_counter()
    module = build_module(case["spec"], cfg["dim"], case["vocab_size"], counts).to(device)
    result: dict[str, Any] = {"setup_s": time.perf_counter() - start, "memory": memory.method}
    params = list(module.parameters())
    result["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
    steps = phase_steps(module, hidden, target, autocast(device, cfg["autocast"]))
    for phase in cfg["phases"]:
        if phase not in steps:
            continue
        module.train(phase == "train")
        measured = measure(steps[phase], memory, device, cfg["warmup"])
        result[phase] = {
            "seconds": measured["times_s"][0],
            "cpu_seconds": measured["cpu_s"][0],
            "extra_bytes": measured["extra_bytes"],
        }
        for x in (*params, hidden):
            x.grad = None
    return result


def worker(payload: str) -> None:
    request = json.loads(payload)
    cap = request["cfg"]["max_memory_bytes"]
    if cap and request["cfg"]["device"] == "cpu":
        # Cap the address space: an allocation past it raises instead of exhausting the machine.
        limit = CpuMemory._status("VmSize") + cap
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(MARKER + json.dumps(run_case(request["case"], request["cfg"])), flush=True)


def run_in_subprocess(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps({"case": case, "cfg": cfg})
    command = [sys.executable, __file__, "--worker", payload]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=cfg["timeout_s"])
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {cfg['timeout_s']} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return {"status": "ok", **json.loads(line[len(MARKER) :])}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "reason": f"worker exit {proc.returncode}: {tail}"[:300]}


def run_in_process(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"status": "ok", **run_case(case, cfg)}
    except Exception as error:  # report and go on: one bad case must not end the run
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:300]}


# ---------------------------------------------------------------------------------------------
# The run: cases × rounds, then medians, ratios and tables.
def plan(specs: list[str], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    cases = []
    for vocab in cfg["vocab_sizes"]:
        for spec in specs:
            case = {"spec": spec, "vocab_size": vocab, "status": "pending"}
            naive_bytes = 12 * cfg["tokens"] * vocab  # logits, log-softmax, gradient: float32
            if parse_spec(spec)[0] == "naive" and naive_bytes > cfg["max_memory_bytes"]:
                case.update(status="skipped", reason=f"needs ~{naive_bytes / 1e9:.3g} GB")
            cases.append(case)
    return cases


def summarise(case: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Medians over the rounds that succeeded; the first failure's reason otherwise."""
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        case.update(status="failed", reason=runs[0]["reason"])
        return
    setup_s = statistics.median(r["setup_s"] for r in ok)
    case.update(status="ok", rounds=runs, setup_s=setup_s, memory=ok[0]["memory"])
    for phase in ("train", "eval"):
        done = [r[phase] for r in ok if phase in r]
        if done:
            case[phase] = {
                "median_s": statistics.median(r["seconds"] for r in done),
                "median_cpu_s": statistics.median(r["cpu_seconds"] for r in done),
                "extra_bytes": max(r["extra_bytes"] for r in done),
                "times_s": [r["seconds"] for r in done],
            }


def ratio(cases: list[dict[str, Any]], a: str, b: str, vocab: int, phase: str) -> dict | None:
    """``a`` over ``b`` at ``vocab``: time (medians) and peak extra memory."""
    found = [
        next((c for c in cases if c["spec"] == s and c["vocab_size"] == vocab), None)
        for s in (a, b)
    ]
    if any(c is None or c["status"] != "ok" or phase not in c for c in found):
        return None
    x, y = (c[phase] for c in found)
    # Below a MB the RSS counters measure page-cache noise, not the case.
    memory = x["extra_bytes"] / y["extra_bytes"] if y["extra_bytes"] >= 2**20 else None
    return {
        "time": x["median_s"] / y["median_s"],
        "cpu_time": x["median_cpu_s"] / y["median_cpu_s"] if y["median_cpu_s"] > 0 else None,
        "memory": memory,
    }


def markdown(report: dict[str, Any]) -> str:
    cfg, cases = report["config"], report["cases"]
    lines = [
        f"n = {cfg['tokens']} tokens, d = {cfg['dim']}, {cfg['device']}, {cfg['threads']} "
        f"threads, autocast {cfg['autocast']}, median of {cfg['rounds']} interleaved rounds; "
        f"{report['machine']['cpu']}, torch {report['machine']['torch']}.",
    ]
    for vocab in cfg["vocab_sizes"]:
        lines += [
            "",
            f"**V = {vocab:,}**",
            "",
            "| spec | train ms | train CPU ms | train extra MB | × naive time "
            "| eval ms | eval CPU ms | eval extra MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c in (c for c in cases if c["vocab_size"] == vocab):
            if c["status"] != "ok":
                lines.append(f"| `{c['spec']}` | {c['status']}: {c['reason']} | | | | | | |")
                continue
            cells = []
            for phase in ("train", "eval"):
                entry = c.get(phase)
                cells += (
                    [
                        f"{entry['median_s'] * 1e3:,.0f}",
                        f"{entry['median_cpu_s'] * 1e3:,.0f}",
                        f"{entry['extra_bytes'] / 2**20:,.0f}",
                    ]
                    if entry
                    else ["–", "–", "–"]
                )
            vs = ratio(cases, c["spec"], "naive", vocab, "train")
            cells.insert(3, "–" if vs is None else f"{vs['time']:.2f}")
            lines.append(f"| `{c['spec']}` | " + " | ".join(cells) + " |")
    if report["ratios"]:
        lines += [
            "",
            "| a / b | V | phase | time | CPU time | peak extra memory |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for r in report["ratios"]:
            memory = "–" if r["memory"] is None else f"{r['memory']:.2f}"
            cpu = "–" if r["cpu_time"] is None else f"{r['cpu_time']:.2f}"
            lines.append(
                f"| `{r['a']}` / `{r['b']}` | {r['vocab_size']:,} | {r['phase']} | "
                f"{r['time']:.2f} | {cpu} | {memory} |"
            )
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(x for x in info if x.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "gpu": gpu}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--heads", nargs="*", help="specs name[:key=value,...] (default: every baseline and head)")
    add("--vocab-sizes", type=int, nargs="+", default=list(VOCAB_SIZES))
    add("--dim", type=int, default=512, help="d, hidden size (default 512)")
    add("--tokens", type=int, default=4096, help="n, tokens per step (default 4096)")
    add("--rounds", type=int, default=3, help="interleaved rounds; times are medians (default 3)")
    add("--warmup", type=int, default=1, help="untimed calls before the timed one (default 1)")
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    add("--autocast", choices=["none", "bfloat16", "float16"], default="none")
    add("--threads", type=int, default=torch.get_num_threads())
    add("--phases", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    add("--max-memory-gb", type=float, default=None, help="per case (default: 70%% of RAM)")
    add("--timeout-s", type=float, default=1800.0, help="per case and round (default 1800)")
    add("--in-process", action="store_true", help="no subprocesses (memory figures polluted)")
    add(
        "--ratio",
        nargs="*",
        default=[],
        help="pairs a/b of specs to report a's time and memory over b's",
    )
    add("--seed", type=int, default=0)
    add("--output-dir", type=Path, default=Path("bench_results"))
    add("--quick", action="store_true", help="tiny sizes, one round, in-process: a smoke test")
    add("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab_sizes, args.dim, args.tokens, args.rounds = [300, 2_000], 16, 64, 1
        args.threads, args.in_process = 1, True
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker)
        return None
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_bytes = int(args.max_memory_gb * 1e9) if args.max_memory_gb else int(0.7 * ram)
    cfg = {
        **{k: v for k, v in vars(args).items() if k not in ("heads", "output_dir", "ratio")},
        "max_memory_bytes": max_bytes,
    }
    specs = default_specs() if args.heads is None else args.heads
    pairs = [pair.split("/", 1) for pair in args.ratio]
    for spec in [*specs, *(s for pair in pairs for s in pair)]:
        parse_spec(spec)  # fail before running anything
    cases = plan(specs, cfg)
    runner = run_in_process if args.in_process else run_in_subprocess
    todo = [c for c in cases if c["status"] == "pending"]
    runs: list[list[dict[str, Any]]] = [[] for _ in todo]
    for round_ in range(args.rounds):
        for case, done in zip(todo, runs, strict=True):
            done.append(runner(case, cfg))
            print(
                f"round {round_ + 1}/{args.rounds} V={case['vocab_size']} {case['spec']}: "
                f"{done[-1]['status']}",
                file=sys.stderr,
                flush=True,
            )
    for case, done in zip(todo, runs, strict=True):
        summarise(case, done)
    ratios = [
        {"a": a, "b": b, "vocab_size": v, "phase": phase, **found}
        for a, b in pairs
        for v in args.vocab_sizes
        for phase in ("train", "eval")
        if (found := ratio(cases, a, b, v, phase)) is not None
    ]
    report = {"config": cfg, "machine": machine(), "cases": cases, "ratios": ratios}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bench_heads.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output_dir / "bench_heads.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
