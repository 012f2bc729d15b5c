"""The speed work keeps the maths: the packed (unpadded) encoder equals the padded one; the
benchmarks run end to end at tiny size and print their JSON line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import tiny_config
from vlbert.modeling.encoder import Encoder, Packing
from vlbert.modeling.model import VLBertForPretraining

REPO = Path(__file__).resolve().parent.parent


def padded_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([9, 4, 7])
    mask = torch.arange(9)[None] < lengths[:, None]
    hidden = torch.randn(3, 9, 32, generator=g)
    return hidden, mask[:, None, None, :]


def test_packing_round_trip():
    hidden, mask = padded_batch()
    packing = Packing.from_key_mask(mask)
    packed = packing.pack(hidden)
    assert packed.shape == (9 + 4 + 7, 32)
    torch.testing.assert_close(packed[9:13], hidden[1, :4])
    restored = packing.unpack(packed)
    torch.testing.assert_close(restored[mask[:, 0, 0]], hidden[mask[:, 0, 0]])
    assert restored[~mask[:, 0, 0]].abs().sum() == 0


def test_packed_encoder_matches_padded_layers_forward_and_backward():
    """Encoder.forward packs padded batches; running its layers on the padded layout must give the
    same outputs at real positions and the same parameter gradients."""
    torch.manual_seed(0)
    encoder = Encoder(tiny_config()).train()  # dropout 0 in the tiny config: deterministic
    hidden, mask = padded_batch()
    real = mask[:, 0, 0]
    packed_out = encoder(hidden, mask)
    packed_out[real].square().sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in encoder.named_parameters()}
    encoder.zero_grad()
    padded = hidden
    for layer in encoder.layers:
        padded = layer(padded, mask)
    padded[real].square().sum().backward()
    torch.testing.assert_close(packed_out[real], padded[real], atol=1e-5, rtol=1e-5)
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_unpadded_batch_takes_the_plain_path():
    encoder = Encoder(tiny_config()).eval()
    hidden, _ = padded_batch()
    with torch.no_grad():
        expected = hidden
        for layer in encoder.layers:
            expected = layer(expected, None)
        torch.testing.assert_close(encoder(hidden, None), expected)


def test_packed_gradient_checkpointing_matches():
    torch.manual_seed(0)
    plain = VLBertForPretraining(tiny_config()).train()
    ckpt = VLBertForPretraining(tiny_config(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    inputs = {
        "input_ids": torch.randint(5, 150, (2, 6), generator=g),
        "text_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool),
        "region_features": torch.randn(2, 4, 64, generator=g),
        "region_locations": torch.rand(2, 4, 7, generator=g),
        "region_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool),
    }
    for model in (plain, ckpt):
        model.vlbert(**inputs).pooler_output.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def run_bench(script, *args):
    run = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0])


@pytest.mark.slow
def test_pretrain_step_bench_runs_at_tiny_size():
    result = run_bench("pretrain_step.py", "--size", "tiny", "--steps", "1", "--batch-size", "4")
    # the analytic count is what runs, padded (fixed) and packed (mix)
    assert result["fixed_flops_analytic_vs_counter"] == result["mix_flops_analytic_vs_counter"] == 1.0
    for key in ("fixed_visualbert_samples_per_s", "fixed_vlbert_mlm_itm_ratio", "mix_vlbert_mlm_mrm_itm_ratio",
                "fixed_vlbert_mlm_itm_fraction_of_peak", "matmul_peak_gflop_per_s"):
        assert result[key] > 0, key
    assert result["mix_visualbert_padded_len"] == 140
    assert set(result["targets"]) == {"fixed_ratio_ge_1.25", "fraction_of_peak_ge_0.5", "mix_ratio_ge_2"}


def test_explicit_attention_matches_sdpa():
    """The CPU training path (explicit softmax attention) equals SDPA; with dropout 0 they must agree."""
    from vlbert.modeling.encoder import explicit_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])[:, None, None, :]
    for key_mask in (None, mask):
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        torch.testing.assert_close(explicit_attention(q, k, v, key_mask, 0.0), expected, atol=1e-5, rtol=1e-5)
    dropped = explicit_attention(q, k, v, mask, 0.5)
    assert dropped.shape == q.shape and torch.isfinite(dropped).all()


@pytest.mark.slow
def test_loader_bench_runs_at_tiny_size():
    result = run_bench("loader.py", "--images", "48", "--feature-dim", "32", "--batch-size", "8", "--workers", "1", "--rounds", "1")
    assert result["bare_records_per_s"] > 0 and result["loader_records_per_s"] > 0
    assert abs(result["ratio"] - result["loader_records_per_s"] / result["bare_records_per_s"]) < 0.01 * result["ratio"] + 1e-3
    assert result["loader_cpu_ms_per_record"] > 0
    assert set(result["targets"]) == {"loader_ge_0.8_of_bare"}


def test_per_example_attention_matches_padded_sdpa():
    """CPU packed attention (each example on its own tokens) equals the padded SDPA path GPUs take."""
    from vlbert.modeling.encoder import SelfAttention, packed_attention

    torch.manual_seed(0)
    attention = SelfAttention(tiny_config()).eval()
    hidden, mask = padded_batch()
    packing = Packing.from_key_mask(mask)
    assert packing.lengths == [9, 4, 7]
    qkv = attention.qkv(packing.pack(hidden))
    per_example = packed_attention(qkv, packing.lengths, attention.num_heads, 0.0)
    padded = packing.pack(attention.padded_attention(packing.unpack(qkv), mask, 0.0))
    torch.testing.assert_close(per_example, padded, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- input pipeline

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from vlbert.data.collate import collate_inputs, pad_stack  # noqa: E402
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


def write_store(path, dtype="float16", num_classes=0, labels=False, count=6, seed=0, **writer):
    rng = np.random.default_rng(seed)
    records = []
    with FeatureWriter(path, 16, num_classes, dtype=dtype, **writer) as w:
        for i in range(count):
            n = int(rng.integers(1, 9))
            probs = rng.dirichlet(np.ones(num_classes), n).astype(np.float32) if num_classes else None
            record = RegionRecord(
                f"img/{i}", rng.standard_normal((n, 16)).astype(np.float32), rng.uniform(0, 50, (n, 4)).astype(np.float32),
                60 + i, 40 + i, probs, rng.integers(0, 5, n) if labels else None,
            )
            w.add(record)
            records.append(record)
    return records


def reference(path, image_id):
    """The record as plain h5py reads it."""
    with h5py.File(path, "r") as f:
        g = f["images"][image_id.replace("%", "%25").replace("/", "%2F")]
        return {name: g[name][()] for name in ("features", "boxes", "class_probs", "labels") if name in g} | {
            "size": (int(g.attrs["image_w"]), int(g.attrs["image_h"]))
        }


def forbid_h5py_reads(monkeypatch):
    """From here on, any read through h5py fails the test: what still works is read as raw bytes."""
    def refuse(*args, **kwargs):
        raise AssertionError("read through h5py")

    monkeypatch.setattr(h5py.Group, "__getitem__", refuse)  # the h5py read path, and the file's /images group
    monkeypatch.setattr(h5py.h5g, "open", refuse)  # where arrays lie: looked up once per image
    monkeypatch.setattr(h5py.h5d, "open", refuse)


def assert_same(record, expected):
    assert (record.image_w, record.image_h) == expected["size"]
    for name in ("features", "boxes", "class_probs", "labels"):
        got = getattr(record, name)
        if name not in expected:
            assert got is None, name
        else:
            assert got.dtype == expected[name].dtype and np.array_equal(got, expected[name]), name


@pytest.mark.parametrize("dtype,num_classes,labels", [("float16", 0, False), ("float32", 5, True), ("float16", 5, False)])
def test_feature_store_raw_reads_equal_h5py_reads(tmp_path, monkeypatch, dtype, num_classes, labels):
    path = tmp_path / "f.h5"
    records = write_store(path, dtype, num_classes, labels)
    store = FeatureStore(path)
    expected = {r.image_id: reference(path, r.image_id) for r in records}
    for r in records:  # first read: where the arrays lie is noted
        assert_same(store[r.image_id], expected[r.image_id])
        assert store.num_boxes(r.image_id) == r.num_boxes
    forbid_h5py_reads(monkeypatch)
    for _ in range(2):  # every later read is raw
        for r in records:
            assert_same(store[r.image_id], expected[r.image_id])
            assert store.num_boxes(r.image_id) == r.num_boxes
    assert [store.raw_features(r.image_id) for r in records] == [(r.num_boxes, np.dtype(dtype)) for r in records]
    # the arrays are the caller's: changing one changes no later read
    first = store[records[0].image_id]
    first.features[:] = 7
    assert_same(store[records[0].image_id], expected[records[0].image_id])


def test_feature_store_reads_chunked_and_compressed_arrays_through_h5py(tmp_path):
    path = tmp_path / "f.h5"
    records = write_store(path, "float16", 5, True)
    with h5py.File(path, "r+") as f:  # rewrite one image's features compressed, another's boxes chunked
        for key, kwargs in (("img%2F1", {"compression": "gzip"}), ("img%2F2", {"chunks": True})):
            name = "features" if "compression" in kwargs else "boxes"
            data = f["images"][key][name][()]
            del f["images"][key][name]
            f["images"][key].create_dataset(name, data=data, **kwargs)
    store = FeatureStore(path)
    for r in records:
        assert_same(store[r.image_id], reference(path, r.image_id))
    assert [store.raw_features(r.image_id) is not None for r in records] == [True, False, False, True, True, True]
    with pytest.raises(FeatureStoreError, match="cannot read its features into"):  # h5py-read images only whole
        store.read_into(records[1].image_id, np.empty((1, 16), np.float16))


def test_feature_store_with_a_user_block_reads_the_right_bytes(tmp_path, monkeypatch):
    """Raw offsets are checked against h5py once per file; a file whose bytes are not where they
    are expected falls back to h5py. A user block shifts every address in the file."""
    plain = tmp_path / "plain.h5"
    records = write_store(plain)
    shifted = tmp_path / "shifted.h5"
    with h5py.File(plain, "r") as src, h5py.File(shifted, "w", userblock_size=512) as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        src.copy(src["images"], dst, "images")
    store = FeatureStore(shifted)
    expected = {r.image_id: reference(shifted, r.image_id) for r in records}
    for r in records:
        assert_same(store[r.image_id], expected[r.image_id])
    # HDF5 reports addresses from the file's start, user block included: the raw reads passed the
    # check against h5py, and every image is now read raw
    assert all(store.raw_features(r.image_id) is not None for r in records)
    forbid_h5py_reads(monkeypatch)
    for r in records:
        assert_same(store[r.image_id], expected[r.image_id])


def test_forked_loader_workers_share_the_layout_and_batches_pad_with_zeros(tmp_path, monkeypatch):
    """Batches built in DataLoader workers (shared memory, zero padding not written) equal batches
    built in this process; what a worker learns about the file is seen by the others."""
    path = tmp_path / "f.h5"
    records = write_store(path, count=12)
    store = FeatureStore(path)

    class Examples(torch.utils.data.Dataset):
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            r = store[records[i].image_id]
            return {"input_ids": np.arange(1 + i % 5), "region_features": r.features,
                    "region_locations": np.ones((r.num_boxes, 7), np.float32)}

    collate = collate_inputs
    loader = torch.utils.data.DataLoader(Examples(), batch_size=4, num_workers=2, collate_fn=collate,
                                         multiprocessing_context="fork")
    batches = list(loader)
    # noted by the workers, seen here: this process has read nothing, and reads every image raw
    # without looking up where its arrays lie
    forbid_h5py_reads(monkeypatch)
    assert all(store.raw_features(r.image_id) is not None for r in records)
    dataset = Examples()
    for index, batch in enumerate(batches):
        expected = collate([dataset[i] for i in range(index * 4, index * 4 + 4)])
        for key in expected:
            assert batch[key].dtype == expected[key].dtype and torch.equal(batch[key], expected[key]), key
        assert batch["region_features"].is_shared()
    assert batch["region_features"].dtype == torch.float16  # as stored


def test_pad_stack_pads_with_the_value_and_keeps_dtypes():
    arrays = [np.array([1, 2, 3]), np.array([4])]
    assert pad_stack(arrays, -100).tolist() == [[1, 2, 3], [4, -100, -100]]
    assert pad_stack(arrays, 0, torch.bfloat16).dtype == torch.bfloat16
    halves = [np.ones((2, 3), np.float16), np.ones((1, 3), np.float16)]
    out = pad_stack(halves)
    assert out.dtype == torch.float16 and out[1, 1].tolist() == [0, 0, 0]


def test_feature_store_falls_back_to_h5py_when_raw_bytes_disagree(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    records = write_store(path)
    store = FeatureStore(path)
    preadv, raw_reads = os.preadv, []

    def misplaced(fd, buffers, offset):  # the bytes are not where the file says: 2 bytes off
        raw_reads.append(offset)
        return preadv(fd, buffers, offset + 2)

    monkeypatch.setattr(os, "preadv", misplaced)
    assert_same(store[records[0].image_id], reference(path, records[0].image_id))
    checked = len(raw_reads)
    assert checked > 0  # the first read of the file compared raw bytes with h5py's read
    for r in records:
        assert_same(store[r.image_id], reference(path, r.image_id))
    # once the check failed, the file is read through h5py only: no image is read raw again
    assert len(raw_reads) == checked
    assert all(store.raw_features(r.image_id) is None for r in records)


@pytest.mark.parametrize("max_regions", [100, 3])
def test_batched_fetch_builds_the_same_examples_and_batch(tiny_world, tiny_tokenizer, max_regions):
    """PretrainDataset.__getitems__ (features read straight into the batch) gives the examples and
    the batch that dataset[key] one by one and collate_pretrain give."""
    from vlbert.data.annotations import load_pairs
    from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain
    from vlbert.pretraining.objectives import Objectives

    store = FeatureStore(tiny_world.features_path)
    pairs = load_pairs(tiny_world.captions("train"))
    dataset = PretrainDataset(pairs, store, tiny_tokenizer, Objectives(mixing="sum", mrc=1.0), max_regions=max_regions, seed=3)
    keys = [(i, task, 1) for i, task in zip(range(12), ["mix"] * 8 + ["mrfr", "mlm", "itm", "mrc_kl"])]
    batched = dataset.__getitems__(keys)
    assert hasattr(batched, "region_features")  # the store reads this world's features raw
    single = [dataset[key] for key in keys]
    for a, b in zip(batched, single):
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]) and np.asarray(a[name]).dtype == np.asarray(b[name]).dtype, name
    x, y = collate_pretrain(batched, tiny_tokenizer.pad_token_id), collate_pretrain(single, tiny_tokenizer.pad_token_id)
    assert x["region_features"].data_ptr() == batched.region_features.data_ptr()  # used as it is
    for name in y:
        assert (x[name] == y[name]) if isinstance(y[name], str) else torch.equal(x[name], y[name]), name


def test_per_example_attention_only_where_it_pays():
    """Per-example CPU attention saves padded FLOPs but loops in Python: worth it for a few long,
    uneven examples of a wide model, not for a thousand short pairs of a tiny one."""
    def packing(lengths, length):
        mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
        return Packing.from_key_mask(mask[:, None, None, :])

    assert packing([140, 40, 90, 60] * 4, 140).attend_per_example(768)
    assert not packing([28, 25, 22] * 341, 28).attend_per_example(64)


class _SyncingOps(TorchDispatchMode):
    """Records the ops whose output size or value the host must read back from the device (on a
    GPU each is a host-device sync): nonzero, item, masked_select, boolean indexing."""

    READ_BACK = {torch.ops.aten.nonzero.default, torch.ops.aten._local_scalar_dense.default,
                 torch.ops.aten.masked_select.default}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            i is not None and i.dtype == torch.bool for i in args[1])
        if func in self.READ_BACK or boolean_index:
            self.ops.append(str(func))
        return func(*args, **kwargs or {})


def test_pretraining_step_reads_back_from_the_device_only_for_the_padding(tiny_world, tiny_tokenizer):
    """Every objective's targets are found by collate's row indices: a padded MLM + MRFR + MRC-KL +
    ITM step (forward and backward) reads back only whether the batch is padded and where its
    real tokens are (the encoder's packing); it read back eight more times before."""
    from vlbert.data.annotations import load_pairs
    from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain
    from vlbert.pretraining.module import PretrainModule
    from vlbert.pretraining.objectives import Objectives

    objectives = Objectives(mlm=1.0, mrfr=1.0, mrc_kl=1.0, itm=1.0, mixing="sum")
    store = FeatureStore(tiny_world.features_path)
    dataset = PretrainDataset(load_pairs(tiny_world.captions("train")), store, tiny_tokenizer, objectives, seed=3)
    batch = collate_pretrain([dataset[(i, "mix", 0)] for i in range(16)], tiny_tokenizer.pad_token_id)
    assert not (batch["text_mask"].all() and batch["region_mask"].all())  # padded: the packing path
    torch.manual_seed(0)
    module = PretrainModule(model=tiny_config(vocab_size=len(tiny_tokenizer), num_region_classes=store.num_classes),
                            objectives=objectives)
    counter = _SyncingOps()
    with counter:
        output = module(batch)
        output.loss.backward()
    assert set(output.losses) == {"mlm", "mrfr", "mrc_kl", "itm"}
    assert sorted(counter.ops) == ['aten._local_scalar_dense.default', 'aten.nonzero.default'], counter.ops
