"""Which code a result came from: the git commit of the checkout and whether its code differed.

Recorded in every ``results.json`` (``git``), so a number can be traced to the code that made it
(docs/study/PLAN.md counts a run only at a known commit). Only the code decides ``dirty``
(``lm_heads/``, ``recipes/``, ``scripts/``, ``pyproject.toml``, untracked files there included):
results and notes written beside a running study do not change what trains.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODE = ("lm_heads", "recipes", "scripts", "pyproject.toml")


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}``; both ``None`` outside a git checkout (no git, or an
    installed copy), with ``reason`` saying why."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True, timeout=30)  # fmt: skip
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", *CODE)
    except (OSError, subprocess.SubprocessError) as error:
        return {"commit": None, "dirty": None, "reason": f"not a git checkout here: {error}"}
    return {"commit": commit, "dirty": bool(changed)}
