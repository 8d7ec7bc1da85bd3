"""Two "nodes" on localhost (Lightning's own multi-node mode: MASTER_ADDR, MASTER_PORT,
NODE_RANK, --num-nodes 2 --devices 1), one of which fails its checks: neither waits for the other.

Before --dist-timeout, node 0 sat in "Initializing distributed ... MEMBER: 1/2" for torch's
default 30 minutes after node 1 had exited with its usual paragraph.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ddp

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 5  # --dist-timeout of the test: node 0 gives up this long after reaching the group


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_that_fails_its_checks_does_not_leave_the_other_waiting(tmp_path) -> None:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        del env[key]
    for key in ("RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )  # fmt: skip
    common = [
        sys.executable, str(REPO / "recipes" / "lm.py"), "--synthetic-vocab-size", "60",
        "--synthetic-tokens", "4000", "--batch-size", "4", "--bptt", "8", "--embed-dim", "16",
        "--d-model", "16", "--max-steps", "2", "--accelerator", "cpu", "--threads", "1",
        "--no-progress-bar", "--num-nodes", "2", "--devices", "1",
        "--dist-timeout", str(TIMEOUT_S),
    ]  # fmt: skip
    data = {0: ["--data", "synthetic"], 1: ["--data", str(tmp_path / "not-copied-to-node-1")]}
    start = time.perf_counter()
    nodes = {}
    for node in (0, 1):
        own = [
            "--cache-dir",
            str(tmp_path / f"cache{node}"),
            "--output-dir",
            str(tmp_path / f"run{node}"),
        ]
        nodes[node] = subprocess.Popen(
            [*common, *data[node], *own], env={**env, "NODE_RANK": str(node)}, cwd=tmp_path,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        outputs = {node: proc.communicate(timeout=180) for node, proc in nodes.items()}
    finally:
        for proc in nodes.values():
            proc.kill()
    elapsed = time.perf_counter() - start
    (out0, err0), (out1, err1) = outputs[0], outputs[1]

    assert nodes[1].returncode == 2, err1[-3000:]  # its own mistake, at once
    assert "not-copied-to-node-1" in err1 and "Initializing distributed" not in out1 + err1
    assert out1 == ""  # refused while its options were parsed, before torch loaded

    assert nodes[0].returncode == 1, (out0[-2000:], err0[-3000:])
    last = err0.strip().splitlines()[-1]
    assert last.startswith("recipes/lm.py: error: rank 0 gave up waiting for the other ranks")
    assert f"--dist-timeout {TIMEOUT_S} s" in last and "another rank or node failed" in last
    assert "Traceback" not in err0
    # Start-up of two interpreters on a loaded machine, then the timeout: far from 30 minutes.
    assert elapsed < 150, elapsed
