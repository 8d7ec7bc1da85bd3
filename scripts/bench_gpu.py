r"""The GPU run in one command: the CUDA-marked tests, then every head timed on the device.

On a CUDA machine (``scripts/bench_gpu.sh`` runs this; nothing is installed):

1. ``pytest -m cuda tests/cuda``: each head's forward, backward and log-probabilities on the
   device against a CPU float64 reference, bf16 autocast, and 2-GPU DDP where there are 2 GPUs;
2. the device's matmul peak, measured: a large float32 and bfloat16 matmul, timed;
3. every registered head and the baselines at V = 33,278 / 267,735 / 793,471, n = 8,192,
   d = 512, in float32 and under bf16 autocast: the training step (loss, backward) in ms (median
   of ``--repeats`` after ``--warmup``), the peak ``torch.cuda.max_memory_allocated`` above the
   model and its inputs, the host–device synchronisations of one step (counted as the warnings
   of ``torch.cuda.set_sync_debug_mode("warn")``), and for the softmax-over-V kernels (``full``,
   the baselines) the fraction of the 6·n·d·V-FLOP bound that the measured peak allows;
4. torch's ``F.linear_cross_entropy`` at several ``batch_chunk_size`` and its default options
   (its best is the row that the full head is compared with), Cut Cross-Entropy
   (``cut-cross-entropy``) and Liger's fused linear cross-entropy (``liger-kernel``) where they
   import; a note says which were not importable.

Cases run in one process, in order of priority, until ``--budget-s`` is spent (the rest are
listed as not run); a case that runs out of memory is recorded and the run goes on.

Without CUDA (or with ``--reduced``) the same steps run in a reduced mode in seconds: the CUDA
tests of one configuration per head with the CPU as the device under test
(``LM_HEADS_TEST_DEVICE=cpu``), tiny V and n, and no synchronisation counts. CI runs it
(``tests/scripts/test_bench_gpu.py``), so this script cannot rot unseen.

Usage::

    python scripts/bench_gpu.py --output-dir bench_results/gpu        # on a CUDA machine
    python scripts/bench_gpu.py --reduced --output-dir /tmp/gpu_smoke  # anywhere, seconds

Outputs in ``--output-dir``: ``bench_gpu.json`` (every number, the configuration, the device)
and ``bench_gpu.md`` (the tables).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
sys.path.insert(0, str(REPO))

import bench_heads as bh  # noqa: E402  (after the path: the shared head-building and timing)

FULL_SIZE = {"vocab_sizes": [33_278, 267_735, 793_471], "tokens": 8_192, "dim": 512}
REDUCED_SIZE = {"vocab_sizes": [500, 2_000], "tokens": 128, "dim": 16}
REDUCED_HEADS = ["full", "adaptive", "class"]
"""Heads timed in the reduced mode (every head still runs its tests)."""
LCE_CHUNKS = (1024, 2048, 4096, 8192)
"""``batch_chunk_size`` values tried for torch's LCE on the device (≥ n: one chunk)."""
BOUND_NAMES = ("full", "naive", "torch_lce", "cce", "liger")
"""Cases that score all V words per token: their FLOPs are 6·n·d·V (forward, ∂h, ∂W)."""


# ---------------------------------------------------------------------------------------------
# 1. The tests.
def pytest_command(reduced: bool) -> tuple[list[str], dict[str, str]]:
    """``pytest`` over the CUDA-marked tests; reduced: two tests (training step, bf16) of the
    first configuration of each head, with the CPU as the device under test."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if not reduced:
        return [*command, str(REPO / "tests" / "cuda")], env
    from tests.heads.cases import HEAD_CASES, case_id

    first: dict[str, str] = {}
    for case in HEAD_CASES:
        first.setdefault(case[0], case_id(case))
    module = REPO / "tests" / "cuda" / "test_cuda.py"
    nodes = []
    for cid in first.values():
        nodes += [
            f"{module}::test_loss_and_gradients_match_float64[train-{cid}]",
            f"{module}::test_bf16_autocast_is_finite_and_close[{cid}]",
        ]
    return [*command, *nodes], {**env, "LM_HEADS_TEST_DEVICE": "cpu"}


def run_tests(reduced: bool, timeout_s: float) -> dict[str, Any]:
    command, env = pytest_command(reduced)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "summary": f"timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines() or ["no output"]
    return {
        "status": "passed" if proc.returncode == 0 else "failed",
        "returncode": proc.returncode,
        "summary": lines[-1].strip("= "),
        "skipped": [line for line in lines if line.startswith("SKIPPED")],
        "seconds": time.perf_counter() - start,
        "tail": "" if proc.returncode == 0 else (proc.stdout + proc.stderr)[-4000:],
        "device_under_test": env.get("LM_HEADS_TEST_DEVICE", "cuda"),
    }


# ---------------------------------------------------------------------------------------------
# 2. The device's peak, measured.
def matmul_peak(device: torch.device, size: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of a ``size``³ matmul: the best of ``repeats`` timed calls after one warm-up."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


# ---------------------------------------------------------------------------------------------
# 3. One case: build, time, memory, synchronisations.
@contextmanager
def counting_syncs() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings that ``set_sync_debug_mode("warn")`` gives at each synchronising
    call (autograd replays its worker threads' warnings in the calling thread)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def count_syncs(step: Callable[[], None], device: torch.device) -> int | None:
    """Host–device synchronisations of one call of ``step`` (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with counting_syncs() as caught:
        step()
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def time_step(
    module: torch.nn.Module, precision: str, cfg: dict[str, Any], inputs: tuple
) -> dict[str, Any]:
    """One training step of ``module`` timed, measured and its synchronisations counted."""
    device = torch.device(cfg["device"])
    _, hidden, target = inputs
    memory = bh.CudaMemory() if device.type == "cuda" else bh.CpuMemory()
    amp = bh.autocast(device, "bfloat16" if precision == "bf16" else "none")
    step = bh.phase_steps(module, hidden, target, amp)["train"]
    try:
        measured = bh.measure(step, memory, device, cfg["warmup"], cfg["repeats"])
        syncs = count_syncs(step, device)
    finally:
        for x in (*module.parameters(), hidden):
            x.grad = None
    median = statistics.median(measured["times_s"])
    result = {
        "status": "ok",
        "ms": median * 1e3,
        "times_ms": [t * 1e3 for t in measured["times_s"]],
        "extra_bytes": measured["extra_bytes"],
        "memory": memory.method,
        "syncs_per_step": syncs,
    }
    return result


def failure(error: BaseException) -> dict[str, Any]:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return {"status": "failed", "reason": "out of memory"}
    return {"status": "failed", "reason": f"{type(error).__name__}: {error}"[:300]}


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def specs_for(cfg: dict[str, Any]) -> list[str]:
    heads = REDUCED_HEADS if cfg["reduced"] else list(bh.HEADS)
    n = cfg["tokens"]
    chunks = sorted({min(c, n) for c in LCE_CHUNKS}) if not cfg["reduced"] else [n // 4, n]
    lce = ["torch_lce", *(f"torch_lce:batch_chunk_size={c}" for c in chunks)]
    return ["naive", "full:chunk_size=auto", *lce, "cce", "liger", *heads]


def dense_bytes(spec: str, vocab: int, cfg: dict[str, Any]) -> int:
    """What a case that forms ``[rows, V]`` float32 logits needs at least (logits, softmax,
    gradient): the cases that cannot fit are skipped before they are tried."""
    name, options = bh.parse_spec(spec)
    rows = 0
    if name in ("naive", "cosine", "rbf", "prototypes") or spec == "full":
        rows = cfg["tokens"]
    elif name == "torch_lce" and options.get("batch_chunk_size"):
        rows = min(cfg["tokens"], options["batch_chunk_size"])
    return 12 * rows * vocab


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def run_timings(cfg: dict[str, Any], deadline: float) -> list[dict[str, Any]]:
    """Every (V, spec), each built once and timed in every precision, until ``deadline``."""
    device = torch.device(cfg["device"])
    rows: list[dict[str, Any]] = []
    for vocab in cfg["vocab_sizes"]:
        torch.manual_seed(cfg["seed"])
        inputs = bh.make_inputs(cfg["tokens"], cfg["dim"], vocab, cfg["seed"], device)
        for spec in specs_for(cfg):
            found = [{"spec": spec, "vocab_size": vocab, "precision": p} for p in cfg["precisions"]]
            rows += found
            name, need = bh.parse_spec(spec)[0], dense_bytes(spec, vocab, cfg)
            if not bh.importable(name):
                skip = {"status": "skipped", "reason": f"{bh.EXTERNAL[name]} is not importable"}
            elif time.perf_counter() > deadline:
                skip = {"status": "not run", "reason": "--budget-s spent"}
            elif need > free_bytes(device):
                skip = {"status": "skipped", "reason": f"needs ~{need / 1e9:.3g} GB"}
            else:
                skip = {}
            if skip:
                for row in found:
                    row.update(skip)
                continue
            try:
                torch.manual_seed(cfg["seed"])
                start = time.perf_counter()
                module = bh.build_module(spec, cfg["dim"], vocab, inputs[0]).to(device).train()
                setup_s = time.perf_counter() - start
            except Exception as error:  # one bad case must not end the run
                for row in found:
                    row.update(failure(error))
                release()
                continue
            for row in found:
                if time.perf_counter() > deadline:
                    row.update(status="not run", reason="--budget-s spent")
                    continue
                try:
                    row.update(time_step(module, row["precision"], cfg, inputs))
                    row["setup_s"] = setup_s
                except Exception as error:
                    row.update(failure(error))
                release()
                print(f"{row['precision']} V={vocab} {spec}: {_brief(row)}", file=sys.stderr)
            del module
            release()
        del inputs
    for row in rows:
        if row.get("status") == "ok" and bh.parse_spec(row["spec"])[0] in BOUND_NAMES:
            flops = 6 * cfg["tokens"] * cfg["dim"] * row["vocab_size"]
            row["bound_flops"] = flops
            row["achieved_flop_s"] = flops / (row["ms"] / 1e3)
    return rows


def _brief(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"{row['status']} ({row['reason']})"
    return f"{row['ms']:.2f} ms, {row['extra_bytes'] / 2**20:,.0f} MiB"


# ---------------------------------------------------------------------------------------------
# 4. Report.
def best_lce(rows: list[dict[str, Any]], vocab: int, precision: str) -> dict[str, Any] | None:
    """torch's LCE at its fastest setting among those measured."""
    done = [
        r
        for r in rows
        if r["spec"].startswith("torch_lce")
        and r["vocab_size"] == vocab
        and r["precision"] == precision
        and r["status"] == "ok"
    ]
    return min(done, key=lambda r: r["ms"]) if done else None


def annotate(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """The bound's fraction, against the measured peak of the same precision."""
    for r in rows:
        if r.get("achieved_flop_s"):
            r["peak_flop_s"] = peaks[r["precision"]]
            r["fraction_of_bound"] = r["achieved_flop_s"] / r["peak_flop_s"]


def markdown(report: dict[str, Any]) -> str:
    cfg, rows = report["config"], report["timings"]
    tests, dev = report["tests"], report["device"]
    mode = "reduced (CPU smoke test: sizes and heads cut down)" if cfg["reduced"] else "full"
    lines = [
        f"# bench_gpu: {dev['name']}",
        "",
        f"Mode: {mode}. n = {cfg['tokens']:,}, d = {cfg['dim']}, median of {cfg['repeats']} "
        f"training steps after {cfg['warmup']} warm-up; torch {dev['torch']}, CUDA "
        f"{dev['cuda']}; commit {report['commit']}.",
        "",
        f"**Tests** (`pytest -m cuda`, device under test: {tests.get('device_under_test')}): "
        f"{tests['status']}, {tests['summary']}.",
        "",
        "**Measured peak** (best of a large matmul): "
        + ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in report["peaks"].items())
        + ".",
    ]
    if report["notes"]:
        lines += ["", *(f"- {note}" for note in report["notes"])]
    for precision in cfg["precisions"]:
        for vocab in cfg["vocab_sizes"]:
            lines += [
                "",
                f"## {precision}, V = {vocab:,}",
                "",
                "| spec | train ms | peak extra MiB | syncs/step | of peak |",
                "|---|---:|---:|---:|---:|",
            ]
            for r in (r for r in rows if r["vocab_size"] == vocab and r["precision"] == precision):
                if r["status"] != "ok":
                    lines.append(f"| `{r['spec']}` | {r['status']}: {r['reason']} | | | |")
                    continue
                syncs = "–" if r["syncs_per_step"] is None else str(r["syncs_per_step"])
                frac = r.get("fraction_of_bound")
                lines.append(
                    f"| `{r['spec']}` | {r['ms']:,.2f} | {r['extra_bytes'] / 2**20:,.0f} | "
                    f"{syncs} | {'–' if frac is None else f'{frac:.2f}'} |"
                )
            best = best_lce(rows, vocab, precision)
            for ours in ("full", "full:chunk_size=auto"):
                mine = _row(rows, ours, vocab, precision)
                if best and mine:
                    memory = (
                        f"{mine['extra_bytes'] / best['extra_bytes']:.2f}×"
                        if best["extra_bytes"] >= 2**20  # below a MiB: noise
                        else "–"
                    )
                    lines.append(
                        f"\n`{ours}` / torch's LCE at its fastest (`{best['spec']}`): time "
                        f"{mine['ms'] / best['ms']:.2f}×, peak extra memory {memory}."
                    )
    lines += [
        "",
        "of peak: 6·n·d·V FLOPs (logits, ∂h, ∂W) over the step's time, as a fraction of the "
        "measured matmul peak of the same precision (cases that score all V words only).",
    ]
    return "\n".join(lines) + "\n"


def _row(rows: list[dict], spec: str, vocab: int, precision: str) -> dict[str, Any] | None:
    found = [
        r
        for r in rows
        if r["spec"] == spec and r["vocab_size"] == vocab and r["precision"] == precision
    ]
    return found[0] if found and found[0]["status"] == "ok" else None


def device_info(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "name": torch.cuda.get_device_name(device) if cuda else bh.machine()["cpu"],
        "type": device.type,
        "count": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        # "highest" (torch's default): float32 matmuls without TF32, in the peak and the heads.
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--device", default=None, help="default: cuda where available, else cpu (reduced)")
    add("--reduced", action="store_true", help="tiny sizes and few heads (default on CPU)")
    add("--output-dir", type=Path, default=Path("bench_results/gpu"))
    add("--budget-s", type=float, default=None, help="timings stop after (default 270; 60)")
    add("--repeats", type=int, default=None, help="timed steps per case (default 5; 1)")
    add("--warmup", type=int, default=2, help="untimed steps per case (default 2)")
    add("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    add("--vocab-sizes", type=int, nargs="+", default=None)
    add("--tokens", type=int, default=None)
    add("--dim", type=int, default=None)
    add("--skip-tests", action="store_true", help="timings only")
    add("--tests-timeout-s", type=float, default=150.0)
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.reduced = args.reduced or not args.device.startswith("cuda")
    size = REDUCED_SIZE if args.reduced else FULL_SIZE
    for key, value in size.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.repeats = args.repeats or (1 if args.reduced else 5)
    args.budget_s = args.budget_s or (60.0 if args.reduced else 270.0)
    if args.reduced:
        args.warmup = min(args.warmup, 1)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device {args.device}: no CUDA device here; run without --device (CPU mode)")
    cfg = {k: v for k, v in vars(args).items() if k != "output_dir"}
    cfg["output_dir"] = str(args.output_dir)
    torch.set_num_threads(1 if args.reduced else torch.get_num_threads())
    notes = []
    if device.type != "cuda":
        notes.append(
            "no CUDA device: reduced mode; the CUDA tests ran with the CPU as the device under "
            "test; memory is the process's peak RSS in one process (approximate); "
            "synchronisations are not counted (torch.cuda.set_sync_debug_mode needs CUDA)"
        )
    for name, module in bh.EXTERNAL.items():
        if not bh.importable(name):
            notes.append(f"`{name}` not measured: {module} is not importable here")
    tests = (
        {"status": "not run", "summary": "--skip-tests"}
        if args.skip_tests
        else run_tests(args.reduced, args.tests_timeout_s)
    )
    print(f"tests: {tests['status']}: {tests['summary']}", file=sys.stderr, flush=True)
    size, repeats = (256, 3) if args.reduced else (8192, 10)
    peaks = {
        "fp32": matmul_peak(device, size, torch.float32, repeats),
        "bf16": matmul_peak(device, size, torch.bfloat16, repeats),
    }
    # Everything imported so far lives to the end: out of the collector's sight, each of the
    # per-case collections below takes milliseconds instead of a second.
    gc.freeze()
    rows = run_timings(cfg, time.perf_counter() + args.budget_s)
    annotate(rows, peaks)
    report = {
        "config": cfg,
        "device": device_info(device),
        "machine": bh.machine(),
        "commit": commit(),
        "tests": tests,
        "peaks": peaks,
        "notes": notes,
        "timings": rows,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bench_gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.output_dir / "bench_gpu.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["tests"]["status"] in ("passed", "not run") else 1)
