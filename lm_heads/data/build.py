"""Building the vocabulary and the token cache fast, with progress, over shards in parallel.

Local text is read in blocks of :data:`BLOCK_BYTES` bytes, so progress and ETA follow the bytes
read: a block of whole lines is split into words with one ``str.split`` and its line ends are
marked with one ``str.replace``. The speed is that of the line-by-line path (the cost is the
dictionary work per word, not the reading); the result is exactly that of the line-by-line path
(:meth:`Vocabulary.build` / :meth:`Vocabulary.encode_chunks` over ``open(path)`` lines):
universal newlines (``\\r\\n`` and ``\\r`` end a line), one ``<eos>`` per line, words split on
any whitespace, first-occurrence order for ties.

With ``workers > 1`` the files of a split (its shards) are counted and encoded by a process
pool; the counts are merged in file order and the ids concatenated in file order, so the cache
is identical to a one-process build. A single file is read by one process.

Progress goes to ``stream`` (stderr): on a terminal one line rewritten in place, otherwise a
line every :data:`PROGRESS_SECONDS`, each with tokens, tokens/s, the share of bytes read and
an ETA; one summary line per phase in both cases.
"""

from __future__ import annotations

import codecs
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from lm_heads.data.cache import _HOST
from lm_heads.data.sources import _decode_error
from lm_heads.data.vocab import EOS, Vocabulary

BLOCK_BYTES = 1 << 15
"""Bytes split into words at once. Small blocks keep the words' fresh Python strings in the CPU
cache: 4 MiB blocks counted 30% slower than line-by-line reading, 16-64 KiB ones as fast."""
OUTPUT_IDS = 1 << 20
"""Ids gathered before a chunk is handed to the cache writer."""
PROGRESS_SECONDS = 5.0
"""Seconds between progress lines when the stream is not a terminal."""
_TTY_SECONDS = 0.5
_EOL = "\ue000"  # a private-use character marks line ends inside a block (if the text lacks it)


# ---------------------------------------------------------------------------------- progress
class Progress:
    """Tokens/s and ETA of one phase, printed to ``stream`` while it runs.

    Args:
        label: the phase, e.g. ``"vocabulary"``.
        total_bytes: bytes the phase will read (``None``: no percentage or ETA).
        stream: where to print (``None``: stderr).
        interval: seconds between lines when ``stream`` is not a terminal.
        enabled: False prints nothing (the counts are still kept).
        unit: what ``update`` counts (``"lines"`` for sources read line by line).
    """

    def __init__(
        self,
        label: str,
        total_bytes: int | None = None,
        *,
        stream: IO[str] | None = None,
        interval: float = PROGRESS_SECONDS,
        enabled: bool = True,
        unit: str = "tokens",
    ) -> None:
        self.label = label
        self.unit = unit
        self.total_bytes = total_bytes
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.interval = _TTY_SECONDS if self.tty else interval
        self.tokens = 0
        self.bytes = 0
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        self._last = self.started

    def update(self, tokens: int, nbytes: int = 0) -> None:
        self.tokens += tokens
        self.bytes += nbytes
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._emit(self.line(now), final=False)

    def line(self, now: float | None = None) -> str:
        elapsed = max((time.perf_counter() if now is None else now) - self.started, 1e-9)
        rate = self.tokens / elapsed
        text = f"{self.label}: {_si(self.tokens)} {self.unit}, {_si(rate)} {self.unit}/s"
        if self.total_bytes:
            share = min(self.bytes / self.total_bytes, 1.0)
            text += f", {100 * share:.0f}% of {_si(self.total_bytes)}B"
            if 0 < share < 1:
                text += f", ETA {elapsed * (1 - share) / share:.0f}s"
        return text

    def close(self) -> None:
        """Print the summary line (wall and CPU time of the phase)."""
        if not self.enabled:
            return
        wall = time.perf_counter() - self.started
        cpu = time.process_time() - self.cpu_started
        rate = self.tokens / max(wall, 1e-9)
        self._emit(
            f"{self.label}: {_si(self.tokens)} {self.unit} in {wall:.1f}s ({cpu:.1f} CPU-s in "
            f"this process), {_si(rate)} {self.unit}/s",
            final=True,
        )

    def _emit(self, text: str, final: bool) -> None:
        if self.tty:
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{text}{end}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


# ---------------------------------------------------------------------------------- reading
def text_blocks(
    path: Path, encoding: str = "utf-8", block_bytes: int | None = None
) -> Iterator[tuple[str, int, bool]]:
    """``(text, bytes read, last)``: the file as blocks of whole lines, newlines normalised.

    Every block but the last ends with ``"\\n"``; the last may hold a final line without one.
    Decoding is incremental, so multi-byte characters and ``\\r\\n`` split across reads are
    handled; undecodable bytes raise the error of :func:`sources.read_lines`.
    """
    block_bytes = BLOCK_BYTES if block_bytes is None else block_bytes
    decoder = codecs.getincrementaldecoder(encoding)()
    carry = ""
    with path.open("rb") as handle:
        while True:
            raw = handle.read(block_bytes)
            final = not raw
            try:
                text = carry + decoder.decode(raw, final=final)
            except UnicodeDecodeError:
                raise _decode_error(path, encoding) from None
            if not final and text.endswith("\r"):  # may be the first half of "\r\n"
                text, carry = text[:-1], "\r"
            else:
                carry = ""
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if final:
                yield text, len(raw), True
                return
            cut = text.rfind("\n") + 1
            carry = text[cut:] + carry
            yield text[:cut], len(raw), False


def _lines_in(text: str) -> int:
    """Lines in a block as ``open()`` iteration counts them (a final unterminated one too)."""
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def count_file(
    path: Path,
    encoding: str = "utf-8",
    report: Callable[[int, int], None] | None = None,
    counter: Counter[str] | None = None,
) -> tuple[Counter[str], int]:
    """``(word counts, lines)`` of one file, words in first-occurrence order.

    Counts go into ``counter`` when given (merging two Counters afterwards is a Python loop).
    """
    counter = Counter() if counter is None else counter
    lines = 0
    for text, nbytes, _ in text_blocks(path, encoding):
        words = text.split()
        counter.update(words)
        lines += _lines_in(text)
        if report is not None:
            report(len(words) + _lines_in(text), nbytes)
    return counter, lines


def encode_blocks(
    vocab: Vocabulary,
    path: Path,
    encoding: str = "utf-8",
    report: Callable[[int, int], None] | None = None,
    lookup: dict[str, int] | None = None,
) -> Iterator[np.ndarray]:
    """The ids of one file (``<eos>`` after each line), in arrays of about :data:`OUTPUT_IDS`."""
    lookup = _eol_lookup(vocab) if lookup is None else lookup
    get, unk = lookup.get, itertools.repeat(vocab.unk_id)
    pending: list[np.ndarray] = []
    size = 0
    for text, nbytes, _ in text_blocks(path, encoding):
        if _EOL not in text:
            marked = text.replace("\n", f" {_EOL} ")
            if text and not text.endswith("\n"):
                marked += f" {_EOL}"
            ids = np.fromiter(map(get, marked.split(), unk), dtype=vocab.dtype)
        else:  # the text holds the marker itself: line by line, as Vocabulary.encode_chunks
            lines = text.split("\n")
            if text.endswith("\n"):
                lines.pop()  # the empty string after the last line end is no line
            ids = np.concatenate([np.zeros(0, vocab.dtype), *vocab.encode_chunks(lines)])
        if report is not None:
            report(ids.size, nbytes)
        pending.append(ids)
        size += ids.size
        if size >= OUTPUT_IDS:
            yield np.concatenate(pending)
            pending, size = [], 0
    if pending:
        yield np.concatenate(pending)


def _eol_lookup(vocab: Vocabulary) -> dict[str, int]:
    lookup = dict(vocab.stoi)
    lookup[_EOL] = vocab.eos_id
    return lookup


# ---------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_encoder(words: list[str], counts: list[int]) -> None:
    vocab = Vocabulary(words, counts)
    _WORKER["vocab"], _WORKER["lookup"] = vocab, _eol_lookup(vocab)


def _count_task(task: tuple[Path, str]) -> tuple[Counter[str], int, int]:
    path, encoding = task
    counter, lines = count_file(path, encoding)
    return counter, lines, path.stat().st_size


def _encode_task(task: tuple[Path, str, Path]) -> tuple[Path, int, int]:
    path, encoding, folder = task
    vocab, lookup = _WORKER["vocab"], _WORKER["lookup"]
    prefix = f".{path.name}@{_HOST}@{os.getpid()}@"  # cache.remove_stale_temporaries knows it
    fd, raw = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    length = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            for ids in encode_blocks(vocab, path, encoding, lookup=lookup):
                handle.write(ids.tobytes())
                length += ids.size
    except BaseException:
        Path(raw).unlink(missing_ok=True)
        raise
    return Path(raw), length, path.stat().st_size


def _pool(workers: int, **kwargs: Any) -> Any:
    # fork shares the parent's imports (no re-import of torch per worker); spawn elsewhere.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers, **kwargs)


def _read_raw(path: Path, dtype: np.dtype, chunk: int = 1 << 22) -> Iterator[np.ndarray]:
    try:
        with path.open("rb") as handle:
            while data := handle.read(chunk * dtype.itemsize):
                yield np.frombuffer(data, dtype=dtype)
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- building
def build_vocabulary(
    files: list[Path],
    encoding: str = "utf-8",
    *,
    min_count: int = 1,
    max_size: int | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> Vocabulary:
    """The vocabulary of the lines of ``files`` (read in order); equals ``Vocabulary.build``."""
    counter: Counter[str] = Counter()
    lines = 0
    report = progress.update if progress is not None else None
    if workers > 1 and len(files) > 1:
        with _pool(min(workers, len(files))) as pool:
            tasks = [(path, encoding) for path in files]
            for part, part_lines, nbytes in pool.imap(_count_task, tasks):
                # Merging in file order keeps the global first-occurrence order of words.
                counter.update(part)
                lines += part_lines
                if report is not None:
                    report(sum(part.values()) + part_lines, nbytes)
    else:
        for path in files:
            lines += count_file(path, encoding, report, counter)[1]
    counter[EOS] += lines
    return Vocabulary.from_counts(counter, min_count=min_count, max_size=max_size)


def encode_files(
    vocab: Vocabulary,
    files: list[Path],
    encoding: str = "utf-8",
    *,
    workers: int = 1,
    scratch: Path | None = None,
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
    """The ids of the lines of ``files`` in order, in chunks (for ``TokenCache.write_split``).

    With ``workers > 1`` each file is encoded by a worker into a raw temporary file in
    ``scratch`` (the cache entry's folder), then streamed back in file order.
    """
    report = progress.update if progress is not None else None
    if workers > 1 and len(files) > 1:
        folder = scratch if scratch is not None else Path(tempfile.gettempdir())
        tasks = [(path, encoding, folder) for path in files]
        pending: list[Path] = []
        initargs = (vocab.itos, vocab.counts.tolist())
        with _pool(min(workers, len(files)), initializer=_init_encoder, initargs=initargs) as pool:
            try:
                for raw, length, nbytes in pool.imap(_encode_task, tasks):
                    pending.append(raw)
                    yield from _read_raw(raw, vocab.dtype)
                    if report is not None:
                        report(length, nbytes)
            finally:
                for raw in pending:
                    raw.unlink(missing_ok=True)
        return
    lookup = _eol_lookup(vocab)
    for path in files:
        yield from encode_blocks(vocab, path, encoding, report, lookup)


def report_lines(lines: Iterable[str], progress: Progress | None) -> Iterator[str]:
    """Pass ``lines`` through, reporting them to ``progress`` (sources without files)."""
    if progress is None:
        yield from lines
        return
    iterator = iter(lines)
    while chunk := list(itertools.islice(iterator, 10_000)):
        progress.update(len(chunk))
        yield from chunk


def default_workers(num_files: int) -> int:
    """One worker per usable core, at most one per file (1 for a single file)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, num_files))
