import numpy as np
import pytest

from lm_heads.data import CacheError, TokenCache, Vocabulary
from lm_heads.data.cache import cache_key


def _filled(tmp_path, chunks=((0, 1, 2), (3,), (), (4, 5))):
    vocab = Vocabulary.build(["a b c d e f g"])
    cache = TokenCache(tmp_path, "tiny", {"source": "x", "min_count": 1})
    cache.write_vocab(vocab)
    arrays = [np.array(c, dtype=np.int64) for c in chunks]
    length = cache.write_split("train", iter(arrays), vocab.dtype)
    cache.finish({"train": length})
    return cache, vocab


def test_roundtrip_is_memory_mapped(tmp_path):
    cache, vocab = _filled(tmp_path)
    assert cache.complete() and cache.path.name == f"tiny-{cache.key}"
    loaded_vocab, arrays, meta = cache.load()
    assert loaded_vocab == vocab and meta["lengths"] == {"train": 6}
    ids = arrays["train"]
    assert isinstance(ids, np.memmap) and ids.dtype == np.int32
    assert ids.tolist() == [0, 1, 2, 3, 4, 5]
    assert not list(cache.path.glob("*.tmp")), "temporary files must be renamed or removed"


def test_key_depends_on_every_part():
    assert cache_key({"a": 1}) == cache_key({"a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert cache_key({"a": 1, "b": None}) != cache_key({"a": 1})


def test_incomplete_entry_is_not_complete(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})
    cache.write_vocab(Vocabulary.build(["a"]))
    assert not cache.complete()
    with pytest.raises(CacheError, match="incomplete"):
        cache.load()


def test_truncated_ids_file_is_reported(tmp_path):
    cache, _ = _filled(tmp_path)
    path = cache.split_path("train")
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CacheError, match=r"corrupt|expected"):
        cache.load()


def test_out_of_range_ids_are_reported(tmp_path):
    cache, _ = _filled(tmp_path, chunks=((0, 1, 999),))
    with pytest.raises(CacheError, match="outside"):
        cache.load()


def test_corrupt_vocab_and_meta_are_reported(tmp_path):
    cache, _ = _filled(tmp_path)
    (cache.path / "vocab.json").write_text("{")
    with pytest.raises(CacheError, match="corrupt"):
        cache.load()
    cache.meta_path.write_text("[")
    with pytest.raises(CacheError, match=r"meta\.json"):
        cache.load()
    cache.clear()
    assert not cache.path.exists()


def test_failed_write_leaves_no_partial_file(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})

    def chunks():
        yield np.arange(3)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        cache.write_split("train", chunks(), np.int32)
    assert not cache.split_path("train").exists()
    assert not list(cache.path.iterdir())


def test_stale_temporaries_are_told_from_live_ones(tmp_path):
    import os

    from lm_heads.data import cache as cache_module

    host, now = cache_module._HOST, 1e9
    names = {
        "dead": f".train.npy@{host}@{2**22 + 11}@x.tmp",  # above Linux's pid_max: never running
        "live": f".train.npy@{host}@{os.getpid()}@x.tmp",
        "other host": f".train.npy@elsewhere@{os.getpid()}@x.tmp",
        "old other host": ".valid.npy@elsewhere@1@x.tmp",
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"partial")
        age = 2 * cache_module.STALE_SECONDS if key.startswith("old") else 10.0
        os.utime(tmp_path / name, (now - age, now - age))
    removed = {p.name for p in cache_module.remove_stale_temporaries(tmp_path, now=now)}
    assert removed == {names["dead"], names["old other host"]}
