import pytest
import torch

from lm_heads.counts import as_counts, equal_mass_bins, frequency_order


def test_frequency_order_is_stable_and_inverse() -> None:
    counts = torch.tensor([5.0, 9.0, 5.0, 1.0, 9.0])
    id_of_rank, rank_of_id = frequency_order(counts)
    assert id_of_rank.tolist() == [1, 4, 0, 2, 3]  # ties keep id order
    assert torch.equal(rank_of_id[id_of_rank], torch.arange(5))


def test_equal_mass_bins_balance_unigram_mass() -> None:
    counts = torch.full((1000,), 10.0)
    bounds = equal_mass_bins(counts, 4)
    assert bounds.tolist() == [0, 250, 500, 750, 1000]


def test_equal_mass_bins_isolate_heavy_words_and_never_empty() -> None:
    counts = torch.tensor([1e6, 1e5] + [1.0] * 98)
    bounds = equal_mass_bins(counts, 10)
    sizes = bounds.diff()
    assert bounds[0] == 0 and bounds[-1] == 100 and bool((sizes >= 1).all())
    assert sizes[0] == 1  # the most frequent word carries far more than 1/10 of the mass


def test_equal_mass_bins_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="num_bins"):
        equal_mass_bins(torch.ones(3), 4)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (None, "needs counts"),
        (torch.ones(3), "3 entries but vocab_size is 4"),
        (torch.tensor([1.0, -1.0, 1.0, 1.0]), r"counts\[1\] = -1"),
        (torch.tensor([1.0, float("nan"), 1.0, 1.0]), "finite"),
        (torch.zeros(4), "sum to zero"),
    ],
)
def test_as_counts_errors_say_what_is_wrong(counts, message) -> None:
    with pytest.raises(ValueError, match=message):
        as_counts(counts, 4, "class")


def test_as_counts_accepts_lists_and_integer_tensors() -> None:
    assert as_counts([3, 1, 2, 0], 4, "class").dtype == torch.float64
    assert as_counts(torch.tensor([3, 1, 2, 0]), 4, "class").tolist() == [3.0, 1.0, 2.0, 0.0]
