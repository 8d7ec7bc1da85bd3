import io
import itertools
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from lm_heads.data import DataUnavailableError, LMDataModule, Vocabulary, build
from lm_heads.data.sources import read_lines

# Line ends of every kind, unicode whitespace, multi-byte characters, empty lines, the marker
# character the block encoder uses, and a last line without a newline.
AWKWARD = (
    "the cat  sat\r\n"
    "\n"
    "naïve café\u3000über\x1cend\r"
    "lone\rreturn \u2028 sep\n"
    "marker\ue000word \ue000\n"
    "   \n"
    "é" * 7 + " tail"
)


def _write_shards(root: Path, texts: list[str]) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, text in enumerate(texts):
        path = root / f"train-{index:03d}.txt"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def _line_by_line(paths: list[Path]) -> tuple[Vocabulary, np.ndarray]:
    def lines():
        return itertools.chain.from_iterable(read_lines(p) for p in paths)

    vocab = Vocabulary.build(lines())
    return vocab, vocab.encode_lines(lines())


@pytest.mark.parametrize("block_bytes", [1, 3, 7, 64, 1 << 15])
def test_blocks_match_line_by_line_reading(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(build, "BLOCK_BYTES", block_bytes)
    paths = _write_shards(tmp_path, [AWKWARD, "a b\r", "\r\nb c d\n", "", "x"])
    expected_vocab, expected_ids = _line_by_line(paths)
    vocab = build.build_vocabulary(paths)
    assert vocab == expected_vocab
    ids = np.concatenate(list(build.encode_files(vocab, paths)))
    assert ids.tolist() == expected_ids.tolist()


def test_blocks_end_on_whole_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("ab\r\ncd\ré\nlast".encode())
    blocks = list(build.text_blocks(path, block_bytes=3))
    assert "".join(text for text, _, _ in blocks) == "ab\ncd\né\nlast"
    assert all(text.endswith("\n") or not text for text, _, last in blocks if not last)
    assert sum(nbytes for _, nbytes, _ in blocks) == path.stat().st_size


def test_undecodable_bytes_are_named(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(DataUnavailableError, match=r"bad.txt, line 2: byte 0xff"):
        build.build_vocabulary([path])


def test_two_workers_give_the_one_worker_result(tmp_path):
    texts = [f"w{i} common w{i % 3}\nshared line {i}\n" for i in range(5)] + [AWKWARD]
    paths = _write_shards(tmp_path, texts)
    serial = build.build_vocabulary(paths, min_count=1, workers=1)
    parallel = build.build_vocabulary(paths, min_count=1, workers=2)
    assert parallel == serial and parallel.itos == serial.itos
    expected = np.concatenate(list(build.encode_files(serial, paths)))
    got = np.concatenate(list(build.encode_files(serial, paths, workers=2, scratch=tmp_path)))
    assert got.tolist() == expected.tolist()
    assert not list(tmp_path.glob(".*.tmp")), "the workers' raw files are removed"


def test_progress_lines_and_terminal_mode():
    stream = io.StringIO()
    progress = build.Progress("vocabulary", 1000, stream=stream, interval=0.0)
    progress.update(2_500_000, 250)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("vocabulary: 2.50M tokens, ")
    assert "tokens/s, 25% of 1.00kB" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("vocabulary: 2.50M tokens in ") and "CPU-s" in lines[-1]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    progress = build.Progress("cache", None, stream=tty)
    progress._last -= 1.0  # as if the last redraw were a second ago
    progress.update(10)
    progress.close()
    assert tty.getvalue().startswith("\r\033[K") and tty.getvalue().endswith("\n")
    assert tty.getvalue().count("\n") == 1, "a terminal gets one line, redrawn in place"

    muted = io.StringIO()
    progress = build.Progress("x", stream=muted, interval=0.0, enabled=False)
    progress.update(5)
    progress.close()
    assert muted.getvalue() == "" and progress.tokens == 5


def test_datamodule_reads_a_train_folder_of_shards_with_progress(tmp_path, capsys):
    root = tmp_path / "corpus"
    _write_shards(root / "train", ["a b c\n", "b c\n", "c\n"])
    (root / "valid.txt").write_text("a c\n")
    (root / "test.txt").write_text("b\n")
    dm = LMDataModule(str(root), batch_size=1, bptt=2, cache_dir=tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    err = capsys.readouterr().err
    assert "vocabulary: 9 tokens in" in err and "token cache: 14 tokens in" in err
    assert dm.vocab.itos == ["<eos>", "c", "b", "a", "<unk>"]
    assert dm.splits["train"].tolist() == [3, 2, 1, 0, 2, 1, 0, 1, 0]
    two = LMDataModule(
        str(root), batch_size=1, bptt=2, cache_dir=tmp_path / "cache2", build_workers=2,
        progress=False,
    )  # fmt: skip
    two.setup()
    assert capsys.readouterr().err == ""
    assert two.vocab == dm.vocab
    for split in ("train", "valid", "test"):
        assert two.splits[split].tolist() == dm.splits[split].tolist()


def test_build_workers_must_be_positive():
    with pytest.raises(ValueError, match="build_workers must be None or a positive int"):
        LMDataModule("synthetic", build_workers=0)


# ------------------------------------------------------------------------- one build at once
def _prepare(root: str, cache: str, log: str, barrier) -> None:
    original = LMDataModule._build

    def slow_build(self, entry):
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(1.0)  # long enough for the other process to find the lock taken
        original(self, entry)

    LMDataModule._build = slow_build
    dm = LMDataModule(root, batch_size=1, bptt=2, cache_dir=cache, progress=False)
    barrier.wait()
    dm.prepare_data()
    dm.setup()
    np.save(Path(log).with_name(f"ids-{multiprocessing.current_process().name}.npy"),
            np.asarray(dm.splits["train"]))  # fmt: skip


def test_concurrent_builds_of_one_entry_build_once(tmp_path):
    root = tmp_path / "corpus"
    _write_shards(root / "train", ["a b c\n" * 50, "b c\n" * 50])
    (root / "valid.txt").write_text("a c\n")
    log = tmp_path / "builds.log"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    args = (str(root), str(tmp_path / "cache"), str(log), barrier)
    workers = [context.Process(target=_prepare, args=args, name=f"p{i}") for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert log.read_text() == "built\n", "exactly one process builds"
    first, second = (np.load(tmp_path / f"ids-p{i}.npy") for i in range(2))
    assert first.size == 350 and first.tolist() == second.tolist()
    assert not list((tmp_path / "cache").glob("*/.build.lock")), "the lock is released"
