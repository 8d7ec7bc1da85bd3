"""Recipes are scripts, not package modules: tests load them by path (as litgpt does).

(No ``__init__.py`` in this folder: a test package named ``recipes`` would shadow the real one.)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

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


@pytest.fixture(scope="session")
def lm() -> ModuleType:
    return load_recipe("lm")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
