r"""A seeded synthetic word language whose perplexity floor is known exactly.

Every word ``w`` belongs to exactly one latent class ``c(w)`` (``C`` classes). Text is produced by
a Markov chain over classes and a per-class emission:

.. math::

    c_{t+1} \sim T[c_t, \cdot], \qquad w_t \sim E[c_t, \cdot], \qquad
    E[c, w] = \frac{p(w)}{P_c}\,[c(w) = c], \qquad p(w) \propto (w+1)^{-s}.

Construction (all from ``seed``): the ``C`` most frequent words go one per class, the others to
uniformly random classes; ``P_c`` is the Zipf mass of class ``c``. The class chain starts from
sparse-ish ``Dirichlet(concentration)`` rows (the "grammar") mixed with ``restart`` of uniform
(so every transition stays possible) and is Sinkhorn-balanced so that its stationary law is
exactly ``P``: overall word frequencies are then exactly Zipfian, ``π_{c(w)} E[c(w), w] = p(w)``.

Because the class is a deterministic function of the word, the word sequence itself is a
first-order Markov chain,
``p(w_{t+1} | w_{\le t}) = T[c(w_t), c(w_{t+1})]\,E[c(w_{t+1}), w_{t+1}]``, and its entropy
rate (nats per token) is exactly

.. math::

    H = \sum_c \pi_c \Big[ H(T_{c\cdot}) + \sum_{c'} T_{cc'} H(E_{c'\cdot}) \Big]
      = \sum_c \pi_c H(T_{c\cdot}) + \sum_c \pi_c H(E_{c\cdot}),

with ``π`` the stationary distribution of ``T`` (solved in float64). No model can beat the
perplexity ``exp(H)`` in expectation; a finite sample's per-token NLL under the true model
fluctuates around ``H`` (the first token of a sample costs its unigram NLL instead).

Ground-truth similarity: two words are as similar as their classes' distributional contexts, the
cosine between the concatenated next-class and previous-class distributions (×10, like SimLex);
words of one class have identical contexts and score 10.
"""

from __future__ import annotations

import math

import numpy as np

WORD_PREFIX = "w"


def _entropy_rows(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row; 0·log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probs > 0, probs * np.log(probs), 0.0)
    return -terms.sum(axis=-1)


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
    """``π`` with ``π T = π`` and ``Σπ = 1`` for an irreducible stochastic matrix (float64)."""
    size = transition.shape[0]
    system = transition.T.astype(np.float64) - np.eye(size)
    system[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _balance(kernel: np.ndarray, mass: np.ndarray, tol: float = 1e-13) -> np.ndarray:
    """A stochastic ``T ∝ diag(a) K diag(g)`` (row-normalised) whose stationary law is ``mass``.

    Sinkhorn scaling of the positive ``kernel`` to row and column sums ``mass`` gives
    ``M = diag(a) K diag(g)``; then ``T = M / mass[:, None]`` is row-stochastic and
    ``mass @ T = column sums of M = mass``.
    """
    kernel = kernel.astype(np.float64)
    col = np.ones(kernel.shape[0])
    for _ in range(100_000):
        row = mass / (kernel @ col)
        col = mass / (kernel.T @ row)
        scaled = row[:, None] * kernel * col[None, :]
        if np.abs(scaled.sum(axis=1) - mass).max() < tol:
            break
    transition = scaled / scaled.sum(axis=1, keepdims=True)
    return transition


def _sample_rows(cum_flat: np.ndarray, width: int, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws from many categorical rows at once.

    ``cum_flat[r * width + j] = r + Σ_{k≤j} P[r, k]`` is one increasing array over all rows, so a
    single 1-D ``searchsorted`` serves every row without materialising ``[n, width]``.
    """
    index = np.searchsorted(cum_flat, rows + u, side="right") - rows * width
    # rows + u can round up to rows + 1 in float64 for u within 2^-53 of 1.
    return np.minimum(index, width - 1)


class SyntheticLanguage:
    """A Zipfian word language with latent word classes and an exactly computable entropy rate.

    Args:
        vocab_size: number of words ``V`` (``w0`` … ``w{V-1}``, ``w0`` most frequent); up to ~10^6.
        num_classes: number of latent classes ``C`` (``<= vocab_size``).
        zipf_exponent: ``s`` in ``p(w) ∝ (w+1)^{-s}``.
        concentration: Dirichlet concentration of the class transition rows; small = sparse, a
            more predictable grammar.
        restart: weight of the uniform part mixed into the grammar before balancing.
        seed: everything (structure and samples) is a deterministic function of the seed.

    Attributes:
        transition: ``T [C, C]``, the class chain; ``stationary``: its stationary law ``π [C]``.
        word_class: ``[V]`` class of each word; ``emission_prob``: ``E[c(w), w]`` per word ``[V]``.
        unigram: ``[V]`` stationary word frequency ``π_{c(w)} E[c(w), w]``.
    """

    def __init__(
        self,
        vocab_size: int = 10_000,
        num_classes: int = 64,
        *,
        zipf_exponent: float = 1.0,
        concentration: float = 0.1,
        restart: float = 0.1,
        seed: int = 0,
    ) -> None:
        for name, value in (("vocab_size", vocab_size), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_classes > vocab_size:
            raise ValueError(
                f"num_classes ({num_classes}) must not exceed vocab_size ({vocab_size}): "
                "every class needs at least one word"
            )
        if not zipf_exponent > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
        if not concentration > 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        if not 0 < restart <= 1:
            raise ValueError(f"restart must lie in (0, 1], got {restart}")
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.zipf_exponent = float(zipf_exponent)
        self.concentration = float(concentration)
        self.restart = float(restart)
        self.seed = int(seed)

        rng = np.random.default_rng([self.seed, 0])
        size, classes = vocab_size, num_classes
        zipf = np.arange(1, size + 1, dtype=np.float64) ** -self.zipf_exponent
        zipf /= zipf.sum()
        # The C most frequent words go one per class (no class is empty), the rest at random.
        word_class = np.empty(size, dtype=np.int64)
        word_class[:classes] = rng.permutation(classes)
        word_class[classes:] = rng.integers(0, classes, size - classes)
        class_mass = np.bincount(word_class, zipf, classes)

        grammar = rng.dirichlet(np.full(classes, self.concentration), size=classes)
        grammar = np.nan_to_num(grammar)  # tiny concentrations can underflow a whole row
        grammar[grammar.sum(axis=1) <= 0] = 1.0
        grammar /= grammar.sum(axis=1, keepdims=True)
        mixed = (1.0 - self.restart) * grammar + self.restart / classes
        self.transition = _balance(mixed, class_mass)
        self.stationary = stationary_distribution(self.transition)
        self.word_class = word_class
        self.emission_prob = zipf / class_mass[word_class]
        # == zipf up to rounding, since π equals the class masses by construction.
        self.unigram = self.stationary[word_class] * self.emission_prob

        # Doeblin split T = ρ' 1 ν^T + (1 - ρ') R: with prob. ρ' the next class ignores the
        # current one, which cuts the chain into independent segments (see ``sample``).
        floor = self.transition.min(axis=0)
        self._restart_prob = float(min(floor.sum(), 1.0))
        self._restart_dist = floor / floor.sum()
        rest = np.clip(self.transition - floor, 0.0, None)
        rest_sum = rest.sum(axis=1, keepdims=True)
        grammar = np.where(rest_sum > 0, rest / np.where(rest_sum > 0, rest_sum, 1.0), 1 / classes)

        # Sampling tables: words grouped by class, one increasing cumulative array per table.
        self._order = np.argsort(word_class, kind="stable")
        self._class_start = np.concatenate([[0], np.cumsum(np.bincount(word_class, None, classes))])
        self._emission_cum = self._grouped_cumsum()
        self._grammar_cum = self._row_cumsum(grammar)
        self._restart_cum = np.cumsum(self._restart_dist)
        self._stationary_cum = np.cumsum(self.stationary)
        self._restart_cum[-1] = self._stationary_cum[-1] = 1.0

    # ------------------------------------------------------------------ structure
    def _row_cumsum(self, probs: np.ndarray) -> np.ndarray:
        cum = np.cumsum(probs, axis=1)
        cum[:, -1] = 1.0
        return (cum + np.arange(probs.shape[0])[:, None]).reshape(-1)

    def _grouped_cumsum(self) -> np.ndarray:
        classes = self.word_class[self._order]
        probs = self.emission_prob[self._order]
        cum = np.cumsum(probs)
        # Restart the running sum at each class boundary; offset each class by its index.
        starts = self._class_start[:-1]
        before = np.concatenate([[0.0], cum])[starts]
        cum = cum - before[classes]
        cum[self._class_start[1:] - 1] = 1.0
        return cum + classes

    @property
    def words(self) -> list[str]:
        return [f"{WORD_PREFIX}{i}" for i in range(self.vocab_size)]

    @property
    def emission_entropy(self) -> np.ndarray:
        """``H(E_c·)`` for every class ``[C]``, nats."""
        terms = -self.emission_prob * np.log(self.emission_prob)
        return np.bincount(self.word_class, terms, self.num_classes)

    @property
    def entropy_rate(self) -> float:
        """Exact entropy rate ``H`` of the word process, nats per token."""
        pi = self.stationary
        transition_part = float(pi @ _entropy_rows(self.transition))
        # Σ_c π_c Σ_c' T_cc' H(E_c') written without the π T = π shortcut, as in the docstring.
        emission_part = float(pi @ (self.transition @ self.emission_entropy))
        return transition_part + emission_part

    @property
    def perplexity_floor(self) -> float:
        """``exp(H)``: the perplexity of the true model, which no model beats in expectation."""
        return math.exp(self.entropy_rate)

    # ------------------------------------------------------------------ sampling
    def sample(self, num_tokens: int, seed: int | None = None) -> np.ndarray:
        """A stationary sample of ``num_tokens`` word indices (int64), vectorised.

        With ``T = ρ 1 ν^T + (1-ρ) R`` (Doeblin split: ``ρν`` is the column-wise minimum of ``T``),
        the chain is cut at "restart" steps (prob. ``ρ``, where the next class comes from ``ν``
        whatever the current one); the segments in between are then walked in parallel, one
        step of all segments per loop iteration (~``log(N)/ρ`` iterations). This is an exact
        draw from ``T``, not an approximation.
        """
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        rng = np.random.default_rng([self.seed, 1, self.seed if seed is None else int(seed)])
        size = int(num_tokens)
        if size == 0:
            return np.zeros(0, dtype=np.int64)
        restart = rng.random(size) < self._restart_prob
        restart[0] = True
        starts = np.flatnonzero(restart)
        lengths = np.diff(np.append(starts, size))
        classes = np.empty(size, dtype=np.int64)
        last = self.num_classes - 1
        fresh = np.searchsorted(self._restart_cum, rng.random(starts.size), side="right")
        classes[starts] = np.minimum(fresh, last)
        classes[0] = min(int(np.searchsorted(self._stationary_cum, rng.random(), "right")), last)
        by_length = np.argsort(-lengths, kind="stable")
        starts, lengths = starts[by_length], lengths[by_length]
        active = starts.size
        for step in range(1, int(lengths[0]) if lengths.size else 0):
            while lengths[active - 1] <= step:
                active -= 1
            positions = starts[:active] + step
            previous = classes[positions - 1]
            classes[positions] = _sample_rows(
                self._grammar_cum, self.num_classes, previous, rng.random(active)
            )
        slot = np.searchsorted(self._emission_cum, classes + rng.random(size), side="right")
        slot = np.minimum(slot, self._class_start[classes + 1] - 1)
        return self._order[slot]

    def log_prob(self, words: np.ndarray) -> np.ndarray:
        """Per-token ``log p(w_t | w_{t-1})`` under the true model (unigram for the first)."""
        words = np.asarray(words, dtype=np.int64)
        classes = self.word_class[words]
        out = np.log(self.emission_prob[words])
        if words.size:
            out[0] = np.log(self.unigram[words[0]])
            out[1:] += np.log(self.transition[classes[:-1], classes[1:]])
        return out

    # ------------------------------------------------------------------ similarity
    def class_features(self) -> np.ndarray:
        """``[C, 2C]``: next-class and previous-class distributions of each class."""
        pi = self.stationary
        backward = (self.transition * pi[:, None]).T / pi[:, None]  # p(c_{t-1}=c' | c_t=c)
        return np.concatenate([self.transition, backward], axis=1)

    def class_similarity(self) -> np.ndarray:
        """``[C, C]`` cosine similarity of :meth:`class_features` (in [0, 1])."""
        features = self.class_features()
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
        similarity = np.clip(features @ features.T, 0.0, 1.0)
        np.fill_diagonal(similarity, 1.0)  # exactly, not 1 - ulps: same-class pairs tie at 10
        return similarity

    def similarity_pairs(
        self, num_pairs: int = 999, *, candidates: int = 2000, same_class_fraction: float = 0.25
    ) -> list[tuple[str, str, float]]:
        """Deterministic ground-truth pairs ``(word1, word2, score in [0, 10])``.

        Words are drawn from the ``candidates`` most frequent ones (so a model has seen them);
        about ``same_class_fraction`` of the pairs share a class (score 10), the rest are random.
        """
        rng = np.random.default_rng([self.seed, 2])
        pool = np.argsort(-self.unigram, kind="stable")[: min(candidates, self.vocab_size)]
        if pool.size < 2:
            raise ValueError("need at least two words for similarity pairs")
        similarity = self.class_similarity()
        pool_class = self.word_class[pool]
        by_class = [pool[pool_class == c] for c in range(self.num_classes)]
        multi = [members for members in by_class if members.size >= 2]
        max_pairs = pool.size * (pool.size - 1) // 2
        target = min(num_pairs, max_pairs)
        seen: set[tuple[int, int]] = set()
        pairs: list[tuple[str, str, float]] = []
        attempts = 0
        while len(pairs) < target and attempts < 50 * target + 100:
            attempts += 1
            if multi and rng.random() < same_class_fraction:
                members = multi[rng.integers(len(multi))]
                a, b = rng.choice(members, size=2, replace=False)
            else:
                a, b = rng.choice(pool, size=2, replace=False)
            key = (int(min(a, b)), int(max(a, b)))
            if key in seen:
                continue
            seen.add(key)
            score = 10.0 * float(similarity[self.word_class[a], self.word_class[b]])
            pairs.append((f"{WORD_PREFIX}{a}", f"{WORD_PREFIX}{b}", score))
        return pairs

    def __repr__(self) -> str:
        return (
            f"SyntheticLanguage(vocab_size={self.vocab_size}, num_classes={self.num_classes}, "
            f"seed={self.seed}, ppl_floor={self.perplexity_floor:.2f})"
        )
