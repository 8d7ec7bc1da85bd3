"""Every head configuration that the conformance suite runs: ``(registered name, options)``.

Each head module's author lists its default and its notable variants here; the conformance suite
(``test_conformance.py``) parametrises over all of them.
"""

from __future__ import annotations

from typing import Any

HEAD_CASES: list[tuple[str, dict[str, Any]]] = [
    ("full", {}),
    ("full", {"chunk_size": 7}),
    ("full", {"chunk_size": 7, "label_smoothing": 0.1, "z_loss": 1e-3}),
    ("full", {"label_smoothing": 0.1}),
    ("importance", {"num_samples": 16}),
    ("importance", {"proposal": "log_uniform", "num_samples": 16, "chunk_size": 7}),
    ("nce", {"num_samples": 16}),
    ("nce", {"negative_sampling": True, "num_samples": 16}),
    ("class", {}),
    ("hierarchical", {}),
    ("hierarchical", {"tree": "huffman"}),
    ("hierarchical", {"tree": "kary", "branching": 3}),
    ("adaptive", {}),
    ("adaptive", {"cutoffs": [10, 30]}),
    (
        "adaptive",
        {"cutoffs": [10, 30], "head_bias": True, "tail_bias": True, "bias_init": "unigram"},
    ),
    ("adaptive", {"cutoffs": [10, 30], "tail_projection": False}),
    ("adaptive", {"cutoffs": [10, 30], "tail_dropout": 0.5}),
    ("spherical", {}),
    ("spherical", {"gram": False}),
    ("taylor", {}),
    ("taylor", {"gram": False}),
    ("cosine", {}),
    ("cosine", {"label_smoothing": 0.1, "z_loss": 1e-3}),
    ("rbf", {}),
    ("rbf", {"label_smoothing": 0.1, "z_loss": 1e-3}),
    ("prototypes", {}),
]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in sorted(options.items()))
