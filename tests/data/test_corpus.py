import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_heads.data import LMDataModule
from lm_heads.data.corpus import (
    SentenceCorpus,
    expected_types,
    vocab_size_for_types,
    write_corpus,
    zipf_unigram,
)

REPO = Path(__file__).resolve().parents[2]


def test_vocab_size_is_chosen_to_reach_the_types():
    size = vocab_size_for_types(5000, 100_000, 1.1)
    assert size > 5000, "a Zipf tail is only partly seen: V must exceed the target"
    assert expected_types(zipf_unigram(size, 1.1), 100_000) == pytest.approx(5000, rel=1e-3)
    assert expected_types(zipf_unigram(size - 50, 1.1), 100_000) < 5000
    with pytest.raises(ValueError, match="far too few"):
        vocab_size_for_types(793_471, 1000, 1.1)


def test_written_corpus_reaches_the_vocabulary_and_sentence_shape(tmp_path):
    info = write_corpus(tmp_path, 200_000, shards=4, types=5000, heldout_tokens=2000)
    shards = sorted((tmp_path / "train").iterdir())
    assert [p.name for p in shards] == [f"train-0000{i}-of-00004.txt" for i in range(1, 5)]
    lines = [line.split() for p in shards for line in p.read_text().splitlines()]
    lengths = np.array([len(words) for words in lines])
    words = [w for line in lines for w in line]
    assert len(words) == 200_000 and lengths.min() >= 1
    # Distinct words: the expectation, up to a few standard deviations (~sqrt(types)).
    assert len(set(words)) == info["train_types"]
    assert info["train_types"] == pytest.approx(5000, abs=250)
    assert lengths.mean() == pytest.approx(27, rel=0.03)
    assert np.median(lengths) < lengths.mean(), "log-normal lengths are right-skewed"
    counts = np.sort(np.unique(words, return_counts=True)[1])[::-1]
    slope = np.polyfit(np.log(np.arange(1, 51)), np.log(counts[:50]), 1)[0]
    assert slope == pytest.approx(-1.1, abs=0.15)
    assert json.loads((tmp_path / "corpus.json").read_text())["train_types"] == len(set(words))
    dm = LMDataModule(str(tmp_path), cache_dir=tmp_path / "cache", progress=False)
    dm.setup()
    assert dm.vocab_size == info["cache_vocab_size"] == len(set(words)) + 2
    assert dm.splits["train"].size == 200_000 + lengths.size


def test_corpus_is_deterministic_by_seed(tmp_path):
    def text(folder: str, seed: int) -> bytes:
        write_corpus(tmp_path / folder, 30_000, shards=3, types=2000, seed=seed)
        return b"".join(p.read_bytes() for p in sorted((tmp_path / folder / "train").iterdir()))

    assert text("a", 1) == text("b", 1)
    assert text("a", 1) != text("c", 2)
    assert (tmp_path / "a" / "valid.txt").read_bytes() != (tmp_path / "a" / "test.txt").read_bytes()


def test_floor_matches_the_sampled_nll():
    corpus = SentenceCorpus(300_000, types=3000, num_classes=16, seed=3)
    ids, lengths = corpus.draw("train", 0, 0, 300_000)
    # The true model: word chain log-probs, plus log P(L) per line for the line ends.
    nll = -corpus.language.log_prob(ids).sum() - np.log(corpus.lengths[lengths[:-1]]).sum()
    per_token = nll / (ids.size + lengths.size - 1)
    assert per_token == pytest.approx(corpus.entropy_rate, rel=0.01)
    unigram = SentenceCorpus(1000, types=300, num_classes=1)
    mean, h_len = unigram.mean_length, unigram.length_entropy
    expected = (mean * unigram.unigram_entropy + h_len) / (mean + 1)
    assert unigram.entropy_rate == pytest.approx(expected, rel=1e-9)
    assert unigram.perplexity_floor == pytest.approx(math.exp(expected))


def test_render_puts_words_and_line_ends_in_place():
    corpus = SentenceCorpus(100, vocab_size=20, num_classes=2)
    text = corpus.render(np.array([0, 12, 3, 7, 19]), np.array([2, 3]))
    assert text == b"w0 w12\nw3 w7 w19\n"


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="tokens must be a positive int"):
        SentenceCorpus(0)
    with pytest.raises(ValueError, match="shards must be a positive int"):
        write_corpus(tmp_path, 100, shards=0)


def test_script_writes_a_folder(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_lm1b_like
    finally:
        sys.path.pop(0)
    argv = [str(tmp_path / "c"), "--tokens", "5_000", "--shards", "2", "--types", "500"]
    assert make_lm1b_like.main(argv) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["shards"] == 2 and "words/s" in out.err
    assert (tmp_path / "c" / "train" / "train-00002-of-00002.txt").is_file()
