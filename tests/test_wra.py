"""Word-region alignment by optimal transport (UNITER's WRA), on hand-built tensors."""
import itertools

import pytest
import torch

from vlbert.modeling.optimal_transport import cosine_cost, ipot_plan, transport_distance, wra_loss


def test_identical_and_permuted_sets_are_at_distance_zero():
    torch.manual_seed(0)
    words = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert transport_distance(words, words, mask, mask).abs().max() < 1e-5
    shuffled = words[:, torch.randperm(6)]  # a set has no order
    assert transport_distance(words, shuffled, mask, mask).abs().max() < 1e-5
    assert (transport_distance(words, torch.randn(2, 6, 16), mask, mask) > 0.5).all()


def test_the_plan_has_the_marginals_and_no_mass_on_padding():
    torch.manual_seed(1)
    cost = torch.rand(3, 7, 5) * 2
    words = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    regions = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5], dtype=torch.bool)
    plan = ipot_plan(cost, words, regions, iterations=300)
    n_words, n_regions = words.sum(1, keepdim=True), regions.sum(1, keepdim=True)
    assert torch.allclose(plan.sum(2), words / n_words, atol=1e-4)
    assert torch.allclose(plan.sum(1), regions / n_regions, atol=1e-4)
    assert plan[~(words[:, :, None] & regions[:, None, :])].abs().max() == 0


def test_the_distance_is_the_exact_optimal_transport_cost():
    """Between n words and n regions of equal mass, the optimal plan is a permutation (Birkhoff):
    IPOT reaches the best assignment's mean cost, not an entropy-smoothed one."""
    torch.manual_seed(2)
    cost = torch.rand(1, 5, 5)
    mask = torch.ones(1, 5, dtype=torch.bool)
    best = min(sum(cost[0, i, p[i]].item() for i in range(5)) / 5 for p in itertools.permutations(range(5)))
    plan = ipot_plan(cost, mask, mask, beta=0.5, iterations=200)
    assert (cost * plan).sum().item() == pytest.approx(best, abs=1e-4)


def test_padding_changes_nothing():
    torch.manual_seed(3)
    words, regions = torch.randn(1, 4, 8), torch.randn(1, 3, 8)
    alone = transport_distance(words, regions, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool))
    padded_words = torch.cat([words, torch.randn(1, 3, 8) * 100], 1)
    padded_regions = torch.cat([regions, torch.randn(1, 2, 8) * 100], 1)
    word_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    region_mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    padded = transport_distance(padded_words, padded_regions, word_mask, region_mask)
    assert padded.item() == pytest.approx(alone.item(), abs=1e-6)


def test_gradients_flow_through_the_cost_only_and_not_into_padding():
    torch.manual_seed(4)
    words = torch.randn(2, 5, 8, requires_grad=True)
    regions = torch.randn(2, 4, 8, requires_grad=True)
    word_mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    region_mask = torch.ones(2, 4, dtype=torch.bool)
    transport_distance(words, regions, word_mask, region_mask).sum().backward()
    assert words.grad[1, 3:].abs().max() == 0 and words.grad[:, :3].abs().sum() > 0 and regions.grad.abs().sum() > 0


def test_the_cost_is_one_minus_cosine():
    words = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    regions = torch.tensor([[[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]])
    expected = torch.tensor([[[0.0, 2.0, 1 - 2 ** -0.5], [1.0, 1.0, 1 - 2 ** -0.5]]])
    assert torch.allclose(cosine_cost(words, regions), expected, atol=1e-6)


def test_wra_loss_pulls_matched_pairs_together_and_pushes_mismatched_apart():
    distances = torch.tensor([0.2, 0.5, 0.9, 0.4])
    matched = torch.tensor([True, True, False, False])
    assert wra_loss(distances, matched).item() == pytest.approx((0.2 + 0.5 - 0.9 - 0.4) / 4)
    assert wra_loss(torch.zeros(0), torch.zeros(0, dtype=torch.bool)).item() == 0


def test_the_pretraining_model_adds_wra_on_its_itm_pairs_with_its_weight():
    from tiny import random_inputs, tiny_config
    from vlbert.modeling import PretrainingTargets, VLBertForPretraining
    from vlbert.modeling.model import word_positions

    torch.manual_seed(5)
    model = VLBertForPretraining(tiny_config()).eval()
    inputs = random_inputs(batch=4, text=6, regions=5)
    inputs["text_mask"][1, 4:] = False  # a shorter text: its [SEP] is at position 3
    inputs["region_mask"][2, 3:] = False
    pairs, matched = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1])
    targets = PretrainingTargets(("itm", "wra"), {"wra": 0.1}, itm_index=pairs, itm_targets=matched)
    output = model(**inputs, targets=targets)
    hidden = output.last_hidden_state[pairs]
    words = word_positions(inputs["text_mask"][pairs])
    assert words.tolist()[1] == [False, True, True, False, False, False]
    expected = transport_distance(hidden[:, :6], hidden[:, 6:], words, inputs["region_mask"][pairs])
    assert torch.allclose(output.wra_distances, expected)
    assert output.losses["wra"].item() == pytest.approx(wra_loss(expected, matched.bool()).item())
    assert output.loss.item() == pytest.approx((output.losses["itm"] + 0.1 * output.losses["wra"]).item(), rel=1e-6)
    without = model(**inputs, targets=PretrainingTargets(("itm",), itm_index=pairs, itm_targets=matched))
    assert "wra" not in without.losses and without.wra_distances is None


def test_wra_is_set_from_the_config_and_needs_itm():
    from vlbert.errors import InputError
    from vlbert.pretraining.objectives import Objectives

    assert Objectives(wra=0.1).companions(("itm",)) == ("wra",)
    assert Objectives(wra=0.1).companions(("mlm",)) == () and Objectives().companions(("itm",)) == ()
    with pytest.raises(InputError, match="objectives.wra > 0 aligns the words and regions of ITM pairs"):
        Objectives(itm=0.0, wra=0.1)
    with pytest.raises(InputError, match="objectives.wra must be >= 0"):
        Objectives(wra=-1.0)


@pytest.mark.parametrize("mixing", ["sample", "sum"])
def test_pretraining_with_wra_logs_its_loss(tiny_world, tmp_path, monkeypatch, mixing):
    from pathlib import Path

    from tiny import tiny_pretrain_args
    from vlbert.pretraining.cli import PretrainCLI
    from vlbert.pretraining.datamodule import PretrainDataModule
    from vlbert.pretraining.module import PretrainModule

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    # "sample" draws one task per step: ITM alone, so that each step has pairs; "sum" mixes every objective
    others = {f"model.objectives.{name}": 0.0 for name in ("mlm", "mrfr", "mrc_kl")} if mixing == "sample" else {}
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"model.objectives.wra": 0.1, "model.objectives.mixing": mixing,
                                                       "trainer.max_steps": 3, **others})
    cli = PretrainCLI(PretrainModule, PretrainDataModule, args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.logged_metrics
    assert "train/wra_loss" in logged and torch.isfinite(logged["train/wra_loss"])
