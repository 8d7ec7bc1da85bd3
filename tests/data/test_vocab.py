import json

import numpy as np
import pytest
import torch

from lm_heads.data import EOS, UNK, Vocabulary

LINES = ["b a c", "a b", "c a d", ""]  # a:3 b:2 c:2 d:1, 4 lines


def test_build_sorts_by_frequency_ties_by_first_occurrence():
    vocab = Vocabulary.build(LINES)
    # <eos> = 4 (one per line); b and c tie at 2: b came first; <unk> has count 0.
    assert vocab.itos == [EOS, "a", "b", "c", "d", UNK]
    assert vocab.counts.tolist() == [4, 3, 2, 2, 1, 0]
    assert vocab.counts.dtype == torch.long
    assert (vocab.unk_id, vocab.eos_id) == (5, 0)
    assert len(vocab) == 6 and vocab.stoi["c"] == 3


def test_min_count_and_max_size_fold_into_unk():
    vocab = Vocabulary.build(LINES, min_count=2)
    assert "d" not in vocab and vocab.counts[vocab.unk_id] == 1
    small = Vocabulary.build(LINES, max_size=4)  # <eos>, <unk>, a, b
    assert small.itos == [EOS, UNK, "a", "b"]  # <unk> = c + d = 3 ties with a: specials first
    assert len(small) == 4
    assert int(small.counts.sum()) == int(Vocabulary.build(LINES).counts.sum())
    assert small.counts[small.unk_id] == 3  # c (2) + d (1)


def test_encode_appends_eos_and_maps_unknown_words():
    vocab = Vocabulary.build(LINES, min_count=2)
    ids = vocab.encode_lines(["a zzz d", ""])
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == ["a", UNK, UNK, EOS, EOS]


def test_counts_equal_bincount_of_training_ids():
    vocab = Vocabulary.build(LINES, min_count=2)
    ids = vocab.encode_lines(LINES)
    assert np.bincount(ids, minlength=len(vocab)).tolist() == vocab.counts.tolist()


def test_chunked_encoding_matches_whole(monkeypatch):
    import lm_heads.data.vocab as module

    lines = [f"w{i % 7} w{i % 3}" for i in range(50)]
    vocab = Vocabulary.build(lines)
    whole = vocab.encode_lines(lines)
    monkeypatch.setattr(module, "ENCODE_CHUNK_LINES", 3)
    assert np.array_equal(vocab.encode_lines(iter(lines)), whole)
    assert np.array_equal(Vocabulary.build(iter(lines)).counts.numpy(), vocab.counts.numpy())


def test_tokenizers_wordlevel_gives_the_same_ids():
    vocab = Vocabulary.build(LINES, min_count=2)
    encoding = vocab.tokenizer.encode(["c", "a", "zzz"], is_pretokenized=True)
    assert encoding.ids == vocab.encode_lines(["c a zzz"]).tolist()


def test_save_load_roundtrip(tmp_path):
    vocab = Vocabulary.build(["ünï cödé a", "a"])
    vocab.save(tmp_path / "v.json")
    loaded = Vocabulary.load(tmp_path / "v.json")
    assert loaded == vocab and loaded.stoi == vocab.stoi
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "corrupt"),
        (json.dumps({"words": []}), "not an lm_heads vocabulary"),
        (json.dumps({"format": "lm_heads.vocabulary", "words": ["a"]}), "lacks"),
        (json.dumps({"format": "lm_heads.vocabulary", "words": ["a"], "counts": [1]}), "<unk>"),
    ],
)
def test_corrupt_file_gives_clear_error(tmp_path, content, message):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        Vocabulary.load(path)
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "missing.json")


@pytest.mark.parametrize("kwargs", [{"min_count": 0}, {"max_size": 1}, {"min_count": 1.5}])
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        Vocabulary.build(LINES, **kwargs)


@pytest.mark.integration
def test_wikitext2_vocabulary_size(shared_data):
    path = shared_data / "wikitext-2" / "train.txt"
    with path.open(encoding="utf-8") as handle:
        vocab = Vocabulary.build(handle)
    assert len(vocab) == 33_278
    assert int(vocab.counts.sum()) == 2_088_628
    assert int(vocab.counts[vocab.eos_id]) == 36_718
    assert int(vocab.counts[vocab.unk_id]) == 54_625
    assert vocab.itos[0] == "the"
    with path.open(encoding="utf-8") as handle:
        ids = vocab.encode_lines(handle)
    assert ids.shape == (2_088_628,)
    assert np.bincount(ids, minlength=len(vocab)).tolist() == vocab.counts.tolist()
