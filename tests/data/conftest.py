from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real corpora in ../shared/data (integration tests skip when they are absent)."""
    if not (SHARED_DATA / "wikitext-2" / "train.txt").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA.resolve()}")
    return SHARED_DATA.resolve()


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A WikiText-style folder: wiki.{train,valid,test}.tokens with a few short lines."""
    root = tmp_path / "tiny"
    root.mkdir()
    train = [" = Title = ", "the cat sat on the mat .", "", "the dog sat .", "a cat ran"] * 20
    (root / "wiki.train.tokens").write_text("\n".join(train) + "\n", encoding="utf-8")
    (root / "wiki.valid.tokens").write_text(
        "the cat sat .\nthe bird flew .\n" * 7, encoding="utf-8"
    )
    (root / "wiki.test.tokens").write_text("a dog ran on the mat .\n" * 5, encoding="utf-8")
    return root
