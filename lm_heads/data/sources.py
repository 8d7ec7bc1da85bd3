"""Where text comes from: local directories and the Hugging Face Hub, as iterables of lines.

A source yields the lines of its ``train``, ``valid`` and ``test`` splits; the vocabulary and the
token-id cache (:mod:`lm_heads.data.cache`) are built from those lines once.

Local directories use either WikiText's names (``wiki.train.tokens``, ``wiki.valid.tokens``,
``wiki.test.tokens``) or plain ones (``train.txt``, ``valid.txt``/``validation.txt``,
``test.txt``; ``.tokens`` works as well). The named corpora are looked up locally first, in
``<data_root>/<name>`` for a ``data_root`` passed by the caller and in ``$LM_HEADS_DATA/<name>``,
then on the Hub (an installed package never looks in folders it was not told about):

==================  ============================================================================
``wikitext-2``      ``Salesforce/wikitext``, config ``wikitext-2-v1`` (splits train/validation/test)
``wikitext-103``    ``Salesforce/wikitext``, config ``wikitext-103-v1``
``lm1b``            ``billion-word-benchmark/lm1b``, config ``plain_text``, revision
                    ``refs/convert/parquet`` (the loading script no longer runs under datasets>=4);
                    splits train/test; validation carved from train (``LM1B_VALID_PER_MILLE``)
==================  ============================================================================

A local split may also be sharded, as One Billion Word's training data (100 files): a folder
named after the split (``train/``) whose visible files are read in name order, or files
``train.<anything>.txt`` / ``train-<anything>.txt`` beside the others
(``train-00001-of-00100.txt``). A single file wins over shards.

Without network the Hub must fail fast: when ``huggingface.co`` does not answer a TCP connect
within 2 s, offline mode is switched on (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) so that a copy
in the Hugging Face cache still loads, and anything else raises :class:`DataUnavailableError`
naming the local alternative instead of retrying for half a minute.
"""

from __future__ import annotations

import codecs
import os
import socket
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "valid", "test")
LOCAL_NAMES = {
    "train": ("wiki.train.tokens", "train.txt", "train.tokens", "train"),
    "valid": (
        "wiki.valid.tokens",
        "valid.txt",
        "valid.tokens",
        "validation.txt",
        "validation.tokens",
        "wiki.validation.tokens",
        "valid",
        "validation",
    ),
    "test": ("wiki.test.tokens", "test.txt", "test.tokens", "test"),
}
DISPLAY_NAMES = {
    "wikitext-2": "WikiText-2",
    "wikitext-103": "WikiText-103",
    "lm1b": "One Billion Word",
}
LM1B_VALID_PER_MILLE = 3
"""LM1B has no validation split: a training line goes to validation when ``crc32(line) % 1000 < 3``
(~0.3%, ~91k lines). Hashing the text (not the position) keeps the choice deterministic and puts
duplicate sentences on the same side, so none leaks from train into validation."""
HUB_HOST = ("huggingface.co", 443)
LOCAL_HINT = (
    "use a local copy instead: --data /path/to/dir with train/valid/test files "
    "(train.txt, valid.txt, test.txt or wiki.{{train,valid,test}}.tokens), or put it in "
    "$LM_HEADS_DATA/{name}"
)


class DataUnavailableError(RuntimeError):
    """A data source cannot be read (missing files, or the Hub is unreachable)."""


class MissingExtraError(ImportError, DataUnavailableError):
    """A package of the ``data`` extra is not installed (also a :class:`DataUnavailableError`, so
    ``data="auto"`` falls back to the synthetic language without it)."""


def local_search_roots(data_root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders that may hold ``<name>/`` copies of the corpora, in the order they are tried:
    ``data_root`` when given, then ``$LM_HEADS_DATA`` when set."""
    roots = []
    if data_root is not None:
        roots.append(Path(data_root).expanduser())
    if env := os.environ.get("LM_HEADS_DATA"):
        roots.append(Path(env).expanduser())
    unique: list[Path] = []
    for root in roots:
        resolved = root.resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique


def find_local(name: str, data_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first ``<root>/<name>`` among :func:`local_search_roots` whose train file exists."""
    for root in local_search_roots(data_root):
        candidate = root / name
        if candidate.is_dir() and _find_split_file(candidate, "train") is not None:
            return candidate
    return None


def _find_split_file(root: Path, split: str) -> Path | None:
    """The split's file, or its first shard (see :func:`find_split_files`)."""
    files = find_split_files(root, split)
    return files[0] if files else None


def find_split_files(root: Path, split: str) -> list[Path]:
    """The files of one split in ``root``, in reading order; empty when there are none.

    A single file (:data:`LOCAL_NAMES`) wins; then a folder named after the split (``train/``,
    its visible files in name order); then shard files ``<split>.*.txt`` or ``<split>-*.txt``.
    """
    for filename in LOCAL_NAMES[split]:
        path = root / filename
        if path.is_file():
            return [path]
    for filename in LOCAL_NAMES[split]:
        folder = root / filename
        if folder.is_dir():
            shards = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
            if shards:
                return shards
    for name in (split, "validation") if split == "valid" else (split,):
        matches = {*root.glob(f"{name}.*.txt"), *root.glob(f"{name}-*.txt")}
        if matches:
            return sorted(p for p in matches if p.is_file())
    return []


def _visible(path: Path) -> bool:
    # Hidden files are editor or writer temporaries (e.g. a shard being written), never data.
    return not path.name.startswith(".")


@dataclass
class TextSource:
    """Lines of the ``train``/``valid``/``test`` splits of one corpus.

    Attributes:
        name: short name (``wikitext-2``, ``lm1b``, ``local``, ...); the cache folder uses it.
        description: one line for logs, e.g. ``"WikiText-2 from /data/wikitext-2 (local)"``.
        key: identity of the content, hashed into the cache key (paths, sizes, revisions).
        data_dir: the local folder, if any (SimLex-999 is looked for beside it).
    """

    name: str
    description: str
    key: dict[str, Any]
    data_dir: Path | None = None

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def lines(self, split: str) -> Iterator[str]:
        raise NotImplementedError


@dataclass
class LocalTextSource(TextSource):
    """Text files in a local folder (see the module docstring for the accepted names)."""

    files: dict[str, Path] = field(default_factory=dict)
    encoding: str = "utf-8"
    shards: dict[str, list[Path]] = field(default_factory=dict)
    """Every file of each split in reading order (``files`` holds the first)."""

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], name: str | None = None, encoding: str = "utf-8"
    ) -> LocalTextSource:
        """The split files in ``path``, read as ``encoding`` text (bad bytes are an error)."""
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataUnavailableError(f"unknown text encoding {encoding!r}") from None
        root = Path(path).expanduser()
        if not root.exists():
            raise DataUnavailableError(f"data directory {root} does not exist")
        if not root.is_dir():
            raise DataUnavailableError(
                f"data path {root} is a file; give the directory holding train/valid/test files"
            )
        files: dict[str, Path] = {}
        shards: dict[str, list[Path]] = {}
        missing = []
        for split in SPLITS:
            found = find_split_files(root, split)
            if found:
                files[split], shards[split] = found[0], found
            elif split != "test":
                tried = ", ".join(LOCAL_NAMES[split])
                missing.append(f"{split} (tried {tried}, a {split}/ folder, {split}-*.txt)")
        if missing:
            missing_text = "; ".join(missing)
            raise DataUnavailableError(f"data directory {root} lacks the split {missing_text}")
        for found in shards.values():
            for path in found:
                check_text(path, encoding)
        root = root.resolve()
        key: dict[str, Any] = {"kind": "local", "files": {}}
        if codecs.lookup(encoding).name != "utf-8":  # utf-8 keeps the cache keys of earlier runs
            key["encoding"] = codecs.lookup(encoding).name
        for split, found in shards.items():
            stats = [(str(f.resolve()), f.stat()) for f in found]
            entries = [[name, stat.st_size, stat.st_mtime_ns] for name, stat in stats]
            # One file keeps the key format (and so the cache entries) of earlier versions.
            key["files"][split] = entries[0] if len(entries) == 1 else entries
        label = DISPLAY_NAMES.get(name or "", "local text")
        return cls(
            name=name or "local",
            description=f"{label} from {root} (local)",
            key=key,
            data_dir=root,
            files=files,
            encoding=encoding,
            shards=shards,
        )

    def has_split(self, split: str) -> bool:
        return split in self.files

    def split_files(self, split: str) -> list[Path]:
        """The files of ``split`` in reading order (one, or its shards)."""
        if split not in self.files:
            raise DataUnavailableError(
                f"data directory {self.data_dir} has no {split} file "
                f"(tried {', '.join(LOCAL_NAMES[split])}, a {split}/ folder, {split}-*.txt)"
            )
        return self.shards.get(split) or [self.files[split]]

    def lines(self, split: str) -> Iterator[str]:
        for path in self.split_files(split):
            yield from read_lines(path, self.encoding)


COMPRESSED = {
    b"\x1f\x8b": ("gzip-compressed", "gunzip"),
    b"BZh": ("bzip2-compressed", "bunzip2"),
    b"\xfd7zXZ\x00": ("xz-compressed", "unxz"),
    b"PK\x03\x04": ("a zip archive", "unzip"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "unzstd"),
}
"""The magic bytes a compressed file starts with, what it is, and the tool that unpacks it."""
SNIFF_BYTES = 8192
"""How much of each file :func:`check_text` reads: a text file's first block is text."""


def check_text(path: Path, encoding: str = "utf-8") -> None:
    """Raise :class:`DataUnavailableError` for a file that is compressed or binary, not text.

    Read as latin-1 (any bytes decode), such a file would train a "vocabulary" of byte salad
    (V = 94,964 and perplexity 201k for a binary train.txt), and a file of NUL bytes as one word.
    """
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    for magic, (what, tool) in COMPRESSED.items():
        if head.startswith(magic):
            raise DataUnavailableError(
                f"{path} is {what}, not text: unpack it ({tool} {path.name}) and keep the "
                "text file under a split's name (e.g. train.txt)"
            )
    if codecs.lookup(encoding).name.startswith(("utf-16", "utf-32")):
        return  # NUL bytes are part of these encodings' text
    # Control characters other than whitespace (and ESC) do not occur in text in the encodings
    # read here; one NUL byte, or many control characters, mean binary data.
    control = sum(1 for byte in head if byte < 32 and byte not in b"\t\n\r\x0b\x0c\x1b")
    if b"\x00" in head or control > 0.1 * len(head):
        found = "NUL bytes" if b"\x00" in head else "control characters"
        advice = (
            "it starts as UTF-16 text does: pass its encoding, e.g. --encoding utf-16"
            if head[:2] in (b"\xff\xfe", b"\xfe\xff")
            else "point the data at the corpus's plain text files (e.g. train.txt)"
        )
        raise DataUnavailableError(
            f"{path} holds binary data, not text ({found} in its first {len(head):,} bytes): "
            f"{advice}"
        )


def read_lines(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """The lines of a text file; undecodable bytes raise :class:`DataUnavailableError` naming the
    file, line and byte instead of being replaced silently."""
    try:
        with path.open(encoding=encoding) as handle:
            yield from handle
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None


def _decode_error(path: Path, encoding: str) -> DataUnavailableError:
    # Only on failure: find the first bad line by decoding the file line by line as bytes.
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as error:
                byte = raw[error.start : error.start + 1].hex()
                return DataUnavailableError(
                    f"{path}, line {number}: byte 0x{byte} at column {error.start + 1} is not "
                    f"valid {encoding} text (text in another encoding); pass its encoding, "
                    "e.g. --encoding latin-1, or fix the file"
                )
    return DataUnavailableError(f"{path} is not valid {encoding} text (truncated at the end)")


@dataclass(frozen=True)
class HubSpec:
    repo: str
    config: str
    revision: str | None
    splits: dict[str, str]  # our split -> hub split; "valid" may be carved from "train"
    carve_valid: bool = False


HUB_DATASETS = {
    "wikitext-2": HubSpec(
        "Salesforce/wikitext",
        "wikitext-2-v1",
        None,
        {"train": "train", "valid": "validation", "test": "test"},
    ),
    "wikitext-103": HubSpec(
        "Salesforce/wikitext",
        "wikitext-103-v1",
        None,
        {"train": "train", "valid": "validation", "test": "test"},
    ),
    "lm1b": HubSpec(
        "billion-word-benchmark/lm1b",
        "plain_text",
        "refs/convert/parquet",
        {"train": "train", "valid": "train", "test": "test"},
        carve_valid=True,
    ),
}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks for offline mode."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = 2.0) -> bool:
    """A TCP connect to huggingface.co:443 within ``timeout`` seconds (no HTTP request)."""
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _go_offline() -> None:
    # datasets and huggingface_hub read these variables at import time, so also flip the
    # module-level switches when they are already imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets.config
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - both ship with datasets
        pass


def _is_valid_line(line: str) -> bool:
    return zlib.crc32(line.encode("utf-8")) % 1000 < LM1B_VALID_PER_MILLE


@dataclass
class HubTextSource(TextSource):
    """A corpus on the Hugging Face Hub (or in its local cache), read with ``datasets``."""

    spec: HubSpec | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def named(cls, name: str) -> HubTextSource:
        if name not in HUB_DATASETS:
            raise ValueError(f"no Hub dataset named {name!r}; known: {', '.join(HUB_DATASETS)}")
        spec = HUB_DATASETS[name]
        where = f"{spec.repo}, {spec.config}" + (f", {spec.revision}" if spec.revision else "")
        return cls(
            name=name,
            description=f"{DISPLAY_NAMES[name]} from the Hugging Face Hub ({where})",
            key={"kind": "hub", "repo": spec.repo, "config": spec.config, "rev": spec.revision},
            spec=spec,
        )

    def has_split(self, split: str) -> bool:
        assert self.spec is not None
        return split in self.spec.splits

    def _fail(self, why: str) -> DataUnavailableError:
        assert self.spec is not None
        hint = LOCAL_HINT.format(name=self.name)
        return DataUnavailableError(
            f"cannot load {self.spec.repo} ({self.spec.config}) from the Hugging Face Hub: {why}; "
            f"{hint}"
        )

    def _dataset(self, hub_split: str) -> Any:
        """The ``datasets.Dataset`` of one split, failing within seconds when offline."""
        assert self.spec is not None
        if hub_split in self._cache:
            return self._cache[hub_split]
        if not hub_offline() and not hub_reachable():
            # The Hugging Face cache may still hold a copy: offline mode reads it without retries.
            _go_offline()
        try:
            from datasets import load_dataset
        except ImportError as error:
            raise MissingExtraError(
                f"loading {self.spec.repo} from the Hugging Face Hub needs the datasets package: "
                "pip install 'lm-heads[data]' (or use a local copy: --data /path/to/dir)"
            ) from error
        try:
            kwargs = {"revision": self.spec.revision} if self.spec.revision else {}
            dataset = load_dataset(self.spec.repo, self.spec.config, split=hub_split, **kwargs)
        except Exception as error:  # datasets raises ConnectionError, OSError, RuntimeError, ...
            offline = " (offline: hub unreachable or HF_HUB_OFFLINE set)" if hub_offline() else ""
            raise self._fail(f"{type(error).__name__}: {error}{offline}") from error
        self._cache[hub_split] = dataset
        return dataset

    def check(self) -> None:
        """Load the smallest split, raising :class:`DataUnavailableError` when unavailable."""
        assert self.spec is not None
        self._dataset(self.spec.splits["test"])

    def lines(self, split: str) -> Iterator[str]:
        assert self.spec is not None
        if split not in self.spec.splits:
            raise DataUnavailableError(f"{self.spec.repo} has no {split} split")
        dataset = self._dataset(self.spec.splits[split])
        rows = _iter_text(dataset)
        if self.spec.carve_valid and split == "valid":
            rows = filter(_is_valid_line, rows)
        elif self.spec.carve_valid and split == "train":
            rows = (line for line in rows if not _is_valid_line(line))
        yield from rows


def _iter_text(dataset: Any, batch_size: int = 10_000) -> Iterator[str]:
    # Batched iteration reads the memory-mapped Arrow table piecewise; ds["text"] would build
    # one Python list of every row (tens of GB for LM1B).
    for batch in dataset.iter(batch_size=batch_size):
        yield from batch["text"]


def resolve_named(name: str, data_root: str | os.PathLike[str] | None = None) -> TextSource:
    """A local copy of ``name`` if one is found (:func:`find_local`), else its Hub source (not
    yet contacted)."""
    local = find_local(name, data_root)
    if local is not None:
        return LocalTextSource.open(local, name=name)
    return HubTextSource.named(name)
