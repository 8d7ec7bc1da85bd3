"""Recipes are scripts, not package modules: tests load them by path (as litgpt does).

(No ``__init__.py`` in this folder: a test package named ``recipes`` would shadow the real one.)
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from recipe_helpers import REPO, TINY, load_recipe


@pytest.fixture(scope="session")
def lm() -> ModuleType:
    return load_recipe("lm")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture
def tiny_args(tmp_path, monkeypatch) -> list[str]:
    monkeypatch.chdir(tmp_path)  # Lightning writes nothing outside tmp_path
    return [*TINY, "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "run")]


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory) -> Path:
    """A checkpoint of a 2-step adaptive-softmax run on the tiny synthetic language."""
    root = tmp_path_factory.mktemp("trained")
    lm.main([*TINY, "--cache-dir", str(root / "cache"), "--output-dir", str(root / "run"),
             "--head", "adaptive", "--max-steps", "2"])  # fmt: skip
    return root / "run" / "checkpoints" / "last.ckpt"
