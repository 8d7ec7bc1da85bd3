import itertools
import math
import time

import numpy as np
import pytest
import torch

from lm_heads.data import SyntheticLanguage
from lm_heads.data.synthetic import stationary_distribution
from lm_heads.similarity import word_similarity


def test_deterministic_by_seed():
    a, b = SyntheticLanguage(300, 6, seed=3), SyntheticLanguage(300, 6, seed=3)
    assert np.array_equal(a.transition, b.transition)
    assert np.array_equal(a.sample(5000), b.sample(5000))
    assert np.array_equal(a.sample(5000, seed=1), b.sample(5000, seed=1))
    assert not np.array_equal(a.sample(5000), a.sample(5000, seed=1))
    assert not np.array_equal(a.sample(5000), SyntheticLanguage(300, 6, seed=4).sample(5000))
    assert a.similarity_pairs(50) == b.similarity_pairs(50)


def test_structure_is_a_valid_markov_model():
    lang = SyntheticLanguage(500, 8, seed=1)
    assert np.allclose(lang.transition.sum(1), 1) and (lang.transition > 0).all()
    assert np.allclose(lang.stationary @ lang.transition, lang.stationary, atol=1e-12)
    emission_mass = np.bincount(lang.word_class, lang.emission_prob, lang.num_classes)
    assert np.allclose(emission_mass, 1)
    assert set(lang.word_class.tolist()) == set(range(8)), "every class has a word"


def test_unigram_is_exactly_zipf():
    lang = SyntheticLanguage(2000, 16, zipf_exponent=1.1, seed=0)
    zipf = np.arange(1, 2001) ** -1.1
    np.testing.assert_allclose(lang.unigram, zipf / zipf.sum(), rtol=1e-9)
    counts = np.sort(np.bincount(lang.sample(200_000), minlength=2000))[::-1]
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks), np.log(counts[:100]), 1)[0]
    assert slope == pytest.approx(-1.1, abs=0.1)


def test_entropy_rate_matches_brute_force_on_tiny_alphabet():
    lang = SyntheticLanguage(5, 2, concentration=0.5, seed=7)
    # The word process is first-order Markov: H = H(W_2, W_1) - H(W_1) by enumeration.
    classes = lang.word_class
    joint = np.zeros((5, 5))
    for first, second in itertools.product(range(5), repeat=2):
        joint[first, second] = (
            lang.unigram[first]
            * lang.transition[classes[first], classes[second]]
            * lang.emission_prob[second]
        )
    assert joint.sum() == pytest.approx(1.0)
    h_pair = -(joint * np.log(joint)).sum()
    h_first = -(lang.unigram * np.log(lang.unigram)).sum()
    assert lang.entropy_rate == pytest.approx(h_pair - h_first, rel=1e-10)
    assert lang.perplexity_floor == pytest.approx(math.exp(h_pair - h_first))


def test_monte_carlo_nll_matches_entropy_rate():
    lang = SyntheticLanguage(1000, 12, seed=2)
    log_prob = lang.log_prob(lang.sample(300_000))
    stderr = log_prob.std() / math.sqrt(log_prob.size)  # ignores autocorrelation: use 5 sigma
    assert -log_prob.mean() == pytest.approx(lang.entropy_rate, abs=5 * stderr + 1e-3)


def test_sampled_class_transitions_follow_the_chain():
    lang = SyntheticLanguage(200, 4, seed=5)
    classes = lang.word_class[lang.sample(200_000)]
    pairs = np.zeros((4, 4))
    np.add.at(pairs, (classes[:-1], classes[1:]), 1)
    empirical = pairs / pairs.sum(1, keepdims=True)
    np.testing.assert_allclose(empirical, lang.transition, atol=0.01)


def test_stationary_distribution_solves_balance():
    transition = np.array([[0.9, 0.1], [0.5, 0.5]])
    np.testing.assert_allclose(stationary_distribution(transition), [5 / 6, 1 / 6])


def test_similarity_pairs_agree_with_class_contexts():
    lang = SyntheticLanguage(400, 10, seed=0)
    pairs = lang.similarity_pairs(200, candidates=300)
    assert len(pairs) == 200 and len({(a, b) for a, b, _ in pairs}) == 200
    assert all(0 <= score <= 10 for _, _, score in pairs)
    same = [s for a, b, s in pairs if lang.word_class[int(a[1:])] == lang.word_class[int(b[1:])]]
    assert same and all(s == 10 for s in same)
    # Embedding each word by its class's context vector reproduces the scores exactly.
    features = torch.from_numpy(lang.class_features()[lang.word_class])
    stoi = {w: i for i, w in enumerate(lang.words)}
    result = word_similarity(features, stoi, pairs)
    assert result.covered == 200 and result.spearman == pytest.approx(1.0, abs=1e-6)


def test_large_vocabulary_samples_quickly():
    start = time.monotonic()
    lang = SyntheticLanguage(200_000, 128, seed=0)
    ids = lang.sample(1_000_000)
    assert ids.min() >= 0 and ids.max() < 200_000
    assert time.monotonic() - start < 30  # ~1 s on an idle core


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vocab_size": 0},
        {"vocab_size": 4, "num_classes": 5},
        {"zipf_exponent": 0.0},
        {"concentration": -1.0},
        {"restart": 0.0},
    ],
)
def test_bad_options(kwargs):
    with pytest.raises(ValueError):
        SyntheticLanguage(**{"vocab_size": 100, "num_classes": 4, **kwargs})
