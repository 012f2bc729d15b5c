"""The encoder's attention paths agree: nested (jagged) tensors, per-example loop and padded SDPA
give the same outputs and gradients on a batch padded to mixed lengths (fp32, dropout 0)."""
from __future__ import annotations

import pytest
import torch

from tests.tiny import tiny_config
from vlbert.modeling.config import ModelSettings
from vlbert.modeling.encoder import Packing
from vlbert.modeling.model import VLBertModel

PATHS = ("padded", "per_example", "nested")


def padded_inputs(text_lengths: list[int], region_counts: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs padded to the longest text and region count (padded positions hold junk,
    which must not reach any real output)."""
    g = torch.Generator().manual_seed(seed)
    batch, text, regions = len(text_lengths), max(text_lengths), max(region_counts)
    return {
        "input_ids": torch.randint(5, 150, (batch, text), generator=g),
        "text_mask": torch.arange(text)[None] < torch.tensor(text_lengths)[:, None],
        "region_features": torch.randn(batch, regions, 64, generator=g),
        "region_locations": torch.rand(batch, regions, 7, generator=g),
        "region_mask": torch.arange(regions)[None] < torch.tensor(region_counts)[:, None],
    }


def run(path: str, inputs: dict, state: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """last_hidden_state and every parameter's gradient of one forward + backward (training mode)."""
    torch.manual_seed(0)
    model = VLBertModel(tiny_config(attention_path=path, num_hidden_layers=3))
    if state is not None:
        model.load_state_dict(state)
    model.train()
    output = model(**inputs).last_hidden_state
    weights = torch.linspace(-1, 1, output.numel()).view_as(output)  # a loss that weighs every output
    (output * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.detach(), grads, model.state_dict()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # SDPA's CPU math path on jagged tensors
def test_paths_agree_on_outputs_and_gradients():
    inputs = padded_inputs([7, 3, 5, 2, 7], [4, 6, 1, 6, 2])
    reference, reference_grads, state = run("padded", inputs)
    mask = torch.cat([inputs["text_mask"], inputs["region_mask"]], 1)
    assert (reference[~mask] == 0).all()
    for path in ("per_example", "nested"):
        output, grads, _ = run(path, inputs, state)
        assert (output - reference).abs().max() < 1e-5, path
        assert grads.keys() == reference_grads.keys()
        # relative to each gradient's scale (the token-type embedding's sums reach ~10)
        worst = max(((grads[k] - reference_grads[k]).abs().max() / reference_grads[k].abs().max().clamp_min(1)).item() for k in grads)
        assert worst < 1e-5, (path, worst)
    assert reference_grads["encoder.layers.0.attention.qkv.weight"].abs().max() > 1e-3  # the comparison is not vacuous


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_nested_attention_trains_with_dropout():
    """Attention dropout on the nested path: a different mask per call, finite gradients."""
    torch.manual_seed(0)
    model = VLBertModel(tiny_config(attention_path="nested", attention_probs_dropout_prob=0.3)).train()
    inputs = padded_inputs([6, 2, 4], [3, 5, 2])
    first, second = model(**inputs).last_hidden_state, model(**inputs).last_hidden_state
    assert not torch.equal(first, second)
    (first.sum() + second.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("device_type, lengths, expected", [
    ("cuda", [3, 5], "nested"),
    ("cpu", [3, 5], "padded"),  # a tiny model on short examples: the loop costs more than it saves
])
def test_auto_path_by_device(device_type, lengths, expected):
    key_mask = torch.arange(5)[None] < torch.tensor(lengths)[:, None]
    packing = Packing.from_key_mask(key_mask[:, None, None, :], "auto")
    assert packing.attention(32, torch.device(device_type)) == expected
    forced = Packing.from_key_mask(key_mask[:, None, None, :], "per_example")
    assert forced.attention(32, torch.device(device_type)) == "per_example"


def test_offsets_are_example_starts():
    key_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    packing = Packing.from_key_mask(key_mask[:, None, None, :])
    assert packing.offsets.tolist() == [0, 2, 6, 7]


def test_settings_refuse_unknown_path():
    with pytest.raises(ValueError, match="attention_path"):
        ModelSettings(attention_path="flash")
    with pytest.raises(ValueError, match="compile_encoder"):
        ModelSettings(compile_encoder="yes")
