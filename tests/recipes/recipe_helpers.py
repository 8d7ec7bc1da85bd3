"""Shared by the recipe tests (a plain module: ``conftest`` names are ambiguous across folders)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_recipe(name: str) -> ModuleType:
    module_name = f"recipes.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "recipes" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


TINY = [
    "--data", "synthetic", "--synthetic-vocab-size", "60", "--synthetic-tokens", "4000",
    "--batch-size", "4", "--bptt", "8", "--embed-dim", "16", "--d-model", "16",
    "--checkpoint-every", "2", "--no-progress-bar", "--threads", "1", "--accelerator", "cpu",
]  # fmt: skip
"""A recipe run of a few seconds: a 60-word synthetic language and a tiny LSTM."""

SLURM = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242",
         "SLURM_JOB_NAME": "lm-test", "SLURM_NODELIST": "127.0.0.1"}  # fmt: skip
"""A one-task SLURM job as Lightning's ``SLURMEnvironment.detect`` sees it (its job name is not
'bash' or 'interactive', which Lightning treats as a shell on an allocation)."""


def fake_scontrol(folder: Path) -> Path:
    """An ``scontrol`` in ``folder/bin`` (put it first on PATH) that appends its arguments to
    the file returned, as a requeue on a real cluster would be asked for."""
    calls = folder / "scontrol.calls"
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    script = folder / "bin" / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    script.chmod(0o755)
    return calls


def write_corpus(root: Path, seed: int = 0, words: int = 40) -> Path:
    """A local data folder (train/valid/test.txt) of random lines over ``words`` words."""
    import random

    rng = random.Random(seed)
    vocab = [f"word{i}" for i in range(words)]
    root.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 400), ("valid", 60), ("test", 60)):
        text = "\n".join(" ".join(rng.choices(vocab, k=rng.randint(3, 12))) for _ in range(lines))
        (root / f"{split}.txt").write_text(text + "\n", encoding="utf-8")
    return root
