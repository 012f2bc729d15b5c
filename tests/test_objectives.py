"""Loss functions on hand-computed cases, and the Objectives settings."""
import math

import pytest
import torch

from vlbert.modeling.losses import itm_loss, mlm_loss, mrc_kl_loss, mrc_loss, mrfr_loss
from vlbert.pretraining.objectives import Objectives


def test_mlm_loss_and_accuracy_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    loss, acc = mlm_loss(logits, labels)
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(1 / 3)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)  # row 2 is a three-way tie; argmax picks class 0


def test_mrfr_is_mean_squared_error_over_elements():
    predicted = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    original = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    assert mrfr_loss(predicted, original).item() == pytest.approx((1 + 4 + 0 + 9) / 4)


def test_mrc_loss_matches_cross_entropy_by_hand():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    loss, acc = mrc_loss(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(-math.log(0.2), rel=1e-6)
    assert acc.item() == 0.0


def test_mrc_kl_by_hand_and_zero_when_equal():
    target = torch.tensor([[0.5, 0.5, 0.0]])
    predicted = torch.tensor([[0.25, 0.5, 0.25]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.5)
    assert mrc_kl_loss(torch.log(predicted), target).item() == pytest.approx(expected, rel=1e-5)
    assert mrc_kl_loss(torch.log(target + 1e-9), target).item() == pytest.approx(0.0, abs=1e-6)
    # averaged over regions, not summed
    two = mrc_kl_loss(torch.log(predicted).repeat(2, 1), target.repeat(2, 1))
    assert two.item() == pytest.approx(expected, rel=1e-5)


def test_itm_loss():
    logits = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    loss, acc = itm_loss(logits, torch.tensor([1, 0]))
    expected = (math.log(2) - math.log(math.exp(3) / (math.exp(3) + math.exp(1)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)


def test_objectives_validation():
    assert Objectives(mrc=0.5).enabled() == ["mlm", "mrfr", "mrc", "mrc_kl", "itm"]
    with pytest.raises(ValueError, match="mixing"):
        Objectives(mixing="average")
    with pytest.raises(ValueError, match="every objective weight is 0"):
        Objectives(mlm=0, mrfr=0, mrc=0, mrc_kl=0, itm=0)
    with pytest.raises(ValueError, match=">= 0"):
        Objectives(itm=-1)
