import math

import pytest
import torch

from vlbert.tasks.retrieval.metric import chance_recall, retrieval_ranks, retrieval_recall


def brute_force_recall(scores, caption_image, ks=(1, 5, 10)):
    """Sort candidates by score, wrong ones first among equals; rank = position of the first right one."""
    scores = scores.tolist()
    n_images, n_captions = len(scores), len(caption_image)
    t2i_ranks = []
    for c in range(n_captions):
        order = sorted(range(n_images), key=lambda i: (-scores[i][c], i == caption_image[c]))
        t2i_ranks.append(next(pos for pos, i in enumerate(order) if i == caption_image[c]))
    i2t_ranks = []
    for i in range(n_images):
        right = {c for c in range(n_captions) if caption_image[c] == i}
        order = sorted(range(n_captions), key=lambda c: (-scores[i][c], c in right))
        i2t_ranks.append(next(pos for pos, c in enumerate(order) if c in right))
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * sum(r < k for r in i2t_ranks) / n_images
        out[f"t2i_r{k}"] = 100.0 * sum(r < k for r in t2i_ranks) / n_captions
    return out, i2t_ranks, t2i_ranks


def test_hand_made_matrix_with_ties_and_several_captions():
    # 3 images; captions 0,1 -> image 0; 2 -> image 1; 3,4,5 -> image 2
    caption_image = torch.tensor([0, 0, 1, 2, 2, 2])
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.9, 0.0, 0.0, 0.0],  # image 0: own best 0.9 ties with caption 2 (wrong) -> rank 1
            [0.5, 0.5, 0.4, 0.1, 0.2, 0.3],  # image 1: 0.5, 0.5 wrong above its 0.4 -> rank 2
            [0.0, 0.0, 0.0, 0.7, 0.7, 0.2],  # image 2: two own captions tie at the top -> rank 0
        ]
    )
    i2t, t2i = retrieval_ranks(scores, caption_image)
    assert i2t.tolist() == [1, 2, 0]
    # caption 0: image 0 has 0.9, image 1 0.5 -> 0; caption 1: 0.1 vs 0.5 -> 1
    # caption 2: right image 1 has 0.4, image 0 0.9 -> 1; caption 3: 0.1 vs 0.7 -> 0 (right is image 2)
    # caption 5: image 2 has 0.2, image 1 0.3 -> 1
    assert t2i.tolist() == [0, 1, 1, 0, 0, 1]
    recall = retrieval_recall(scores, caption_image, ks=(1, 2))
    assert recall["i2t_r1"] == pytest.approx(100 / 3)
    assert recall["i2t_r2"] == pytest.approx(200 / 3)
    assert recall["t2i_r1"] == pytest.approx(50.0)
    assert recall["t2i_r2"] == pytest.approx(100.0)
    assert recall["r_mean"] == pytest.approx((100 / 3 + 200 / 3 + 50 + 100) / 4)


def test_constant_scores_count_as_misses():
    caption_image = torch.arange(4).repeat_interleave(2)
    recall = retrieval_recall(torch.zeros(4, 8), caption_image, ks=(1, 4))
    assert recall["t2i_r1"] == 0.0 and recall["i2t_r1"] == 0.0
    assert recall["t2i_r4"] == 100.0  # 3 wrong images ahead -> rank 3 < 4


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_tied_matrices(seed):
    g = torch.Generator().manual_seed(seed)
    n_images = 12
    per_image = torch.randint(1, 5, (n_images,), generator=g)
    caption_image = torch.arange(n_images).repeat_interleave(per_image)
    caption_image = caption_image[torch.randperm(len(caption_image), generator=g)]
    # few distinct values -> many ties
    scores = torch.randint(0, 4, (n_images, len(caption_image)), generator=g).float()
    expected, i2t_bf, t2i_bf = brute_force_recall(scores, caption_image.tolist())
    i2t, t2i = retrieval_ranks(scores, caption_image, chunk_size=5)  # chunking exercised
    assert i2t.tolist() == i2t_bf and t2i.tolist() == t2i_bf
    got = retrieval_recall(scores, caption_image)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value)


def test_perfect_scores():
    caption_image = torch.arange(5).repeat_interleave(5)
    scores = torch.nn.functional.one_hot(caption_image, 5).T.float()
    recall = retrieval_recall(scores, caption_image)
    assert all(v == 100.0 for v in recall.values())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="without any caption"):
        retrieval_recall(torch.zeros(3, 2), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_recall(torch.tensor([[float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="one image index per caption"):
        retrieval_recall(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_chance_recall_matches_random_scores():
    caption_image = torch.arange(10).repeat_interleave(5)
    chance = chance_recall(caption_image, 10, ks=(1, 5))
    assert chance["t2i_r1"] == pytest.approx(10.0)
    assert chance["i2t_r1"] == pytest.approx(10.0)  # 5 right of 50 captions
    assert chance["i2t_r5"] == pytest.approx(100 * (1 - math.comb(45, 5) / math.comb(50, 5)))
    g = torch.Generator().manual_seed(0)
    runs = [retrieval_recall(torch.rand(10, 50, generator=g), caption_image, ks=(1, 5)) for _ in range(400)]
    for key in ("t2i_r1", "i2t_r5"):
        assert sum(r[key] for r in runs) / len(runs) == pytest.approx(chance[key], abs=2.5)  # ~3 standard errors
