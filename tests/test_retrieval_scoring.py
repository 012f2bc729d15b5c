import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vlbert.tasks.retrieval.metric import retrieval_recall
from vlbert.tasks.retrieval.scoring import CaptionBank, ImageBlock, gather_rows, score_block, shard_range


def fake_scorer(input_ids, text_mask, region_features, region_locations, region_mask):
    """Depends on every input and breaks if padding leaks in (padding values are nonzero below)."""
    text = (input_ids.float() * text_mask).sum(1) / text_mask.sum(1)
    regions = (region_features.sum(-1) * region_mask).sum(1) + (region_locations[..., 0] * region_mask).sum(1)
    return torch.sin(text * 0.37) * regions + text


def toy_world(n_images=5, n_captions=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = [torch.randint(5, 50, (int(torch.randint(2, 9, (), generator=g)),), generator=g).tolist() for _ in range(n_captions)]
    counts = torch.randint(1, 6, (n_images,), generator=g)
    features = torch.randn(n_images, 6, 3, generator=g)
    locations = torch.rand(n_images, 6, 7, generator=g)
    mask = torch.arange(6)[None] < counts[:, None]
    features[~mask] = 99.0  # padding that must never be read
    locations[~mask] = 99.0
    return tokens, features, locations, mask


def brute_force_matrix(tokens, features, locations, mask):
    out = torch.empty(features.shape[0], len(tokens))
    for i in range(features.shape[0]):
        n = int(mask[i].sum())
        for c, t in enumerate(tokens):
            ids = torch.tensor([t])
            out[i, c] = fake_scorer(ids, torch.ones_like(ids, dtype=torch.bool), features[i : i + 1, :n],
                                    locations[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool))[0]
    return out


def test_shard_range_partitions_rows():
    for n in (0, 1, 5, 10, 11):
        for world in (1, 2, 3, 4):
            rows = [list(shard_range(n, r, world)) for r in range(world)]
            assert sum(rows, []) == list(range(n))
            assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_caption_bank_sorts_by_length():
    bank = CaptionBank.build([[7, 8], [1, 2, 3, 4], [5]], pad_id=0)
    assert bank.order.tolist() == [1, 0, 2]
    assert bank.lengths.tolist() == [4, 2, 1]
    assert bank.input_ids.tolist() == [[1, 2, 3, 4], [7, 8, 0, 0], [5, 0, 0, 0]]


@pytest.mark.parametrize("pairs_per_batch", [1, 4, 11, 23, 1000])
def test_score_block_equals_pair_by_pair(pairs_per_batch):
    tokens, features, locations, mask = toy_world()
    bank = CaptionBank.build(tokens, pad_id=3)
    block = ImageBlock(features, locations, mask, torch.arange(5))
    scores = score_block(fake_scorer, block, bank, pairs_per_batch=pairs_per_batch)
    torch.testing.assert_close(scores, brute_force_matrix(tokens, features, locations, mask))


def _sharded_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tokens, features, locations, mask = toy_world()
        rows = shard_range(features.shape[0], rank, world)
        block = ImageBlock(features[rows.start : rows.stop], locations[rows.start : rows.stop],
                           mask[rows.start : rows.stop], torch.tensor(list(rows)))
        local = score_block(fake_scorer, block, CaptionBank.build(tokens, pad_id=3), pairs_per_batch=7)
        full = gather_rows(local, features.shape[0])
        torch.save(full, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_scoring_equals_single_process(tmp_path):
    tokens, features, locations, mask = toy_world()
    single = gather_rows(
        score_block(fake_scorer, ImageBlock(features, locations, mask, torch.arange(5)), CaptionBank.build(tokens, pad_id=3)),
        features.shape[0],
    )
    mp.spawn(_sharded_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "scores")), nprocs=2, join=True)
    caption_image = torch.arange(11) % 5
    for rank in range(2):
        full = torch.load(tmp_path / f"scores.{rank}")
        torch.testing.assert_close(full, single)
        assert retrieval_recall(full, caption_image) == retrieval_recall(single, caption_image)
