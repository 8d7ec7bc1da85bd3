import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lm_heads.data import CacheError, TokenCache, Vocabulary
from lm_heads.data import cache as cache_module
from lm_heads.data.cache import LOCK_HEARTBEAT, LOCK_STALE, CacheLockTimeout, cache_key


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


# ------------------------------------------------------------------------- build lock
def _holder_lock(cache, host, pid, lease=LOCK_STALE):
    """A lock file as filelock's SoftFileLease writes it for a holder ``pid`` on ``host``."""
    cache.path.mkdir(parents=True, exist_ok=True)
    marker = f"filelock/2\npid={pid}\nhost={host}\nmode=lease\ntoken=0f\nduration={lease!r}\n"
    cache.lock_path.write_text(marker)


# A builder holding the lock as build_lock does, killed with SIGKILL (filelock alone: importing
# lm_heads.data would import torch and take seconds).
_HOLD_AND_DIE = """
import os, signal, sys, filelock
path, stale, beat = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lock = filelock.SoftFileLease(path, lease_duration=stale, heartbeat_interval=beat)
lock.acquire()
print("held", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_build_lock_is_exclusive_and_released(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})
    with cache.build_lock(timeout=1.0) as mine:
        assert mine and cache.lock_path.is_file()
        waited = []
        second = cache.build_lock(timeout=0.2, poll=0.05, on_wait=waited.append)
        with pytest.raises(CacheLockTimeout, match=r"waited 0s for the cache entry .* lock file"):
            second.__enter__()
        assert waited and "to build" in waited[0]
    assert not cache.lock_path.exists()


def test_build_lock_waits_for_a_completed_entry(tmp_path):
    cache, _ = _filled(tmp_path)
    _holder_lock(cache, socket.gethostname(), os.getpid())  # held by a live process (us)
    with cache.build_lock(timeout=0.1) as mine:
        assert mine is False, "a complete entry is loaded, not rebuilt"


def test_lock_of_a_killed_holder_is_taken_over_at_once(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})
    cache.path.mkdir(parents=True)
    hold = [str(cache.lock_path), str(LOCK_STALE), str(LOCK_HEARTBEAT)]
    held = subprocess.run([sys.executable, "-c", _HOLD_AND_DIE, *hold], text=True,
                          capture_output=True)  # fmt: skip
    assert held.returncode == -signal.SIGKILL and held.stdout == "held\n", held.stderr
    assert cache.lock_path.is_file()  # left behind by the killed holder
    start = time.monotonic()
    with cache.build_lock(timeout=5.0, poll=0.01) as mine:
        assert mine and time.monotonic() - start < 1.0  # its process is gone: no lease to wait out
    assert not cache.lock_path.exists()


def test_lock_of_another_host_is_stale_without_heartbeat(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})
    _holder_lock(cache, "elsewhere", 1, lease=0.3)
    start = time.monotonic()
    with cache.build_lock(timeout=5.0, poll=0.02, stale=0.3, heartbeat=0.1) as mine:
        assert mine and time.monotonic() - start >= 0.3


def test_heartbeat_keeps_a_long_build_alive(tmp_path):
    cache = TokenCache(tmp_path, "tiny", {"x": 1})
    with cache.build_lock(timeout=1.0, heartbeat=0.05):
        before = cache.lock_path.stat().st_mtime_ns
        time.sleep(0.3)
        assert cache.lock_path.stat().st_mtime_ns > before


def test_lock_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LM_HEADS_CACHE_LOCK_TIMEOUT", "12.5")
    assert cache_module.default_lock_timeout() == 12.5
    monkeypatch.setenv("LM_HEADS_CACHE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="not a number of seconds"):
        cache_module.default_lock_timeout()


def test_clear_keeps_a_held_lock(tmp_path):
    cache, _ = _filled(tmp_path)
    with cache.build_lock(timeout=1.0) as mine:
        assert mine is False  # complete: nothing to build
    with cache.build_lock(timeout=1.0):
        pass
    _holder_lock(cache, socket.gethostname(), os.getpid())
    cache.clear()
    assert not cache.complete() and cache.lock_path.is_file()
    assert [p.name for p in cache.path.iterdir()] == [".build.lock"]
