import numpy as np
import pytest
import torch

from vlbert.tasks.retrieval.losses import itm_loss, margin_loss, ranking_loss, softmax_loss
from vlbert.tasks.retrieval.negatives import sample_negatives, select_hardest


def test_select_hardest_keeps_top_scores_hardest_first():
    scores = torch.tensor([[0.1, 0.9, -2.0, 0.5, 0.7], [3.0, -1.0, 2.0, 2.5, 0.0]])
    assert select_hardest(scores, 3).tolist() == [[1, 4, 3], [0, 3, 2]]
    assert select_hardest(scores, 0).shape == (2, 0)


def test_select_hardest_ties_keep_lower_index():
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0, 2.0]])
    assert select_hardest(scores, 2).tolist() == [[1, 2]]
    assert select_hardest(scores, 4).tolist() == [[1, 2, 4, 0]]


def test_select_hardest_rejects_bad_counts():
    with pytest.raises(ValueError, match="cannot keep 4 hardest of 3"):
        select_hardest(torch.zeros(2, 3), 4)


def test_sample_negatives_never_returns_right_answers():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        picked = sample_negatives(12, [0, 5, 6, 11], 5, rng).tolist()
        assert len(set(picked)) == 5
        assert not set(picked) & {0, 5, 6, 11}
        assert all(0 <= p < 12 for p in picked)
        seen.update(picked)
    assert seen == set(range(12)) - {0, 5, 6, 11}  # every allowed index is reachable


def test_sample_negatives_all_available_and_too_many():
    rng = np.random.default_rng(1)
    assert sorted(sample_negatives(6, [2], 5, rng).tolist()) == [0, 1, 3, 4, 5]
    assert sample_negatives(6, [2], 0, rng).shape == (0,)
    with pytest.raises(ValueError, match="cannot sample 6 negatives from 5 candidates"):
        sample_negatives(6, [2], 6, rng)
    big = sample_negatives(200_000, list(range(0, 200_000, 40_000)), 50, rng)
    assert len(set(big.tolist())) == 50 and not set(big.tolist()) & set(range(0, 200_000, 40_000))


def test_losses_on_hand_made_scores():
    positive = torch.tensor([2.0, -1.0])
    negatives = torch.tensor([[0.0, 1.0], [-3.0, 4.0]])
    sp = torch.nn.functional.softplus
    expected_itm = sp(-positive).mean() + sp(negatives).mean()
    assert itm_loss(positive, negatives) == pytest.approx(float(expected_itm))
    p, n = torch.sigmoid(positive), torch.sigmoid(negatives)
    expected_margin = torch.clamp(0.2 + n - p[:, None], min=0).mean()
    assert margin_loss(positive, negatives) == pytest.approx(float(expected_margin))
    logits = torch.cat([positive[:, None], negatives], 1)
    expected_softmax = -(logits.log_softmax(1)[:, 0]).mean()
    assert softmax_loss(positive, negatives) == pytest.approx(float(expected_softmax))
    # a well-separated positive makes the margin loss vanish
    assert margin_loss(torch.tensor([10.0]), torch.tensor([[-10.0, -9.0]])) == 0
    with pytest.raises(ValueError, match="unknown retrieval loss"):
        ranking_loss("hinge", positive, negatives)
