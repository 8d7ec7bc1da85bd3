"""Word similarity: Spearman correlation between embedding cosines and human scores.

:func:`load_pairs` reads the common word-similarity sets, all as ``(word1, word2, score)``:

* SimLex-999 (Hill, Reichart and Korhonen, Computational Linguistics 2015): tab-separated with a
  header line and CRLF endings, columns ``word1, word2, POS, SimLex999, ...`` (score: column 4);
* SimVerb-3500 (Gerz et al., EMNLP 2016): ``word1 word2 POS score relation``, no header
  (score: column 4);
* WordSim-353 (Finkelstein et al. 2002) and gensim's reductions of these sets: ``word1 word2
  score`` (tabs or spaces), ``#`` comment lines, an optional header (``Word 1  Word 2  Human
  (mean)``).

:func:`pairs_name` names the set of a file (``SimLex-999``, ``WordSim-353``, ``SimVerb-3500``,
else the file name) for summaries.

:func:`word_similarity` scores an embedding table ``[V, d]`` (e.g. a head's output embeddings):
Spearman's ρ between ``cos(e[w1], e[w2])`` and the human score over the pairs whose two words are
in the vocabulary. Lookup tries the word as written, then (``lowercase=True``) any vocabulary
entry that lower-cases to it, preferring the most frequent id (WikiText is cased, SimLex is
lower-case: ``"Old"`` can stand for ``"old"`` when only the former occurs). Ties get average ranks,
as in ``scipy.stats.spearmanr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

SIMLEX_FILENAME = "SimLex-999.txt"


class SimilarityResult(NamedTuple):
    spearman: float | None
    """Spearman's ρ over the covered pairs; ``None`` when it is undefined (see ``reason``)."""
    covered: int
    """Pairs whose two words were found in the vocabulary."""
    total: int
    """All pairs."""
    reason: str | None = None
    """Why ``spearman`` is ``None`` (too few covered pairs, constant scores, ...)."""


def load_pairs(path: str | os.PathLike[str]) -> list[tuple[str, str, float]]:
    """``[(word1, word2, score)]`` from a SimLex-999, SimVerb-3500 or WordSim-353 file.

    Raises ``FileNotFoundError`` for a missing file or a directory, and ``ValueError`` naming
    the line of a malformed line (or the file, when it holds no pairs).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"similarity file {path} {what}; give a word-pair file")
    pairs: list[tuple[str, str, float]] = []
    try:
        with path.open(encoding="utf-8", newline=None) as handle:  # universal newlines eat CRLF
            for number, raw in enumerate(handle, start=1):
                pair = _parse_pair(raw, path, number, first=not pairs)
                if pair is not None:
                    pairs.append(pair)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason}): not word pairs") from None
    if not pairs:
        raise ValueError(f"{path} holds no word pairs")
    return pairs


load_simlex = load_pairs  # the name of earlier versions


def _parse_pair(raw: str, path: Path, number: int, first: bool) -> tuple[str, str, float] | None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) >= 4:
        score_field = fields[3]  # SimLex-999 and SimVerb-3500: word1 word2 POS score ...
    elif len(fields) == 3:
        score_field = fields[2]  # WordSim-353 and gensim's files: word1 word2 score
    else:
        raise ValueError(
            f"{path}, line {number}: expected 'word1<TAB>word2<TAB>score' or the SimLex-999 / "
            f"SimVerb-3500 columns, got {len(fields)} field(s): {line!r}"
        )
    try:
        score = float(score_field)
    except ValueError:
        if first:
            return None  # a header line (SimLex-999's, WordSim-353's)
        raise ValueError(f"{path}, line {number}: score {score_field!r} is not a number") from None
    return fields[0].strip(), fields[1].strip(), score


_SET_NAMES = {
    "simlex": "SimLex-999",
    "simverb": "SimVerb-3500",
    "wordsim": "WordSim-353",
    "ws353": "WordSim-353",
    "ws-353": "WordSim-353",
    "combined": "WordSim-353",
}


def pairs_name(path: str | os.PathLike[str]) -> str:
    """The name of the similarity set in ``path`` (from its file name), e.g. ``SimLex-999``."""
    name = Path(path).name
    for key, set_name in _SET_NAMES.items():
        if name.lower().startswith(key):
            return set_name
    return name


def find_simlex(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """``SimLex-999.txt`` in ``data_dir``, ``data_dir/simlex-999/`` or a sibling ``simlex-999/``."""
    if data_dir is None:
        return None
    root = Path(data_dir)
    for candidate in (
        root / SIMLEX_FILENAME,
        root / "simlex-999" / SIMLEX_FILENAME,
        root.parent / "simlex-999" / SIMLEX_FILENAME,
    ):
        if candidate.is_file():
            return candidate
    return None


def rank_average(values: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (float64)."""
    values = values.double()
    size = values.numel()
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    # Runs of equal values: each gets the mean of the positions it spans.
    new_run = torch.ones(size, dtype=torch.bool, device=values.device)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, size + 1, dtype=torch.float64, device=values.device)
    num_runs = int(run_id[-1]) + 1 if size else 0
    run_sum = torch.zeros(num_runs, dtype=torch.float64, device=values.device)
    run_len = torch.zeros_like(run_sum)
    run_sum.index_add_(0, run_id, positions)
    run_len.index_add_(0, run_id, torch.ones_like(positions))
    ranks = torch.empty_like(positions)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float | None:
    """Spearman's ρ (Pearson correlation of average ranks); ``None`` if either side is constant."""
    rx, ry = rank_average(x), rank_average(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    if float(denominator) == 0.0:
        return None
    return float((rx * ry).sum() / denominator)


def _lookup_table(stoi: Mapping[str, int], lowercase: bool) -> dict[str, int]:
    if not lowercase:
        return dict(stoi)
    table: dict[str, int] = {}
    # Lower ids are more frequent in lm_heads vocabularies: keep the first seen in id order.
    for word, index in sorted(stoi.items(), key=lambda item: item[1]):
        table.setdefault(word.lower(), index)
    return table


def word_similarity(
    embeddings: Tensor,
    stoi: Mapping[str, int],
    pairs: Sequence[tuple[str, str, float]],
    *,
    lowercase: bool = True,
    min_pairs: int = 3,
) -> SimilarityResult:
    """Spearman's ρ between cosine similarities of ``embeddings`` rows and the pairs' scores.

    Args:
        embeddings: ``[V, d]`` one row per word id.
        stoi: word → id.
        pairs: ``(word1, word2, human score)``.
        lowercase: also match a pair word to a vocabulary entry that lower-cases to it.
        min_pairs: fewer covered pairs than this gives ``spearman=None`` with a reason.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [V, d], got shape {list(embeddings.shape)}")
    exact = stoi
    folded = _lookup_table(stoi, lowercase) if lowercase else {}

    def find(word: str) -> int | None:
        if word in exact:
            return exact[word]
        return folded.get(word.lower()) if lowercase else None

    left, right, scores = [], [], []
    for first, second, score in pairs:
        a, b = find(first), find(second)
        if a is not None and b is not None and a < embeddings.shape[0] and b < embeddings.shape[0]:
            left.append(a)
            right.append(b)
            scores.append(float(score))
    covered, total = len(scores), len(pairs)
    if covered < min_pairs:
        why = f"only {covered} of {total} pairs have both words in the vocabulary"
        return SimilarityResult(None, covered, total, why)
    with torch.no_grad():
        table = embeddings.detach().double()
        index_a = torch.tensor(left, device=table.device)
        index_b = torch.tensor(right, device=table.device)
        cosine = torch.nn.functional.cosine_similarity(table[index_a], table[index_b], dim=-1)
        # Equal vectors can give cosines a few ulps apart: count those as the ties they are.
        cosine = torch.round(cosine, decimals=12)
        rho = spearman(cosine.cpu(), torch.tensor(scores, dtype=torch.float64))
    if rho is None:
        return SimilarityResult(None, covered, total, "cosines or scores are all equal")
    return SimilarityResult(rho, covered, total, None)
