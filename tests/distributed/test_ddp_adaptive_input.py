"""Adaptive input tied to the adaptive softmax under plain 2-rank gloo DDP (subprocess; ``ddp``)."""

from __future__ import annotations

import pytest

from tests.distributed.test_ddp import SCRIPT, _run

pytestmark = pytest.mark.ddp


def test_adaptive_input_trains_under_plain_ddp_in_every_tying_mode(tmp_path) -> None:
    proc = _run([str(SCRIPT), "adaptive_input"], tmp_path)
    counts = {
        line.split()[1]: int(line.split()[2])
        for line in proc.stdout.splitlines()
        if line.startswith("ok ")
    }
    assert set(counts) == {"untied", "tied", "tied_proj"}
    # Tying removes parameters: the shared ones are counted (and all-reduced) once.
    assert counts["untied"] > counts["tied"] > counts["tied_proj"]
