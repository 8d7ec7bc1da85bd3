"""The mixin's perplexity under 2-rank gloo DDP counts each sample once, by sample: a collate_fn
that reorders rows, or a custom batch_sampler (subprocess; ``ddp``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.test_ddp import _run

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).with_name("mixin_script.py")


def test_each_sample_counts_once_whatever_the_collate_fn_or_batch_sampler(tmp_path) -> None:
    """Before: 16,853.85 vs 16,731.82 with a reordering collate_fn (a real sample dropped, the
    repeat counted) and a silent 16,784.03 with a bucketing batch_sampler (repeat counted)."""
    proc = _run([str(SCRIPT)], tmp_path)
    lines = proc.stdout.splitlines()
    logged = {
        line.split()[1]: (float(line.split()[2]), float(line.split()[3]))
        for line in lines
        if line.startswith("ok ")
    }
    assert set(logged) == {"val", "test"}, proc.stdout
    for stage, (value, exact) in logged.items():
        assert value == pytest.approx(exact, rel=1e-6), stage
    warned = [line for line in lines if line.startswith("warned ")]
    assert len(warned) == 1 and warned[0].startswith("warned test "), proc.stdout
    assert "own batch_sampler (LengthBuckets)" in warned[0]
