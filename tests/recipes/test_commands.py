"""recipes/generate.py, evaluate.py and export_embeddings.py on checkpoints of recipes/lm.py."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recipe_helpers import TINY, load_recipe, write_corpus

from lm_heads import HEADS
from recipes.language_model import LanguageModel


@pytest.fixture(scope="module")
def generate():
    return load_recipe("generate")


@pytest.fixture(scope="module")
def evaluate():
    return load_recipe("evaluate")


@pytest.fixture(scope="module")
def export():
    return load_recipe("export_embeddings")


# ------------------------------------------------------------------------------------------------
def test_generate_is_seeded_and_continues_the_prompt(generate, trained, capsys) -> None:
    argv = ["--checkpoint", str(trained), "--prompt", "w3 w7 unheard", "--num-words", "12"]
    text = generate.main([*argv, "--seed", "1"])
    words = text.split()
    assert words[:3] == ["w3", "w7", "<unk>"] and len(words) == 15
    assert generate.main([*argv, "--seed", "1"]) == text
    assert generate.main([*argv, "--seed", "2"]) != text
    assert text in capsys.readouterr().out


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_draws_from_the_exact_distribution(generate, head: str, temperature) -> None:
    torch.manual_seed(0)
    vocab = 30
    model = LanguageModel(vocab_size=vocab, counts=torch.arange(vocab, 0, -1) ** 2, head=head,
                          embed_dim=8, d_model=8, dropout=0.0).eval()  # fmt: skip
    draws = 40_000
    context = torch.tensor([[5, 2, 9]]).expand(draws, 3)
    with torch.no_grad():
        hidden = model(context[:1])[0][:, -1]
        exact = torch.softmax(model.head.log_prob(hidden)[0].double() / temperature, -1)
        sample = generate.next_word(model, context, temperature, torch.Generator().manual_seed(3))
    freq = torch.bincount(sample, minlength=vocab).double() / draws
    assert 0.5 * (freq - exact).abs().sum() < 0.02  # total variation; ~0.01 expected by chance
    greedy = generate.next_word(model, context[:2], 0.0, torch.Generator())
    assert greedy.tolist() == [int(exact.argmax())] * 2


# ------------------------------------------------------------------------------------------------
def test_evaluate_reproduces_the_recipes_test_perplexity(lm, evaluate, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus")
    argv = [*TINY, "--data", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--head",
            "full", "--output-dir", str(tmp_path / "run"), "--max-steps", "2"]  # fmt: skip
    trained = lm.main(argv)
    only = tmp_path / "only_test"
    only.mkdir()
    (only / "test.txt").write_bytes((corpus / "test.txt").read_bytes())  # no train/valid needed
    scores = evaluate.main(["--checkpoint", str(tmp_path / "run/checkpoints/last.ckpt"),
                            "--text", str(only), "--output", str(tmp_path / "s.json")])  # fmt: skip
    assert scores["perplexity"] == pytest.approx(trained["test_ppl"], rel=1e-5)
    assert scores["oov_words"] == 0 and scores["files"] == 1
    assert (tmp_path / "s.json").exists()


def test_evaluate_counts_unknown_words(evaluate, trained, tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("w1 w2 zebra\n\nw3 <unk> okapi w4\n")
    scores = evaluate.main(["--checkpoint", str(trained), "--text", str(text)])
    assert (scores["words"], scores["oov_words"], scores["tokens"]) == (7, 2, 10)  # 3 <eos>
    assert scores["oov_rate"] == pytest.approx(2 / 7)
    assert np.isfinite(scores["perplexity"]) and scores["perplexity"] > 1


def test_evaluate_decomposes_the_nll_on_the_heads_clusters(evaluate, trained, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("w1 w2 w3 w40 w55\nw7 w8 w59 w1\n" * 5)
    scores = evaluate.main(["--checkpoint", str(trained), "--text", str(text),
                            "--decompose", "true"])  # fmt: skip
    parts = scores["decomposition"]
    assert parts["ppl"] == pytest.approx(scores["perplexity"], rel=1e-5)
    assert parts["tokens"] == scores["tokens"]
    assert sum(p["nll_share"] for p in parts["parts"]) == pytest.approx(1.0)
    assert "cluster choice" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", str(trained), "--text", str(text), "--decompose", "true",
                       "--cutoffs", "[500]"])  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text", "nowhere.txt"], "does not exist"),
        (["--text", "."], "without any"),
        (["--text", "t.txt", "--checkpoint", "t.txt"], "is a text file, not a checkpoint"),
        (["--text", "t.txt", "--accelerator", "nope"], "--accelerator nope"),
    ],
)
def test_evaluate_errors(evaluate, trained, tmp_path, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    if "t.txt" in argv:
        (tmp_path / "t.txt").write_text("w1\n")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(trained), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
def _read_word2vec(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    rows, dim = map(int, lines[0].split())
    words = [line.split(" ", 1)[0] for line in lines[1:]]
    vectors = np.array([[float(x) for x in line.split()[1:]] for line in lines[1:]])
    assert vectors.shape == (rows, dim)
    return words, vectors


def test_export_embeddings(lm, export, tiny_args, tmp_path, capsys) -> None:
    lm.main([*tiny_args, "--head", "full", "--max-steps", "1"])
    ckpt = tmp_path / "run/checkpoints/last.ckpt"
    paths = export.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / "emb")])
    assert [p.name for p in paths] == ["input.vec", "output.vec"]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    words, vectors = _read_word2vec(tmp_path / "emb" / "input.vec")
    assert words == list(state["vocabulary"]["words"])
    expected = state["state_dict"]["backbone.embedding.weight"].numpy()
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-7)
    _, output = _read_word2vec(tmp_path / "emb" / "output.vec")
    assert output.shape == (len(words), 16)


def test_export_without_output_rows(lm, export, tiny_args, tmp_path, capsys) -> None:
    lm.main([*tiny_args, "--head", "class", "--max-steps", "1"])  # no output row per word
    ckpt = str(tmp_path / "run/checkpoints/last.ckpt")
    paths = export.main(["--checkpoint", ckpt, "--output-dir", str(tmp_path / "e")])
    assert [p.name for p in paths] == ["input.vec"]
    assert "output.vec not written" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        export.main(["--checkpoint", ckpt, "--which", "output"])
    assert exc.value.code == 2 and "no output embedding" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate.py", "evaluate.py", "export_embeddings.py"])
def test_a_typo_is_reported_before_torch_loads(repo, command: str) -> None:
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['recipes/{command}', '--bogus']\n"
        "try:\n"
        f"    runpy.run_path('recipes/{command}', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
