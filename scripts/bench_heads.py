r"""Speed and memory of every head, side by side with the baselines, over vocabulary sizes.

For each head (or ``--heads`` spec) and each vocabulary size ``V`` this times

- the **training step of the head alone**: ``hidden [n, d]`` (requires grad) → ``head(hidden,
  target).loss`` → ``backward()`` (gradients set to ``None`` before each step, as
  ``zero_grad(set_to_none=True)`` does, so their allocation is part of the step), and
- the **evaluation path**: ``head.target_log_prob(hidden, target)`` under ``torch.no_grad()``
  (in ``eval()`` mode: sampled heads evaluate exactly, margin heads without margin),

and reports the median time over ``--repeats`` (after a warmup call), tokens/s, the peak memory
of each phase above the model and its inputs, and achieved GFLOP/s against a plain matmul of the
same shape ``[n, d] × [d, V]`` measured in the same run (the machine's roofline).

Baselines measured in the same run, at every ``V``:

- ``naive``: ``F.cross_entropy(F.linear(h, W, b), t)``, the textbook full softmax;
- ``torch_adaptive[...]``: ``torch.nn.AdaptiveLogSoftmaxWithLoss`` with the cutoffs and
  ``div_value`` read from each built ``adaptive`` head;
- ``spherical:gram=False`` / ``taylor:gram=False``: the naive formula of the Gram heads;
- ``matmul``: ``F.linear(h, W)`` alone, the roofline.

Synthetic data: counts follow Zipf's law (``count ∝ 1/rank``, id 0 the most frequent word), and
targets are drawn from that unigram, so frequency-structured heads see realistic cluster loads.

Memory: on CPU each case runs in a fresh subprocess and reads the peak resident set size of each
phase (``VmHWM``, reset between phases by writing ``5`` to ``/proc/self/clear_refs``) minus the
resident size after setup; on CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats``
minus the memory allocated after setup. A case whose estimated peak exceeds ``--max-memory-gb``
is skipped ("skipped: needs ~X GB"); a case that crashes or runs out of memory is reported as
failed, and the run goes on.

FLOPs are counted analytically (a multiply-add is 2 FLOPs; backward is twice forward; work that a
head recomputes is not counted, so GFLOP/s is "useful" throughput, as in MFU). Where the count is
not meaningful (data-dependent tree paths we cannot see) it is reported as n/a.

Usage::

    python scripts/bench_heads.py                       # every head, V = 33k, 267k, 793k
    python scripts/bench_heads.py --quick               # seconds: smoke test of this script
    python scripts/bench_heads.py --heads full full:chunk_size=auto adaptive \
        adaptive:cutoffs=[20000,60000] --vocab-sizes 267735 --tokens 8192 --device cuda

Outputs in ``--output-dir`` (default ``bench_results/``): ``bench_heads.json`` (every raw number
plus machine info), ``bench_heads.md`` (tables for BENCHMARKS.md) and ``bench_heads.png``.
"""

from __future__ import annotations

import argparse
import ast
import gc
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm_heads.registry import HEADS, build_head, head_options

# ---------------------------------------------------------------------------------------------
# What runs by default.
VOCAB_SIZES = (33_278, 267_735, 793_471)
"""WikiText-2, WikiText-103, One Billion Word."""

REFERENCE_VOCAB = 267_735
"""The issue's targets are checked at this size (WikiText-103)."""

PUBLISHED_CUTOFFS: dict[int, list[int]] = {
    267_735: [20_000, 60_000],  # WikiText-103 (Grave et al. 2017; Baevski & Auli 2019)
    793_471: [4_000, 40_000, 200_000],  # One Billion Word (Grave et al. 2017)
}
"""Adaptive softmax cutoffs from the literature, compared with ``cutoffs="auto"``."""

QUICK_PUBLISHED_CUTOFFS: dict[int, list[int]] = {2_000: [200, 800]}
"""Stand-in for ``--quick``: exercises the comparison path at a tiny size."""

QUICK_OPTIONS: dict[str, dict[str, Any]] = {"prototypes": {"proto_steps": 5}}
"""``--quick`` only: options that keep a head's set-up to milliseconds (shown in the label)."""

EXTRA_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("full", {"chunk_size": "auto"}),
    ("adaptive", {"cutoffs": "auto"}),
    ("importance", {"num_samples": 8192}),
    ("nce", {"num_samples": 8192}),
]
"""Variants benchmarked beside each head's defaults, when the head has the option and its
default differs (the issue's targets refer to them)."""

SAMPLES_KEYS = ("num_samples", "num_negatives", "k", "K", "samples")
"""Option / attribute names under which sampled heads keep their number of samples ``K``."""

MARKER = "@@BENCH_RESULT@@"


# ---------------------------------------------------------------------------------------------
# Head specs: "name" or "name:key=value,key=value" (values are Python literals or bare strings).
def parse_value(text: str) -> Any:
    """``"4096"`` → 4096, ``"[20000,60000]"`` → list, ``"False"`` → False, ``"auto"`` → "auto"."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, so list values may contain commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"adaptive:cutoffs=[20000,60000],div_value=4"`` → ``("adaptive", {...})``."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in split_top_level(rest):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad option {item!r} in head spec {spec!r}: expected key=value")
        options[key.strip()] = parse_value(value.strip())
    return name.strip(), options


def format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def spec_label(name: str, options: dict[str, Any]) -> str:
    if not options:
        return name
    return name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in options.items())


def default_specs() -> list[str]:
    """Every registered head with its defaults, plus the variants of ``EXTRA_VARIANTS``."""
    specs = list(HEADS)
    for name, options in EXTRA_VARIANTS:
        if name not in HEADS:
            continue
        defaults = head_options(name)
        if all(k in defaults and defaults[k] != v for k, v in options.items()):
            specs.append(spec_label(name, options))
    return specs


def quick_spec(spec: str) -> str:
    """``spec`` with the ``QUICK_OPTIONS`` its head accepts (explicit options win)."""
    name, options = parse_spec(spec)
    accepted = head_options(name)
    extra = {k: v for k, v in QUICK_OPTIONS.get(name, {}).items() if k in accepted}
    return spec_label(name, {**extra, **options}) if extra else spec


def option_value(name: str, options: dict[str, Any], keys: Iterable[str]) -> Any:
    """The value of the first of ``keys`` set in ``options`` or among the head's defaults."""
    defaults = head_options(name) if name in HEADS else {}
    for key in keys:
        if key in options:
            return options[key]
        if key in defaults:
            return defaults[key]
    return None


# ---------------------------------------------------------------------------------------------
# The cases of a run: one per (head spec or baseline, V).
def plan_cases(
    specs: list[str], vocab_sizes: list[int], published: dict[int, list[int]]
) -> list[dict[str, Any]]:
    """Cases in run order: per ``V``, the baselines first, then the heads."""
    parsed = []
    for spec in specs:
        name, options = parse_spec(spec)
        if name not in HEADS:
            raise SystemExit(f"unknown head {name!r} in {spec!r}; registered: {', '.join(HEADS)}")
        parsed.append((name, options))
    cases: list[dict[str, Any]] = []
    for vocab in vocab_sizes:
        per_v: list[dict[str, Any]] = [
            {"label": "matmul", "kind": "matmul", "role": "baseline"},
            {"label": "naive", "kind": "naive", "role": "baseline"},
        ]
        heads = list(parsed)
        if "adaptive" in HEADS and vocab in published:
            for cutoffs in (published[vocab], "auto"):
                if ("adaptive", {"cutoffs": cutoffs}) not in heads:
                    heads.append(("adaptive", {"cutoffs": cutoffs}))
        for name, options in heads:
            if name in ("spherical", "taylor") and options.get("gram", True) is not False:
                per_v.append(
                    {
                        "label": f"{name}:gram=False",
                        "kind": "head",
                        "role": "baseline",
                        "head": name,
                        "options": {**options, "gram": False},
                    }
                )
        for name, options in heads:
            per_v.append(
                {
                    "label": spec_label(name, options),
                    "kind": "head",
                    "role": "head",
                    "head": name,
                    "options": options,
                }
            )
        # torch's adaptive softmax runs after ours, with the cutoffs ours reports ("auto"
        # measures the machine: rebuilding it in another process could choose differently).
        for name, options in heads:
            if name == "adaptive":
                per_v.append(
                    {
                        "label": f"torch_adaptive[{spec_label(name, options)}]",
                        "kind": "torch_adaptive",
                        "role": "baseline",
                        "head": name,
                        "options": options,
                        "match": spec_label(name, options),
                    }
                )
        seen: set[str] = set()
        for case in per_v:
            if case["label"] not in seen:
                seen.add(case["label"])
                cases.append({**case, "vocab_size": vocab})
    return cases


def own_baseline(case: dict[str, Any]) -> str | None:
    """The label of the baseline a head is compared with besides ``naive``."""
    if case["kind"] != "head" or case["role"] != "head":
        return None
    if case["head"] == "adaptive":
        return f"torch_adaptive[{case['label']}]"
    if case["head"] in ("spherical", "taylor") and case["options"].get("gram", True):
        return spec_label(case["head"], {**case["options"], "gram": False})
    return None


# ---------------------------------------------------------------------------------------------
# Memory estimates, to skip what cannot fit (generous: a skipped case costs less than a crash).
def zipf_mass(vocab: int, start: int, stop: int) -> float:
    """Unigram mass of ranks ``[start, stop)`` under ``p ∝ 1/(rank+1)``."""

    def harmonic(m: int) -> float:
        return math.log(m) + 0.5772 + 1 / (2 * m) if m > 0 else 0.0

    return (harmonic(stop) - harmonic(start)) / harmonic(vocab)


def estimate_bytes(case: dict[str, Any], n: int, d: int) -> dict[str, float]:
    """Estimated peak bytes (model + inputs + the phase's extra) of ``train`` and ``eval``.

    The factors (how many ``[n, V]`` float32 tensors, how many copies of ``W``) are the measured
    peaks of a run at n=512, d=256, V=33,278, rounded up by 10-30%.
    """
    vocab = case["vocab_size"]
    name = case.get("head", case["kind"])
    options = case.get("options", {})
    params = 4.0 * vocab * (d + 1)
    logits = 4.0 * n * vocab
    base = params + 8.0 * n * d + 0.5e9  # + torch runtime
    if case["kind"] == "matmul":
        return {"eval": base + 1.2 * logits}
    if case["kind"] == "torch_adaptive" or name == "adaptive":
        cutoffs = options.get("cutoffs")
        if not isinstance(cutoffs, (list, tuple)):
            cutoffs = [c for c in (4_000, 40_000, 200_000) if c < vocab]
        bounds = [0, *[c for c in cutoffs if c < vocab], vocab]
        width = bounds[1] + len(bounds) - 2
        tails = itertools.pairwise(bounds[1:])
        width += sum(zipf_mass(vocab, lo, hi) * (hi - lo) for lo, hi in tails)
        width = max(width, vocab / 8)  # "auto" cutoffs are unknown before the head is built
        return {"train": base + params + 16.0 * n * width, "eval": base + 12.0 * n * width}
    chunk = option_value(name, options, ["chunk_size"]) if name in HEADS else None

    def chunk_bytes(chunk: Any) -> float:  # "auto": ~512 MB of float32 logits per chunk
        rows = max(1, 2**29 // (4 * vocab)) if chunk == "auto" else int(chunk)
        return 4.0 * min(rows, n) * vocab

    chunk_logits = 0.0 if chunk is None else chunk_bytes(chunk)
    # The full-softmax family evaluates chunk by chunk in every mode; the naive baseline does not.
    full_eval = base + 3 * chunk_bytes("auto" if chunk is None else chunk)
    if case["kind"] == "naive":
        return {"train": base + params + 3 * logits, "eval": base + 2.5 * logits}
    if name == "full":
        train = 3 * (chunk_logits or logits)
        return {"train": base + params + train, "eval": full_eval}
    if name in ("spherical", "taylor"):
        if option_value(name, options, ["gram"]) is False:
            return {"train": base + params + 6.5 * logits, "eval": base + 4.5 * logits}
        return {"train": base + 3 * params, "eval": base + 1.5 * params}
    if name in ("importance", "nce"):
        k = option_value(name, options, SAMPLES_KEYS) or 8192
        sampled = 4.0 * n * min(int(k) + 1, vocab)
        return {"train": base + 2 * params + 6 * sampled, "eval": full_eval}
    if name in ("class", "hierarchical"):
        width = 4 * math.sqrt(vocab) + 4096
        return {
            "train": base + 3.5 * params + 16.0 * n * width,
            "eval": base + params + 16.0 * n * width,
        }
    if name == "prototypes":
        return {"train": base + 5 * logits, "eval": base + 2.5 * logits}
    # cosine, rbf and anything unknown: several [n, V] float32 tensors.
    return {"train": base + params + 7 * logits, "eval": base + 3.5 * logits}


def estimate_matmuls(case: dict[str, Any], n: int, d: int) -> dict[str, float]:
    """Estimated cost of each phase in units of one ``[n, d] × [d, V]`` matmul (for the ETA)."""
    vocab = case["vocab_size"]
    name = case.get("head", case["kind"])
    options = case.get("options", {})
    if case["kind"] == "matmul":
        return {"eval": 1.0}
    if case["kind"] == "naive" or name == "full":
        return {"train": 3.2, "eval": 1.1}
    if name == "prototypes":
        return {"train": 1.5, "eval": 1.1}
    if name in ("cosine", "rbf"):
        return {"train": 4.0, "eval": 1.5}
    if name in ("spherical", "taylor"):
        if option_value(name, options, ["gram"]) is False:
            return {"train": 3.5, "eval": 1.2}
        return {"train": 3.0 * d / n + 0.01, "eval": d / n + 0.01}  # WᵀW: 2Vd² = d/n matmuls
    if name in ("importance", "nce"):
        k = option_value(name, options, SAMPLES_KEYS) or 8192
        return {"train": 3.5 * min(1.0, (int(k) + 1) / vocab) + 0.02, "eval": 1.1}
    if name in ("class", "hierarchical"):
        return {"train": 30 / math.sqrt(vocab), "eval": 10 / math.sqrt(vocab)}  # ~2√V rows/token
    return {"train": 0.3, "eval": 0.1}  # adaptive: head cluster + the tails' share


def predicted_seconds(matmuls: float, matmul_s: float, cfg: dict[str, Any]) -> float:
    """Wall time of a phase under :func:`time_calls`'s policy, from its cost in matmuls."""
    step = matmuls * matmul_s
    warm = 0 if step >= cfg["slow_s"] else min(cfg["warmup"], 1)
    timed = min(cfg["repeats"], max(1, int(cfg["budget_s"] // max(step, 1e-9))))
    return step * (warm + timed)


def probe_matmul(n: int, d: int, vocab: int, cfg: dict[str, Any]) -> float:
    """Seconds of one ``F.linear([n, d], [V, d])``, timed on a slice of at most 8192 words."""
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    width = min(vocab, 8192)
    hidden = torch.randn(n, d, device=device)
    weight = torch.randn(width, d, device=device)
    F.linear(hidden, weight)
    _sync(device)
    start = time.perf_counter()
    F.linear(hidden, weight)
    _sync(device)
    return (time.perf_counter() - start) * vocab / width


# ---------------------------------------------------------------------------------------------
# Memory readers.
def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


class CpuMemory:
    """Peak RSS of a phase: ``VmHWM`` reset through ``clear_refs`` (Linux), else ``ru_maxrss``."""

    def __init__(self) -> None:
        self.method = "VmHWM after clear_refs"
        try:
            self._reset()
            _proc_status("VmHWM")
        except OSError:
            self.method = "ru_maxrss (not resettable: an upper bound after the first phase)"

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")

    def start(self) -> int:
        gc.collect()
        if self.method.startswith("VmHWM"):
            self._reset()
            return _proc_status("VmRSS")
        return self._maxrss() if self.method.startswith("ru") else 0

    def peak(self) -> int:
        if self.method.startswith("VmHWM"):
            return _proc_status("VmHWM")
        return self._maxrss()

    @staticmethod
    def _maxrss() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CudaMemory:
    method = "torch.cuda.max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> int:
        gc.collect()
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


# ---------------------------------------------------------------------------------------------
# The modules a case times.
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


class TorchAdaptive(nn.Module):
    """``nn.AdaptiveLogSoftmaxWithLoss`` behind the same two calls."""

    def __init__(self, d: int, vocab: int, cutoffs: list[int], div_value: float) -> None:
        super().__init__()
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
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def loss(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.head(hidden, target).loss

    def target_log_prob(self, hidden: Tensor, target: Tensor) -> Tensor:
        return self.head.target_log_prob(hidden, target)


def zipf_counts(vocab: int) -> Tensor:
    """Integer-valued counts of a 10⁹-token corpus with ``count ∝ 1/rank`` (id = rank)."""
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    counts = 1e9 / (ranks * (torch.log(torch.tensor(float(vocab))) + 0.5772))
    return counts.floor().clamp_min(1.0)


def adaptive_structure(head: nn.Module, vocab: int) -> tuple[list[int], float]:
    """Cutoffs (without ``V``) and ``div_value`` of a built adaptive head."""
    cutoffs = getattr(head, "cutoffs", None)
    if cutoffs is None:
        raise AttributeError("the adaptive head exposes no `cutoffs`: cannot build the baseline")
    if isinstance(cutoffs, Tensor):
        cutoffs = cutoffs.tolist()
    cutoffs = [int(c) for c in cutoffs if 0 < int(c) < vocab]
    div_value = float(getattr(head, "div_value", 4.0))
    return cutoffs, div_value


def adaptive_flops(n_per_cluster: list[int], cutoffs: list[int], vocab: int, d: int, div: float):
    """Forward FLOPs of the adaptive softmax: head on all tokens, each tail on its own tokens."""
    n = n_per_cluster[0]
    bounds = [*cutoffs, vocab]
    flops = 2.0 * n * d * (cutoffs[0] + len(cutoffs))
    for i, count in enumerate(n_per_cluster[1:]):
        size = bounds[i + 1] - bounds[i]
        dim = max(1, int(d // div ** (i + 1)))
        flops += 2.0 * count * (d * dim + dim * size)
    return flops


def count_flops(case: dict[str, Any], module: nn.Module, target: Tensor, n: int, d: int):
    """``(train, eval)`` model FLOPs, ``None`` where not meaningful."""
    vocab = case["vocab_size"]
    full = 2.0 * n * d * vocab
    name = case.get("head")
    if case["kind"] == "matmul":
        return None, full
    if case["kind"] == "naive" or name in ("full", "cosine", "rbf"):
        return 3 * full, full
    if case["kind"] == "torch_adaptive" or name == "adaptive":
        cutoffs, div = case["info"]["cutoffs"], case["info"]["div_value"]
        bounds = torch.tensor([0, *cutoffs, vocab], device=target.device)
        cluster = torch.bucketize(target, bounds[1:], right=True)
        per = torch.bincount(cluster, minlength=len(cutoffs) + 1).tolist()
        forward = adaptive_flops([n, *per[1:]], cutoffs, vocab, d, div)
        return 3 * forward, forward
    if name in ("spherical", "taylor"):
        if not module.head.gram:
            return 3 * full, full
        # Gram WᵀW (2Vd²; its backward is one matmul too), Wᵀb and W1 (4Vd); per token hᵀGh,
        # h·Wᵀb, h·W1, h·w_t (2nd² + 6nd, backward twice that).
        gram = 2.0 * vocab * d * d + 4.0 * vocab * d
        per_token = 2.0 * n * d * d + 6.0 * n * d
        return 2 * gram + 3 * per_token, gram + per_token
    if name in ("importance", "nce"):
        k = next(
            (getattr(module.head, key) for key in SAMPLES_KEYS if hasattr(module.head, key)), None
        )
        if k is None:
            return None, full
        return 3 * 2.0 * n * d * (int(k) + 1), full
    head = getattr(module, "head", None)
    if name == "prototypes":
        # The CE's cosines with all V prototypes (no gradient to z with ce_weight=0) and the
        # projection d → d'.
        proto_dim = head.prototypes.shape[1]
        cos, proj = 2.0 * n * proto_dim * vocab, 2.0 * n * d * proto_dim
        backward_cos = cos if getattr(head, "ce_weight", 0.0) else 0.0
        return cos + backward_cos + 3 * proj, cos + proj
    if all(hasattr(head, key) for key in ("path_nodes", "path_mask", "node_width")):
        # Tree heads (class, hierarchical): every node on the target's path scores all its rows.
        rows = (head.node_width[head.path_nodes] * head.path_mask).sum(-1)  # [V]
        forward = 2.0 * d * float(rows[target].sum())
        return 3 * forward, forward
    return None, None


# ---------------------------------------------------------------------------------------------
# One case, in whatever process runs it.
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], None], device: torch.device, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Median over up to ``repeats`` timed calls after ``warmup`` untimed ones.

    Slow cases would blow the run's time budget, so: a warmup call slower than ``slow_s`` counts
    as the first sample (first-call overheads are negligible next to it), and repeats stop once
    the next one would take the phase past ``budget_s`` (at least one sample always)."""
    times: list[float] = []

    def timed() -> float:
        start = time.perf_counter()
        call()
        _sync(device)
        return time.perf_counter() - start

    warm = 0
    for _ in range(cfg["warmup"]):
        first = timed()
        if first >= cfg["slow_s"]:
            times.append(first)
            break
        warm += 1
    while not times or (len(times) < cfg["repeats"] and sum(times) + times[-1] <= cfg["budget_s"]):
        times.append(timed())
    return {"times_s": times, "median_s": statistics.median(times), "warmup_calls": warm}


def head_build_options(case: dict[str, Any], n: int) -> dict[str, Any]:
    """The spec's options, plus ``batch_tokens=n`` for ``cutoffs="auto"`` (it optimises for the
    batch it will see) unless the spec sets it."""
    options = dict(case["options"])
    if (
        case["head"] == "adaptive"
        and option_value("adaptive", options, ["cutoffs"]) == "auto"
        and "batch_tokens" in head_options("adaptive")
    ):
        options.setdefault("batch_tokens", n)
    return options


def run_case(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Build the case's module, time and measure its phases; return the raw numbers."""
    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    n, d, vocab = cfg["tokens"], cfg["dim"], case["vocab_size"]
    memory = CudaMemory(device) if device.type == "cuda" else CpuMemory()
    torch.manual_seed(cfg["seed"])
    result: dict[str, Any] = {"memory_method": memory.method, "info": {}}
    case = {**case, "info": result["info"]}

    start = time.perf_counter()
    counts = zipf_counts(vocab)
    generator = torch.Generator().manual_seed(cfg["seed"])
    target = torch.multinomial(counts.float(), n, replacement=True, generator=generator)
    hidden = torch.randn(n, d, generator=generator)
    kind = case["kind"]
    if kind == "matmul":
        module: nn.Module = Matmul(d, vocab)
    elif kind == "naive":
        module = NaiveFull(d, vocab)
    elif kind == "torch_adaptive":
        if "cutoffs" in case:  # what our head chose, passed on by the driver
            cutoffs, div_value = case["cutoffs"], case["div_value"]
        else:
            options = head_build_options(case, n)
            reference = build_head(case["head"], d, vocab, counts=counts, **options)
            cutoffs, div_value = adaptive_structure(reference, vocab)
            del reference
        module = TorchAdaptive(d, vocab, cutoffs, div_value)
        result["info"].update(cutoffs=cutoffs, div_value=div_value)
    else:
        options = head_build_options(case, n)
        result["info"]["options"] = options
        head = build_head(case["head"], d, vocab, counts=counts, **options)
        module = HeadLoss(head)
        if case["head"] == "adaptive":
            cutoffs, div_value = adaptive_structure(head, vocab)
            result["info"].update(cutoffs=cutoffs, div_value=div_value)
    del counts
    module.to(device)
    hidden = hidden.to(device).requires_grad_(True)
    target = target.to(device)
    params = list(module.parameters())
    result["param_bytes"] = sum(p.numel() * p.element_size() for p in params)
    _sync(device)
    result["setup_s"] = time.perf_counter() - start

    autocast = cfg["autocast"]
    amp_dtype = torch.bfloat16 if autocast == "none" else getattr(torch, autocast)
    amp = torch.autocast(device.type, dtype=amp_dtype, enabled=autocast != "none")

    def train_step() -> None:
        for p in params:
            p.grad = None
        hidden.grad = None
        with amp:
            loss = module.loss(hidden, target)
        loss.backward()

    def eval_step() -> None:
        with torch.no_grad(), amp:
            module.target_log_prob(hidden, target)

    # Evaluation first: with a non-resettable peak (ru_maxrss) the larger phase comes last.
    phases = [p for p in ("eval", "train") if p in case["phases"]]
    for phase in phases:
        module.train(phase == "train")
        baseline = memory.start()
        try:
            timing = time_calls(train_step if phase == "train" else eval_step, device, cfg)
        except torch.OutOfMemoryError as error:
            result[phase] = {"status": "failed", "reason": f"out of memory: {error}"[:300]}
            continue
        except Exception as error:  # report and go on: one bad head must not end the run
            result[phase] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:300]}
            continue
        peak = memory.peak()
        for p in params:
            p.grad = None
        hidden.grad = None
        result[phase] = {
            "status": "ok",
            **timing,
            "tokens_per_s": n / timing["median_s"],
            "baseline_bytes": baseline,
            "peak_bytes": peak,
            "extra_bytes": max(0, peak - baseline),
        }
    try:
        flops = count_flops(case, module, target, n, d)
    except Exception as error:
        flops = (None, None)
        result["info"]["flops_error"] = f"{type(error).__name__}: {error}"
    for phase, count in zip(("train", "eval"), flops, strict=True):
        if count is not None and result.get(phase, {}).get("status") == "ok":
            result[phase]["flops"] = count
            result[phase]["gflops_per_s"] = count / result[phase]["median_s"] / 1e9
    return result


def run_in_subprocess(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps({"case": case, "cfg": cfg})
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", payload],
            capture_output=True,
            text=True,
            timeout=cfg["case_timeout_s"],
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {cfg['case_timeout_s']} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return {"status": "ok", **json.loads(line[len(MARKER) :])}
    if proc.returncode < 0:
        signal = -proc.returncode
        why = " (killed: likely out of memory)" if signal == 9 else ""
        return {"status": "failed", "reason": f"worker died with signal {signal}{why}"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "reason": f"worker exit {proc.returncode}: {tail}"[:300]}


def run_in_process(case: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"status": "ok", **run_case(case, cfg)}
    except Exception as error:
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:300]}
    finally:
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Derived figures: ratios, roofline, targets.
def find(results: list[dict[str, Any]], label: str, vocab: int) -> dict[str, Any] | None:
    return next((r for r in results if r["label"] == label and r["vocab_size"] == vocab), None)


def phase_value(result: dict[str, Any] | None, phase: str, key: str) -> float | None:
    if result is None:
        return None
    entry = result.get(phase)
    if not isinstance(entry, dict) or entry.get("status") != "ok":
        return None
    return entry.get(key)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Per case: time and memory ratios to ``naive`` and to its own baseline; % of roofline."""
    for result in results:
        vocab = result["vocab_size"]
        naive = find(results, "naive", vocab)
        matmul = find(results, "matmul", vocab)
        own = own_baseline(result)
        own_result = find(results, own, vocab) if own else None
        roofline = phase_value(matmul, "eval", "gflops_per_s")
        result["ratios"] = {
            "baseline": own,
            "roofline_gflops_per_s": roofline,
        }
        for phase in ("train", "eval"):
            time_s = phase_value(result, phase, "median_s")
            mem = phase_value(result, phase, "extra_bytes")
            result["ratios"][phase] = {
                "time_vs_naive": ratio(time_s, phase_value(naive, phase, "median_s")),
                "memory_vs_naive": ratio(mem, phase_value(naive, phase, "extra_bytes")),
                "time_vs_baseline": ratio(time_s, phase_value(own_result, phase, "median_s")),
                "memory_vs_baseline": ratio(mem, phase_value(own_result, phase, "extra_bytes")),
                "roofline_fraction": ratio(phase_value(result, phase, "gflops_per_s"), roofline),
            }


def _chunked(r: dict[str, Any]) -> bool:
    return option_value("full", r["options"], ["chunk_size"]) is not None


def _k8192(r: dict[str, Any]) -> bool:
    return option_value(r["head"], r["options"], SAMPLES_KEYS) == 8192


def _gram(r: dict[str, Any]) -> bool:
    return r["options"].get("gram", True) is not False


TARGETS: list[tuple[str, str, Callable[[dict[str, Any]], bool], str, str, float, str]] = [
    # (target, head, which specs, metric, ratio key, bound, "max" | "min" | "speedup")
    ("full chunked vs naive", "full", _chunked, "train peak memory ratio",
     "memory_vs_naive", 0.15, "max"),
    ("full chunked vs naive", "full", _chunked, "train time ratio", "time_vs_naive", 1.1, "max"),
    ("adaptive vs torch AdaptiveLogSoftmaxWithLoss, same cutoffs", "adaptive", lambda r: True,
     "train time ratio", "time_vs_baseline", 0.8, "max"),
    ("adaptive, default cutoffs, vs naive", "adaptive", lambda r: "cutoffs" not in r["options"],
     "train speed-up ×", "time_vs_naive", 20, "speedup"),
    ("class vs naive", "class", lambda r: not r["options"], "train speed-up ×",
     "time_vs_naive", 10, "speedup"),
    ("hierarchical vs naive", "hierarchical", lambda r: not r["options"], "train speed-up ×",
     "time_vs_naive", 10, "speedup"),
    ("importance (K=8192) vs naive", "importance", _k8192, "train speed-up ×",
     "time_vs_naive", 10, "speedup"),
    ("nce (K=8192) vs naive", "nce", _k8192, "train speed-up ×", "time_vs_naive", 10, "speedup"),
    ("spherical (Gram) vs its naive formula", "spherical", _gram, "train speed-up ×",
     "time_vs_baseline", 5, "speedup"),
    ("taylor (Gram) vs its naive formula", "taylor", _gram, "train speed-up ×",
     "time_vs_baseline", 5, "speedup"),
    ("full (each mode) vs matmul roofline", "full", lambda r: True, "train GFLOP/s fraction",
     "roofline_fraction", 0.7, "min"),
]  # fmt: skip
"""The issue's targets table, checked on the training step."""


def check_targets(
    results: list[dict[str, Any]], reference_vocab: int
) -> tuple[int | None, list[dict[str, Any]]]:
    """The issue's targets, each with the measured ratio and PASS / FAIL / n/a.

    Checked at ``reference_vocab`` when it was measured, else at the largest ``V`` measured. A
    head that is not part of the run gets no row; one that is, but without the configuration
    the target names (e.g. no ``K=8192`` spec), gets an n/a row.
    """
    measured = sorted({r["vocab_size"] for r in results})
    if not measured:
        return None, []
    vocab = reference_vocab if reference_vocab in measured else measured[-1]
    rows: list[dict[str, Any]] = []
    for target, name, select, metric, key, bound, kind in TARGETS:
        if not any(r.get("head") == name and r["role"] == "head" for r in results):
            continue
        cases = [
            r
            for r in results
            if r["vocab_size"] == vocab and r["role"] == "head" and r.get("head") == name
        ]
        cases = [r for r in cases if select(r)] or [None]
        for case in cases:
            value = case["ratios"]["train"][key] if case and "ratios" in case else None
            if kind == "speedup":
                value = 1.0 / value if value else None
            if value is None:
                verdict = "n/a"
            elif kind == "max":
                verdict = "PASS" if value <= bound else "FAIL"
            else:
                verdict = "PASS" if value >= bound else "FAIL"
            rows.append(
                {
                    "target": target,
                    "case": case["label"] if case else f"{name} (not configured)",
                    "metric": metric,
                    "bound": ("≤ " if kind == "max" else "≥ ") + f"{bound:g}",
                    "value": value,
                    "verdict": verdict,
                }
            )
    return vocab, rows


def cutoff_comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``adaptive:cutoffs=auto`` against the published cutoffs at the sizes that have them."""
    rows = []
    for vocab in sorted({r["vocab_size"] for r in results}):
        auto = find(results, "adaptive:cutoffs=auto", vocab)
        for r in results:
            if r["vocab_size"] != vocab or r["kind"] != "head" or r.get("head") != "adaptive":
                continue
            if r is auto:
                continue
            cutoffs = r["options"].get("cutoffs")
            if not isinstance(cutoffs, list) or auto is None:
                continue
            rows.append(
                {
                    "vocab_size": vocab,
                    "published": r["label"],
                    "auto_cutoffs": auto.get("info", {}).get("cutoffs"),
                    "train_time_ratio_auto_vs_published": ratio(
                        phase_value(auto, "train", "median_s"), phase_value(r, "train", "median_s")
                    ),
                    "eval_time_ratio_auto_vs_published": ratio(
                        phase_value(auto, "eval", "median_s"), phase_value(r, "eval", "median_s")
                    ),
                }
            )
    for row in rows:
        value = row["train_time_ratio_auto_vs_published"]
        # "At least as fast", with 5% allowance for timing noise on shared machines.
        row["verdict"] = "n/a" if value is None else ("PASS" if value <= 1.05 else "FAIL")
    return rows


# ---------------------------------------------------------------------------------------------
# Reports.
def machine_info(cfg: dict[str, Any]) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": cfg["threads"],
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ram_gb": _total_ram() / 1e9,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if cfg["device"].startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(cfg["device"]))
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 1e9, cuda=torch.version.cuda)
    return info


def _total_ram() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            return float(meminfo.readline().split()[1]) * 1024
    except OSError:
        return 16e9


def _fmt(value: float | None, spec: str = ".3g", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _mb(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def markdown(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
    methods = [r["memory_method"] for r in report["results"] if "memory_method" in r]
    method = methods[0] if methods else "nothing measured"
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['cpu_cores']} cores, torch "
        f"{machine['torch_version']} ({machine['torch_threads']} threads)"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
        + f"; device `{cfg['device']}`, autocast {cfg['autocast']}.",
        f"n = {cfg['tokens']} tokens, d = {cfg['dim']}; median of up to {cfg['repeats']} "
        f"repeats after {cfg['warmup']} warmup; memory = peak above model and inputs "
        f"({method}).",
        "",
    ]
    header = (
        "| head | train ms | train tok/s | × naive time | train MB | × naive mem | × own baseline "
        "| eval ms | eval tok/s | eval × naive | GFLOP/s (train, else eval) | % roofline |"
    )
    for vocab in sorted({r["vocab_size"] for r in report["results"]}):
        lines += [f"### V = {vocab:,}", "", header, "|" + "---|" * 12]
        at_v = [x for x in report["results"] if x["vocab_size"] == vocab]
        for r in sorted(at_v, key=lambda x: x["role"] != "baseline"):
            label = f"`{r['label']}`" + (" (baseline)" if r["role"] == "baseline" else "")
            if r["status"] != "ok":
                reason = str(r["reason"]).replace("|", "/")
                lines.append(f"| {label} | {r['status']}: {reason} |" + " |" * 10)
                continue
            ratios = r.get("ratios", {})
            tr, ev = ratios.get("train", {}), ratios.get("eval", {})
            own = tr.get("time_vs_baseline")
            gflops = phase_value(r, "train", "gflops_per_s")
            roofline = tr.get("roofline_fraction")
            if gflops is None:  # matmul and heads without a training count: the eval path
                gflops = phase_value(r, "eval", "gflops_per_s")
                roofline = ev.get("roofline_fraction")
            cells = [
                label,
                _phase_ms(r, "train"),
                _fmt(phase_value(r, "train", "tokens_per_s"), ",.0f"),
                _fmt(tr.get("time_vs_naive"), ".3f"),
                _mb(phase_value(r, "train", "extra_bytes")),
                _fmt(tr.get("memory_vs_naive"), ".3f"),
                _fmt(own, ".3f") + (f" ({ratios['baseline']})" if own else ""),
                _phase_ms(r, "eval"),
                _fmt(phase_value(r, "eval", "tokens_per_s"), ",.0f"),
                _fmt(ev.get("time_vs_naive"), ".3f"),
                _fmt(gflops, ".1f"),
                _fmt(_pct(roofline), ".0f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    vocab, targets = report["targets_vocab"], report["targets"]
    if targets:
        lines += [
            f"### Targets (at V = {vocab:,})",
            "",
            "| target | case | metric | bound | measured | verdict |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['target']} | `{t['case']}` | {t['metric']} | {t['bound']} | "
            f"{_fmt(t['value'], '.3g')} | {t['verdict']} |"
            for t in targets
        ]
        lines.append("")
    if report["cutoffs"]:
        lines += [
            "### Adaptive cutoffs: `auto` vs published",
            "",
            "| V | published | auto cutoffs | train time auto / published | eval | verdict |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['vocab_size']:,} | `{c['published']}` | {c['auto_cutoffs']} | "
            f"{_fmt(c['train_time_ratio_auto_vs_published'], '.3f')} | "
            f"{_fmt(c['eval_time_ratio_auto_vs_published'], '.3f')} | {c['verdict']} |"
            for c in report["cutoffs"]
        ]
        lines.append("")
    return "\n".join(lines)


def _phase_ms(result: dict[str, Any], phase: str) -> str:
    """Median milliseconds, or why the phase has none."""
    entry = result.get(phase)
    if isinstance(entry, dict) and entry.get("status") in ("failed", "skipped"):
        return f"{entry['status']}: {entry.get('reason', '')}".replace("|", "/")[:80]
    return _fmt(_ms(phase_value(result, phase, "median_s")), ".4g")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def plot(report: dict[str, Any], path: Path) -> list[str]:
    """Train time, train memory and eval time vs V, one line per case; returns the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("train", "median_s", "training step (s)"),
        ("train", "extra_bytes", "training peak memory (bytes)"),
        ("eval", "median_s", "target_log_prob (s)"),
    ]
    labels = list(dict.fromkeys(r["label"] for r in report["results"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.5))
    for ax, (phase, key, title) in zip(axes, panels, strict=True):
        for i, label in enumerate(labels):
            points = sorted(
                (r["vocab_size"], phase_value(r, phase, key))
                for r in report["results"]
                if r["label"] == label and phase_value(r, phase, key)
            )
            if not points:
                continue
            baseline = any(
                r["role"] == "baseline" for r in report["results"] if r["label"] == label
            )
            ax.plot(
                *zip(*points, strict=True),
                linestyle="--" if baseline else "-",
                color=plt.cm.tab20(i % 20),
                marker="os^Dv<>ph*"[i % 10],
                label=label,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vocabulary size V")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize="small")
    cfg = report["config"]
    fig.suptitle(f"lm_heads: n={cfg['tokens']}, d={cfg['dim']}, device {cfg['device']}")
    fig.tight_layout(rect=(0, 0.06 + 0.025 * math.ceil(len(names) / 4), 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return names


# ---------------------------------------------------------------------------------------------
# Driver.
def progress(cases: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Callable[[str], None]]]:
    """Yield each case with a ``done(message)`` callback: tqdm if installed, else stderr lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None and sys.stderr.isatty():
        bar = tqdm(cases, unit="case", file=sys.stderr, dynamic_ncols=True)
        for case in bar:
            bar.set_description(f"{case['label']} V={case['vocab_size']}")
            yield case, lambda message: bar.write(message, file=sys.stderr)
        bar.close()
        return
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case['label']} V={case['vocab_size']} ...", file=sys.stderr)
        yield case, lambda message: print(message, file=sys.stderr)


def summary(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return (
            f"  {result['label']} V={result['vocab_size']}: {result['status']}: {result['reason']}"
        )
    parts = []
    for phase in ("train", "eval"):
        entry = result.get(phase)
        if isinstance(entry, dict) and entry.get("status") == "ok":
            parts.append(
                f"{phase} {1e3 * entry['median_s']:.4g} ms, {entry['extra_bytes'] / 2**20:,.0f} MB"
            )
        elif isinstance(entry, dict):
            parts.append(f"{phase} {entry['status']}: {entry.get('reason', '')}")
    return f"  {result['label']} V={result['vocab_size']}: " + "; ".join(parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--heads",
        nargs="*",
        default=None,
        help="head specs name[:key=value,...] (none: baselines only), e.g. full "
        "full:chunk_size=auto adaptive:cutoffs=[20000,60000] (default: every registered head "
        "plus the variants the targets need)",
    )
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=list(VOCAB_SIZES))
    parser.add_argument("--dim", type=int, default=512, help="d, hidden size")
    parser.add_argument("--tokens", type=int, default=None, help="n, tokens per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per phase (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=10.0,
        help="per phase: no further repeat once it would take the phase past this many seconds",
    )
    parser.add_argument(
        "--slow-s",
        type=float,
        default=2.0,
        help="a warmup call slower than this counts as the first sample",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--autocast", choices=["none", "bfloat16", "float16"], default="none")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--phases", nargs="+", choices=["train", "eval"], default=["train", "eval"])
    parser.add_argument(
        "--max-memory-gb",
        type=float,
        default=None,
        help="skip cases whose estimated peak exceeds this (default: 70%% of RAM, or 90%% of "
        "GPU memory)",
    )
    parser.add_argument("--case-timeout-s", type=float, default=1800.0)
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run cases in this process (faster start, but peak memory is polluted by earlier "
        "cases); the default on CPU is a fresh subprocess per case",
    )
    parser.add_argument(
        "--subprocess", action="store_true", help="with --quick: still one subprocess per case"
    )
    parser.add_argument("--reference-vocab", type=int, default=REFERENCE_VOCAB)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path("bench_results"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, 1 repeat, in-process: a smoke test of this script (seconds)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cases, memory estimates and ETA; run none"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.quick:
        # Explicit options win, so CI can run e.g. `--quick --heads full`.
        if "--vocab-sizes" not in given:
            args.vocab_sizes = [300, 2_000]
        if "--dim" not in given:
            args.dim = 16
        if "--threads" not in given:
            args.threads = 1  # CI machines are shared: tiny ops drown in thread spin-waits
        args.tokens = args.tokens or 64
        args.repeats, args.warmup = 1, 1
        args.in_process = args.in_process or "--subprocess" not in given
    args.tokens = args.tokens or 4096
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        payload = json.loads(args.worker)
        result = run_case(payload["case"], payload["cfg"])
        print(MARKER + json.dumps(result), flush=True)
        return None

    cuda = args.device.startswith("cuda")
    if args.max_memory_gb is None:
        if cuda:
            total = torch.cuda.get_device_properties(torch.device(args.device)).total_memory
            args.max_memory_gb = 0.9 * total / 1e9
        else:
            args.max_memory_gb = 0.7 * _total_ram() / 1e9
    cfg = {
        "device": args.device,
        "autocast": args.autocast,
        "threads": args.threads,
        "tokens": args.tokens,
        "dim": args.dim,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "slow_s": args.slow_s,
        "phases": args.phases,
        "seed": args.seed,
        "case_timeout_s": args.case_timeout_s,
        "max_memory_gb": args.max_memory_gb,
        "in_process": args.in_process,
        "quick": args.quick,
    }
    specs = default_specs() if args.heads is None else args.heads
    if args.quick and args.heads is None:
        specs = [quick_spec(spec) for spec in specs]
    published = QUICK_PUBLISHED_CUTOFFS if args.quick else PUBLISHED_CUTOFFS
    cases = plan_cases(specs, sorted(args.vocab_sizes), published)
    print(
        f"{len(cases)} cases: {len(specs)} head specs + baselines × V in "
        f"{sorted(args.vocab_sizes)}; "
        f"n={args.tokens}, d={args.dim}, device {args.device}, max {args.max_memory_gb:.1f} GB",
        file=sys.stderr,
    )

    # ETA from one probe matmul: tells whether the run fits before it starts.
    matmul_s = probe_matmul(args.tokens, args.dim, 8192, cfg) / 8192
    etas = []
    for case in cases:
        estimate = estimate_bytes(case, args.tokens, args.dim)
        units = estimate_matmuls(case, args.tokens, args.dim)
        eta = 0.0 if args.in_process else 3.0 + 4e-9 * case["vocab_size"] * args.dim * 4
        for phase in args.phases:
            if phase in units and estimate[phase] <= args.max_memory_gb * 1e9:
                eta += predicted_seconds(units[phase], matmul_s * case["vocab_size"], cfg)
        etas.append(eta)
        if args.dry_run:
            print(
                f"{case['label']:40s} V={case['vocab_size']:>8,}  ~{eta:5.0f} s  "
                + "  ".join(f"{p} ~{b / 1e9:.1f} GB" for p, b in estimate.items()),
                file=sys.stderr,
            )
    print(
        f"matmul probe: {2 * args.tokens * args.dim / matmul_s / 1e9:.1f} GFLOP/s; "
        f"estimated run time ~{sum(etas) / 60:.0f} min",
        file=sys.stderr,
    )
    if args.dry_run:
        return None

    runner = run_in_process if args.in_process else run_in_subprocess
    results = []
    started = time.perf_counter()
    for case, done in progress(cases):
        estimate = estimate_bytes(case, args.tokens, args.dim)
        # The roofline (matmul's eval) always runs: every GFLOP/s figure is relative to it.
        wanted = ["eval"] if case["kind"] == "matmul" else args.phases
        limit = args.max_memory_gb * 1e9
        runnable = [p for p in wanted if p in estimate and estimate[p] <= limit]
        too_big = [p for p in wanted if p in estimate and p not in runnable]
        ours = find(results, case.get("match", ""), case["vocab_size"])
        if ours is not None and ours.get("info", {}).get("cutoffs") == []:
            result = {
                "status": "skipped",
                "reason": "our head chose no tail cluster; torch's needs at least one cutoff",
            }
        elif not runnable:
            need = max(estimate[p] for p in too_big) if too_big else 0.0
            result = {"status": "skipped", "reason": f"needs ~{need / 1e9:.0f} GB"}
        else:
            job = {**case, "phases": runnable}
            if ours is not None and "cutoffs" in ours.get("info", {}):
                job.update(cutoffs=ours["info"]["cutoffs"], div_value=ours["info"]["div_value"])
            case_start = time.perf_counter()
            result = runner(job, cfg)
            result["wall_s"] = time.perf_counter() - case_start
            for phase in too_big:
                result[phase] = {
                    "status": "skipped",
                    "reason": f"needs ~{estimate[phase] / 1e9:.0f} GB",
                }
        result = {**case, **result, "estimated_bytes": estimate}
        results.append(result)
        done(summary(result))

    add_ratios(results)
    targets_vocab, targets = check_targets(results, args.reference_vocab)
    report = {
        "config": cfg,
        "machine": machine_info(cfg),
        "specs": specs,
        "registered_heads": list(HEADS),
        "wall_s": time.perf_counter() - started,
        "results": results,
        "targets_vocab": targets_vocab,
        "targets": targets,
        "cutoffs": cutoff_comparison(results),
    }
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    report["plot_labels"] = plot(report, out / "bench_heads.png")
    table = markdown(report)
    (out / "bench_heads.md").write_text(table + "\n")
    (out / "bench_heads.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table)
    print(
        f"wrote {out / 'bench_heads.json'}, {out / 'bench_heads.md'}, {out / 'bench_heads.png'} "
        f"({report['wall_s']:.0f} s)",
        file=sys.stderr,
    )
    return report


if __name__ == "__main__":
    main()
