import shutil
import sys
import time

import pytest

from lm_heads.data import (
    DataUnavailableError,
    HubTextSource,
    LMDataModule,
    LocalTextSource,
    MissingExtraError,
    find_local,
    sources,
)


def test_wikitext_layout(tiny_corpus):
    source = LocalTextSource.open(tiny_corpus, name="wikitext-2")
    assert source.description == f"WikiText-2 from {tiny_corpus} (local)"
    assert source.data_dir == tiny_corpus
    assert next(iter(source.lines("test"))) == "a dog ran on the mat .\n"
    assert sum(1 for _ in source.lines("train")) == 100


@pytest.mark.parametrize("valid_name", ["valid.txt", "validation.txt"])
def test_plain_layout(tmp_path, valid_name):
    for name in ("train.txt", valid_name, "test.txt"):
        (tmp_path / name).write_text("x y\n")
    source = LocalTextSource.open(tmp_path)
    assert source.name == "local" and "local text" in source.description
    assert [source.has_split(s) for s in ("train", "valid", "test")] == [True] * 3


def test_missing_directory_and_files_are_named(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        LocalTextSource.open(tmp_path / "nope")
    (tmp_path / "train.txt").write_text("x\n")
    with pytest.raises(DataUnavailableError, match=r"lacks the split valid \(tried wiki.valid"):
        LocalTextSource.open(tmp_path)
    with pytest.raises(DataUnavailableError, match="is a file"):
        LocalTextSource.open(tmp_path / "train.txt")


def test_missing_test_split_fails_only_when_read(tmp_path):
    (tmp_path / "train.txt").write_text("x\n")
    (tmp_path / "valid.txt").write_text("x\n")
    source = LocalTextSource.open(tmp_path)
    assert not source.has_split("test")
    with pytest.raises(DataUnavailableError, match="no test file"):
        list(source.lines("test"))


def test_cache_key_tracks_file_changes(tiny_corpus):
    before = LocalTextSource.open(tiny_corpus).key
    (tiny_corpus / "wiki.test.tokens").write_text("changed text here\n")
    assert LocalTextSource.open(tiny_corpus).key != before


def test_find_local_uses_env(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setenv("LM_HEADS_DATA", str(tiny_corpus.parent))
    assert find_local("tiny") == tiny_corpus.resolve()
    assert find_local("no-such-corpus") is None


def test_hub_fails_fast_offline_naming_local_alternative():
    source = HubTextSource.named("wikitext-2")
    start = time.monotonic()
    with pytest.raises(DataUnavailableError, match=r"--data /path/to/dir") as info:
        source.check()
    assert time.monotonic() - start < 20  # includes importing datasets on a busy machine
    assert "Salesforce/wikitext" in str(info.value)


def test_unreachable_hub_switches_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=2.0: False)
    start = time.monotonic()
    with pytest.raises(DataUnavailableError, match="\\$LM_HEADS_DATA/lm1b"):
        list(HubTextSource.named("lm1b").lines("test"))
    assert time.monotonic() - start < 20
    assert sources.hub_offline()


def test_hub_reachable_times_out_quickly(monkeypatch):
    monkeypatch.setattr(sources, "HUB_HOST", ("127.0.0.1", 9))  # discard port: refused at once
    start = time.monotonic()
    assert sources.hub_reachable(timeout=2.0) is False
    assert time.monotonic() - start < 3


class _FakeDataset:
    def __init__(self, rows):
        self.rows = rows

    def iter(self, batch_size):
        for i in range(0, len(self.rows), batch_size):
            yield {"text": self.rows[i : i + batch_size]}


def test_lm1b_validation_is_carved_from_train_by_hash():
    rows = [f"sentence number {i} ." for i in range(20_000)]
    source = HubTextSource.named("lm1b")
    source._cache["train"] = _FakeDataset(rows)
    train, valid = list(source.lines("train")), list(source.lines("valid"))
    assert sorted(train + valid) == sorted(rows)
    assert not set(train) & set(valid)
    assert 0.001 < len(valid) / len(rows) < 0.006
    again = HubTextSource.named("lm1b")
    again._cache["train"] = _FakeDataset(rows[::-1])
    assert set(again.lines("valid")) == set(valid)  # by content, not position


def test_unknown_hub_name():
    with pytest.raises(ValueError, match="known: wikitext-2"):
        HubTextSource.named("ptb")


def test_undecodable_text_names_file_and_line(tiny_corpus):
    path = tiny_corpus / "wiki.valid.tokens"
    path.write_bytes(b"fine line\nstill fine\nna\xefve caf\xe9\n")
    source = LocalTextSource.open(tiny_corpus)
    with pytest.raises(DataUnavailableError, match=r"valid.tokens, line 3: byte 0xef at column 3"):
        list(source.lines("valid"))
    latin = LocalTextSource.open(tiny_corpus, encoding="latin-1")
    assert list(latin.lines("valid"))[2] == "na\u00efve caf\u00e9\n"
    assert latin.key != source.key  # a cache built with one encoding is not reused for another
    with pytest.raises(DataUnavailableError, match="unknown text encoding"):
        LocalTextSource.open(tiny_corpus, encoding="klingon")


def test_lookup_never_leaves_the_folders_it_is_given(tmp_path, tiny_corpus, monkeypatch):
    """No guessing from the install or working directory: only data_root and $LM_HEADS_DATA."""
    monkeypatch.delenv("LM_HEADS_DATA", raising=False)
    work = tmp_path / "work" / "repo"
    for shared in (work / "shared" / "data", work.parent / "shared" / "data"):
        shared.mkdir(parents=True)
        shutil.copytree(tiny_corpus, shared / "tiny")
    monkeypatch.chdir(work)
    assert sources.local_search_roots() == []
    assert find_local("tiny") is None
    given = work.parent / "shared" / "data"
    assert find_local("tiny", data_root=given) == (given / "tiny").resolve()
    source = sources.resolve_named("wikitext-2", data_root=tiny_corpus.parent)
    assert isinstance(source, HubTextSource)  # no wikitext-2 folder there
    monkeypatch.setenv("LM_HEADS_DATA", str(tiny_corpus.parent))
    roots = sources.local_search_roots(work)
    assert roots == [work.resolve(), tiny_corpus.parent.resolve()]


def test_missing_datasets_names_the_extra_and_auto_falls_back(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    monkeypatch.delenv("LM_HEADS_DATA", raising=False)
    with pytest.raises(MissingExtraError, match=r"pip install 'lm-heads\[data\]'"):
        HubTextSource.named("wikitext-2").check()
    dm = LMDataModule("auto", cache_dir=tmp_path, synthetic_vocab_size=50, synthetic_tokens=2000)
    assert dm.data_dir is None  # resolved to the synthetic language, with the reason logged
    assert "synthetic" in dm.description.lower()
