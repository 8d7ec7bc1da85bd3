#!/usr/bin/env python
"""Sample text from a checkpoint of ``recipes/lm.py``, with the head's exact distribution.

    python recipes/generate.py --checkpoint runs/lm/checkpoints/last.ckpt --prompt "The game"
    python recipes/generate.py --checkpoint last.ckpt --num-words 200 --temperature 0.8 --seed 7

Each next word is drawn from ``p(w | context)`` of the trained model: ``head.sample`` (the exact
distribution of every head, sampled-softmax heads included) at temperature 1, and at temperature
``τ`` from ``softmax(head.log_prob / τ)``; ``τ = 0`` picks the most probable word. The context is
``<eos>`` followed by the prompt (unknown words become ``<unk>``); ``<eos>`` prints as a new line.
"""

from __future__ import annotations

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:  # run as a script from a checkout without installing the package
    sys.path.insert(0, str(_REPO))

from typing import Any  # noqa: E402

from recipes.cli import UsageError, run_command  # noqa: E402

# torch, Lightning and the model are imported inside the functions, after the command line is
# read: a typo or --help answers at once. (jsonargparse executes TYPE_CHECKING blocks, so the
# helpers' tensor arguments are annotated Any.)


def next_word(model: Any, context: Any, temperature: float, generator: Any) -> Any:
    """One draw ``[B]`` of the word after ``context [B, T]``."""
    from lm_heads.base import sample_categorical

    hidden = model(context)[0][:, -1]
    if temperature == 0:
        return model.head.predict(hidden)
    if temperature == 1:
        return model.head.sample(hidden, generator=generator)
    return sample_categorical(model.head.log_prob(hidden) / temperature, generator)


def generate(
    checkpoint: Path,
    prompt: str = "",
    num_words: int = 50,
    temperature: float = 1.0,
    seed: int = 1234,
    vocab: Path | None = None,
) -> str:
    """Sample text from a checkpoint of recipes/lm.py with the head's exact distribution.

    Args:
        checkpoint: a checkpoint written by recipes/lm.py (e.g. runs/lm/checkpoints/last.ckpt).
        prompt: words to continue (split on spaces; unknown words become <unk>).
        num_words: how many words to sample.
        temperature: 1 samples p exactly; lower sharpens, higher flattens; 0 is greedy.
        seed: seed of the sampler (same seed, same text).
        vocab: vocab.json of the token cache, for checkpoints that predate carrying it.
    """
    if temperature < 0 or num_words < 1:
        raise UsageError(
            f"need --temperature >= 0 and --num-words >= 1, got {temperature}, {num_words}"
        )
    import torch

    from lm_heads.data import EOS
    from recipes.checkpoint import load_model

    model, vocabulary, _ = load_model(Path(checkpoint), vocab)
    ids = [vocabulary.eos_id] + [vocabulary.stoi.get(w, vocabulary.unk_id) for w in prompt.split()]
    unknown = [w for w in dict.fromkeys(prompt.split()) if w not in vocabulary.stoi]
    if unknown:
        print(
            f"recipes/generate.py: note: {len(unknown)} prompt word(s) are not in the model's "
            f"vocabulary and become <unk>: {', '.join(unknown)}",
            file=sys.stderr,
            flush=True,
        )
    tokens = torch.tensor([ids])
    max_len = getattr(model.backbone, "max_len", None)  # Transformer: its longest context
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(num_words):
            context = tokens[:, -max_len:] if max_len else tokens
            tokens = torch.cat(
                [tokens, next_word(model, context, temperature, generator)[:, None]], 1
            )
    words = vocabulary.decode(tokens[0, 1:].tolist())
    text = " ".join(words).replace(f" {EOS} ", "\n").replace(EOS, "\n")
    print(text, flush=True)
    return text


def main(argv: list[str] | None = None) -> str:
    return run_command(generate, argv, "recipes/generate.py")


if __name__ == "__main__":
    main()
