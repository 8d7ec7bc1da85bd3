"""On-disk cache of a corpus as token ids: built once, memory-mapped by every process after.

Layout of ``<cache_dir>/<name>-<hash>/`` (``hash`` covers the source identity and the vocabulary
options, so changing either builds a new entry)::

    vocab.json            Vocabulary.save
    train.npy valid.npy   token ids, int32 (int64 if V >= 2**31), read with mmap_mode="r"
    test.npy
    meta.json             written last: its presence marks the entry complete

Every file is written to a temporary name in the same folder and renamed into place
(``os.replace`` is atomic on POSIX), so DDP ranks or concurrent runs that build the same entry
at once each leave a complete, identical file and readers never see a partial one. A temporary
name carries its writer's host and process id (``.train.npy@host@pid@XXXX.tmp``): a build that was
killed leaves its temporaries behind, and the next build on that host removes those of processes
that no longer run (and any older than a day, whoever wrote them).

One build per entry: :meth:`TokenCache.build_lock` holds the entry's lock file (``.build.lock``)
while it is built. The ranks of a job, on one node or several sharing the folder, take it in turn:
the first builds, the others wait until the entry is complete and then build nothing. The lock is
``filelock.SoftFileLease``: a marker created with ``O_CREAT | O_EXCL`` (atomic on local and NFS
file systems) whose holder refreshes it every :data:`LOCK_HEARTBEAT` seconds; a holder that died
is taken over (same host: its process is gone; other hosts: no refresh for :data:`LOCK_STALE`
seconds). Measured (filelock 4.3, one Linux host): after SIGKILL of the holder, a waiter took
the lease over in 0.03 s, and a marker written as another host's after its lease duration (2.03 s
for a 2 s lease); ``filelock.FileLock`` (``flock``) freed in 0.001 s after SIGKILL, and plain
``SoftFileLock`` kept another host's dead holder until the waiter's timeout. ``flock`` is not
used because whether it excludes across hosts is the shared file system's choice (Lustre mounted
without ``-o flock`` refuses it; BeeGFS keeps it node-local by default), which one host cannot
test; the lease needs only ``O_EXCL`` and ``rename``, as the atomic writes above do. Waiting
longer than the timeout raises :class:`CacheLockTimeout` naming the holder. Correctness never rests
on the lock (writes are atomic and identical): it saves work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from filelock import SoftFileLease, Timeout

from lm_heads.data.vocab import Vocabulary

CACHE_VERSION = 1
_COPY_CHUNK = 1 << 24  # bytes


LOCK_NAME = ".build.lock"
LOCK_HEARTBEAT = 10.0
"""Seconds between the builder's refreshes of its lock file."""
LOCK_STALE = 120.0
"""Seconds without a refresh after which another host's lock counts as abandoned (the lease
duration: every process building an entry must use the same)."""
LOCK_TIMEOUT = 4 * 3600.0
"""Default longest wait for another process's build (``$LM_HEADS_CACHE_LOCK_TIMEOUT`` overrides)."""


class CacheError(ValueError):
    """A cache entry is missing or damaged (delete the folder named in the message to rebuild)."""


class CacheLockTimeout(TimeoutError):
    """Another process held an entry's build lock for longer than the wait allowed."""


def default_lock_timeout() -> float:
    value = os.environ.get("LM_HEADS_CACHE_LOCK_TIMEOUT")
    if value is None:
        return LOCK_TIMEOUT
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"LM_HEADS_CACHE_LOCK_TIMEOUT={value!r} is not a number of seconds"
        ) from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("LM_HEADS_CACHE", "~/.cache/lm_heads")).expanduser()


def cache_key(parts: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of ``parts`` as canonical JSON."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


_HOST = re.sub(r"[^\w.-]", "_", socket.gethostname())
_WRITER = re.compile(r"@(?P<host>[^@]+)@(?P<pid>\d+)@")
STALE_SECONDS = 24 * 3600.0
"""A temporary file this old is stale whoever wrote it (no build of an entry takes a day)."""


def _atomic_path(target: Path) -> tuple[int, Path]:
    prefix = f".{target.name}@{_HOST}@{os.getpid()}@"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    return fd, Path(tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _holder(lock: SoftFileLease) -> str:
    owner = lock.owner
    return "another process" if owner is None else f"{owner.hostname}:{owner.pid}"


def remove_stale_temporaries(folder: Path, now: float | None = None) -> list[Path]:
    """Delete the ``*.tmp`` files in ``folder`` whose writer is gone; returns what was removed.

    A writer is gone when it ran on this host and its process id no longer exists, or when the
    file is older than :data:`STALE_SECONDS` (writers on other hosts of a shared file system).
    """
    now = time.time() if now is None else now
    removed = []
    for path in folder.glob(".*.tmp"):
        match = _WRITER.search(path.name)
        try:
            old = now - path.stat().st_mtime > STALE_SECONDS
        except FileNotFoundError:  # its writer just renamed or removed it
            continue
        pid = int(match["pid"]) if match is not None and match["host"] == _HOST else None
        if old or (pid is not None and not _process_alive(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class TokenCache:
    """One cache entry: ``TokenCache(cache_dir, name, key_parts)``.

    Args:
        cache_dir: parent folder (``~/.cache/lm_heads`` by default, or ``$LM_HEADS_CACHE``).
        name: readable prefix of the entry folder (the source name).
        key_parts: everything the content depends on; hashed into the folder name.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str] | None, name: str, key_parts: dict[str, Any]
    ) -> None:
        root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
        self.key = cache_key(key_parts)
        self.path = root / f"{name}-{self.key}"
        self.key_parts = key_parts

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    def split_path(self, split: str) -> Path:
        return self.path / f"{split}.npy"

    def complete(self) -> bool:
        return self.meta_path.is_file()

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporaries left by a killed build of this entry (see the module docstring)."""
        return remove_stale_temporaries(self.path) if self.path.is_dir() else []

    # ------------------------------------------------------------------ writing
    def write_vocab(self, vocab: Vocabulary) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        vocab.save(self.path / "vocab.json")

    def write_split(self, split: str, chunks: Iterable[np.ndarray], dtype: np.dtype) -> int:
        """Stream id chunks to ``<split>.npy`` (atomically); returns the number of ids.

        The total length is unknown until the chunks run out, so they go to a raw file first and
        are then copied behind an ``.npy`` header: constant memory for any corpus size.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        dtype = np.dtype(dtype)
        target = self.split_path(split)
        raw_fd, raw = _atomic_path(target)
        npy_fd, npy = _atomic_path(target)
        try:
            length = 0
            with os.fdopen(raw_fd, "wb") as handle:
                for chunk in chunks:
                    data = np.ascontiguousarray(chunk, dtype=dtype)
                    handle.write(data.tobytes())
                    length += data.size
            with os.fdopen(npy_fd, "wb") as out, raw.open("rb") as source:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
                np.lib.format.write_array_header_1_0(out, {**header, "shape": (length,)})
                shutil.copyfileobj(source, out, _COPY_CHUNK)
            os.replace(npy, target)
        except BaseException:
            npy.unlink(missing_ok=True)
            raise
        finally:
            raw.unlink(missing_ok=True)
        return length

    def finish(self, lengths: dict[str, int], extra: dict[str, Any] | None = None) -> None:
        """Write ``meta.json`` last, marking the entry complete."""
        meta = {
            "version": CACHE_VERSION,
            "key": self.key,
            "lengths": lengths,
            "source": self.key_parts,
            **(extra or {}),
        }
        fd, tmp = _atomic_path(self.meta_path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, default=str, indent=1)
            os.replace(tmp, self.meta_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Remove this entry (e.g. a damaged one) so it can be rebuilt.

        ``meta.json`` goes first, so no reader takes a half-removed entry for complete; a build
        lock stays (its holder is the one rebuilding), otherwise the folder goes too.
        """
        self.meta_path.unlink(missing_ok=True)
        if not self.path.is_dir():
            return
        for child in self.path.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        with suppress(OSError):  # not empty: a build lock is held
            self.path.rmdir()

    # ------------------------------------------------------------------ one builder
    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @contextmanager
    def build_lock(
        self,
        timeout: float | None = None,
        *,
        poll: float = 0.5,
        stale: float = LOCK_STALE,
        heartbeat: float = LOCK_HEARTBEAT,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[bool]:
        """Hold the entry's build lock, or wait for whoever holds it.

        Yields True when this process holds the lock and the entry is still incomplete (build
        it now), False when the entry is complete (another process built it while we waited:
        load it). Raises :class:`CacheLockTimeout` after ``timeout`` seconds (default
        :func:`default_lock_timeout`) of waiting. ``on_wait`` is called once with a line naming
        the holder when we must wait. ``stale`` and ``heartbeat`` are the lease's duration and
        refresh period; every process building the entry must use the same ``stale``.
        """
        timeout = default_lock_timeout() if timeout is None else timeout
        if self.complete():
            yield False
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = SoftFileLease(self.lock_path, lease_duration=stale, heartbeat_interval=heartbeat)
        started = time.monotonic()
        try:
            lock.acquire(blocking=False)
        except Timeout:
            if on_wait is not None:
                on_wait(f"waiting for {_holder(lock)} to build {self.path}")
            try:
                lock.acquire(timeout=timeout, poll_interval=poll)
            except Timeout:
                raise CacheLockTimeout(
                    f"waited {time.monotonic() - started:.0f}s for the cache entry {self.path}, "
                    f"which {_holder(lock)} is building (lock file {self.lock_path}). If no such "
                    "build is running, delete the lock file; to wait longer, raise "
                    "$LM_HEADS_CACHE_LOCK_TIMEOUT (seconds) or lock_timeout"
                ) from None
        try:
            yield not self.complete()
        finally:
            lock.release()

    # ------------------------------------------------------------------ reading
    def load(self) -> tuple[Vocabulary, dict[str, np.ndarray], dict[str, Any]]:
        """``(vocab, {split: memory-mapped ids}, meta)``; raises :class:`CacheError` if damaged."""
        if not self.complete():
            raise CacheError(f"cache entry {self.path} is incomplete (no meta.json)")
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            lengths = dict(meta["lengths"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CacheError(f"cache entry {self.path} has a corrupt meta.json: {error}") from error
        try:
            vocab = Vocabulary.load(self.path / "vocab.json")
        except (OSError, ValueError) as error:
            raise CacheError(f"cache entry {self.path}: {error}") from error
        arrays: dict[str, np.ndarray] = {}
        for split, length in lengths.items():
            path = self.split_path(split)
            try:
                ids = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise CacheError(f"cache file {path} is corrupt or missing: {error}") from error
            if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.shape[0] != length:
                raise CacheError(
                    f"cache file {path} holds {ids.dtype}{list(ids.shape)}, expected "
                    f"{length} integer ids"
                )
            # A full range check would read the whole file; the ends catch most damage.
            for part in (ids[:65536], ids[-65536:]):
                if part.size and (int(part.min()) < 0 or int(part.max()) >= len(vocab)):
                    raise CacheError(f"cache file {path} has ids outside [0, {len(vocab)})")
            arrays[split] = ids
        return vocab, arrays, meta
