"""The speed work keeps the maths: the packed (unpadded) encoder equals the padded one; the
benchmarks run end to end at tiny size and print their JSON line."""
import json
import subprocess
import sys
from pathlib import Path

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
        model.vlbert(**inputs).pooled_output.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def run_bench(script, *args):
    run = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, run.stdout
    return json.loads(lines[0])


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
