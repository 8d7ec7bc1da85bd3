"""What an install needs: the heads import with torch alone, extras are named when missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_heads_import_without_lightning_or_data_tools() -> None:
    proc = _python(
        "import sys\n"
        "import lm_heads\n"
        "from lm_heads import HEADS, AdaptiveInput, build_head, tie_weights\n"
        "build_head('full', 4, 10)\n"
        "heavy = ('lightning', 'pytorch_lightning', 'torchmetrics', 'tokenizers', 'datasets')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_missing_data_extra_names_it() -> None:
    proc = _python("import sys\nsys.modules['tokenizers'] = None\nimport lm_heads.data\n")
    assert proc.returncode != 0
    assert "ImportError: lm_heads.data needs tokenizers" in proc.stderr
    assert "pip install 'lm-heads[data]'" in proc.stderr


def test_core_dependencies_are_torch_lightning_and_torchmetrics() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"]}
    assert names == {"torch", "lightning", "torchmetrics"}
    extras = project["optional-dependencies"]
    assert {"data", "recipes", "dev"} <= set(extras)
    assert "lm-heads[data,recipes,test,bench]" in extras["dev"]
