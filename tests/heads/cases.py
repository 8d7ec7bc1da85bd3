"""Every head configuration that the conformance suite runs: ``(registered name, options)``.

Each head module's author lists its default and its notable variants here; the conformance suite
(``test_conformance.py``) parametrises over all of them.
"""

from __future__ import annotations

from typing import Any

HEAD_CASES: list[tuple[str, dict[str, Any]]] = [
]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(options.items()))
