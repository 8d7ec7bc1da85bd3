from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from lm_heads.similarity import (
    find_simlex,
    load_pairs,
    load_simlex,
    pairs_name,
    rank_average,
    spearman,
    word_similarity,
)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ORIGINAL = (
    "word1\tword2\tPOS\tSimLex999\tconc(w1)\tconc(w2)\tconcQ\tAssoc(USF)\tSimAssoc333\tSD(SimLex)\r\n"
    "old\tnew\tA\t1.58\t2.72\t2.81\t2\t7.25\t1\t0.41\r\n"
    "smart\tintelligent\tA\t9.2\t1.75\t2.46\t1\t7.11\t1\t0.67\r\n"
)
GENSIM = (
    "# The SimLex-999 Test data\n# Word 1\tWord 2\tHuman (mean)\n"
    "old\tnew\t1.58\nsmart\tintelligent\t9.2\n"
)


def test_loads_original_and_gensim_formats(tmp_path):
    (tmp_path / "orig.txt").write_bytes(ORIGINAL.encode())
    (tmp_path / "gensim.txt").write_text(GENSIM)
    expected = [("old", "new", 1.58), ("smart", "intelligent", 9.2)]
    assert load_simlex(tmp_path / "orig.txt") == expected
    assert load_simlex(tmp_path / "gensim.txt") == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("old\tnew\t1.5\nbroken\n", "line 2: expected"),
        ("old\tnew\t1.5\nold\tnew\tlots\n", "line 2: score 'lots' is not a number"),
        ("# only a comment\n", "no word pairs"),
    ],
)
def test_malformed_file_names_the_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_simlex(path)


WORDSIM = (
    "# WordSim-353, combined\nWord 1\tWord 2\tHuman (mean)\nlove\tsex\t6.77\ntiger\tcat\t7.35\n"
)
SIMVERB = "take\tremove\tV\t6.81\tSYNONYMS\nwalk\trun\tV\t5.96\tCOHYPONYMS\n"


def test_loads_wordsim353_and_simverb3500(tmp_path):
    (tmp_path / "wordsim353.tsv").write_text(WORDSIM)
    (tmp_path / "SimVerb-3500.txt").write_text(SIMVERB)
    assert load_pairs(tmp_path / "wordsim353.tsv") == [
        ("love", "sex", 6.77),
        ("tiger", "cat", 7.35),
    ]
    assert load_pairs(tmp_path / "SimVerb-3500.txt") == [("take", "remove", 6.81),
                                                        ("walk", "run", 5.96)]  # fmt: skip
    assert load_simlex is load_pairs


@pytest.mark.parametrize(
    ("name", "expected"),
    [("SimLex-999.txt", "SimLex-999"), ("wordsim353.tsv", "WordSim-353"),
     ("combined.tab", "WordSim-353"), ("SimVerb-3500.txt", "SimVerb-3500"), ("my.txt", "my.txt")],
)  # fmt: skip
def test_pairs_name(name, expected):
    assert pairs_name(Path("/data") / name) == expected


def test_unusable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pairs(tmp_path / "none.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_pairs(tmp_path / "bin.txt")


def test_find_simlex_beside_or_inside(tmp_path):
    (tmp_path / "simlex-999").mkdir()
    target = tmp_path / "simlex-999" / "SimLex-999.txt"
    target.write_text(GENSIM)
    (tmp_path / "wikitext-2").mkdir()
    assert find_simlex(tmp_path / "wikitext-2") == target
    assert find_simlex(tmp_path) == target
    assert find_simlex(None) is None
    assert find_simlex(tmp_path / "simlex-999" / "nothing") is None


def test_ranks_and_spearman_match_scipy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (200,), generator=gen).double()  # many ties
    y = x + torch.randint(0, 4, (200,), generator=gen).double()
    np.testing.assert_allclose(rank_average(x).numpy(), scipy.stats.rankdata(x.numpy()))
    expected = scipy.stats.spearmanr(x.numpy(), y.numpy()).statistic
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)
    assert spearman(x, torch.ones(200)) is None


def test_word_similarity_with_case_folding():
    stoi = {"Old": 0, "new": 1, "smart": 2, "intelligent": 3, "cat": 4}
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.9], [-1.0, 0.2]])
    pairs = [
        ("old", "new", 1.0),
        ("smart", "intelligent", 9.0),
        ("cat", "old", 0.5),
        ("dog", "cat", 5.0),
    ]
    result = word_similarity(embeddings, stoi, pairs)
    assert (result.covered, result.total, result.reason) == (3, 4, None)
    assert result.spearman == pytest.approx(1.0)
    strict = word_similarity(embeddings, stoi, pairs, lowercase=False)
    assert strict.spearman is None and strict.covered == 1 and "only 1 of 4" in strict.reason


def test_word_similarity_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[V, d\]"):
        word_similarity(torch.zeros(3), {}, [])


@pytest.mark.integration
def test_real_simlex_against_wikitext2_vocabulary():
    path = SHARED_DATA / "simlex-999" / "SimLex-999.txt"
    if not path.is_file():
        pytest.skip(f"SimLex-999 not found at {path}")
    pairs = load_simlex(path)
    assert len(pairs) == 999 and pairs[0] == ("old", "new", 1.58)
    assert find_simlex(SHARED_DATA / "wikitext-2") == path
    words = sorted({w for a, b, _ in pairs for w in (a, b)})
    assert len(words) == 1028
    result = word_similarity(torch.randn(len(words), 8), {w: i for i, w in enumerate(words)}, pairs)
    assert result.covered == 999 and abs(result.spearman) < 0.2
