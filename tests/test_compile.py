"""torch.compile of the encoder layers: chosen by device and setting, in place (parameter names
unchanged), and equal to eager outputs and gradients, with one graph for batches of any length."""
from __future__ import annotations

import pytest
import torch

from tests.test_packed_attention import padded_inputs
from tests.tiny import tiny_config
from vlbert.modeling.model import VLBertModel


@pytest.mark.parametrize("setting, device_type, compiled", [
    (None, "cpu", False), (None, "cuda", True), (True, "cpu", True), (False, "cuda", False),
])
def test_compile_choice(monkeypatch, setting, device_type, compiled):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append(kwargs))
    model = VLBertModel(tiny_config(compile_encoder=setting))
    names = list(model.state_dict())
    model.encoder.compile_layers(torch.device(device_type))
    model.encoder.compile_layers(torch.device(device_type))  # once only
    assert calls == ([{"dynamic": True}] * len(model.encoder.layers) if compiled else [])
    assert list(model.state_dict()) == names


def step(model: VLBertModel, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    output = model(**inputs).last_hidden_state
    (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
    return output.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.slow  # inductor compiles (C++) the layers' forward and backward: ~40 s on one thread
@pytest.mark.parametrize("path", ["per_example", "nested"])
def test_compiled_encoder_equals_eager(path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = VLBertModel(tiny_config(compile_encoder=False, attention_path=path)).train()
    compiled = VLBertModel(tiny_config(compile_encoder=True, attention_path=path)).train()
    compiled.load_state_dict(eager.state_dict())
    batches = [([7, 3, 5], [4, 6, 1]), ([2, 9, 4, 4], [3, 3, 8, 1]), ([3, 3, 3, 8, 1], [5, 5, 2, 2, 2])]
    for seed, (text_lengths, region_counts) in enumerate(batches):
        inputs = padded_inputs(text_lengths, region_counts, seed)
        (expected, expected_grads), (output, grads) = step(eager, inputs), step(compiled, inputs)
        assert (output - expected).abs().max() < 1e-5
        assert max((grads[k] - expected_grads[k]).abs().max().item() for k in grads) < 2e-5
    assert compiled.encoder.compiled
    # the graphs around the eager attention (3 on torch 2.14), none added per batch length
    assert counters["stats"]["unique_graphs"] <= 3
