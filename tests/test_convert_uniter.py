"""`vlbert convert --from uniter`: a state dict in the original UNITER layout (key names as in
ChenRocks/UNITER model/model.py, pretrain.py, vqa.py) is built here with tiny sizes, saved as a
.pt, converted, and checked for key coverage, shapes, and outputs against a reference forward
pass written from UNITER's published equations."""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vlbert.convert import main
from vlbert.convert.vqa_head import head_from_state
from vlbert.modeling.model import VLBertForPretraining, VLBertModel
from vlbert.modeling.pretrained import load_pretrained, load_submodule_state

V, P, H, I, LAYERS, HEADS, D, CLASSES, ANSWERS = 60, 20, 32, 48, 2, 4, 12, 9, 6
ATOL = 1e-5


def uniter_state(seed: int = 0, hidden: int = H) -> dict[str, torch.Tensor]:
    """Random tensors under UNITER's key names: UniterForPretraining's heads plus a VQA head."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.3 * torch.randn(*shape, generator=g)  # noqa: E731
    ln = lambda n: (1 + r(n), r(n))  # noqa: E731
    s: dict[str, torch.Tensor] = {}

    def linear(name, out_dim, in_dim):
        s[name + ".weight"], s[name + ".bias"] = r(out_dim, in_dim), r(out_dim)

    def norm(name, dim):
        s[name + ".weight"], s[name + ".bias"] = ln(dim)

    u = "uniter."
    s[u + "embeddings.word_embeddings.weight"] = r(V, hidden)
    s[u + "embeddings.position_embeddings.weight"] = r(P, hidden)
    s[u + "embeddings.token_type_embeddings.weight"] = r(2, hidden)
    norm(u + "embeddings.LayerNorm", hidden)
    linear(u + "img_embeddings.img_linear", hidden, D)
    norm(u + "img_embeddings.img_layer_norm", hidden)
    linear(u + "img_embeddings.pos_linear", hidden, 7)
    norm(u + "img_embeddings.pos_layer_norm", hidden)
    s[u + "img_embeddings.mask_embedding.weight"] = torch.cat([torch.zeros(1, D), r(1, D)])
    norm(u + "img_embeddings.LayerNorm", hidden)
    for i in range(LAYERS):
        layer = f"{u}encoder.layer.{i}."
        for name in ("query", "key", "value"):
            linear(layer + "attention.self." + name, hidden, hidden)
        linear(layer + "attention.output.dense", hidden, hidden)
        norm(layer + "attention.output.LayerNorm", hidden)
        linear(layer + "intermediate.dense", I, hidden)
        linear(layer + "output.dense", hidden, I)
        norm(layer + "output.LayerNorm", hidden)
    linear(u + "pooler.dense", hidden, hidden)
    linear("cls.predictions.transform.dense", hidden, hidden)
    norm("cls.predictions.transform.LayerNorm", hidden)
    s["cls.predictions.bias"] = r(V)
    s["cls.predictions.decoder.weight"] = s[u + "embeddings.word_embeddings.weight"]  # tied copy, as torch saves it
    linear("feat_regress.net.0", hidden, hidden)
    norm("feat_regress.net.2", hidden)
    s["feat_regress.weight"] = s[u + "img_embeddings.img_linear.weight"]  # tied
    s["feat_regress.bias"] = r(D)
    linear("region_classifier.net.0", hidden, hidden)
    norm("region_classifier.net.2", hidden)
    linear("region_classifier.net.3", CLASSES, hidden)
    linear("itm_output", 2, hidden)
    linear("vqa_output.0", 2 * hidden, hidden)
    norm("vqa_output.2", 2 * hidden)
    linear("vqa_output.3", ANSWERS, 2 * hidden)
    return s


def reference_forward(s, input_ids, text_mask, features, locations, region_mask, heads=HEADS):
    """UNITER's computation, written out: sequence output, pooled output and the logits of the heads present."""
    s = {k: v.float() for k, v in s.items()}
    lin = lambda x, n: F.linear(x, s[n + ".weight"], s[n + ".bias"])  # noqa: E731
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], s[n + ".weight"], s[n + ".bias"], 1e-12)  # noqa: E731
    u = "uniter."
    types = s[u + "embeddings.token_type_embeddings.weight"]
    text = s[u + "embeddings.word_embeddings.weight"][input_ids] + s[u + "embeddings.position_embeddings.weight"][: input_ids.shape[1]]
    text = ln(text + types[0], u + "embeddings.LayerNorm")
    image = ln(lin(features, u + "img_embeddings.img_linear"), u + "img_embeddings.img_layer_norm")
    image = image + ln(lin(locations, u + "img_embeddings.pos_linear"), u + "img_embeddings.pos_layer_norm") + types[1]
    image = ln(image, u + "img_embeddings.LayerNorm")
    h = torch.cat([text, image], 1)
    additive = (1.0 - torch.cat([text_mask, region_mask], 1).float())[:, None, None, :] * -10000.0
    batch, length, width = h.shape
    split = lambda x: x.view(batch, length, heads, width // heads).transpose(1, 2)  # noqa: E731
    for i in range(LAYERS):
        layer = f"{u}encoder.layer.{i}."
        q, k, v = (split(lin(h, layer + "attention.self." + n)) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads) + additive, -1)
        context = (probs @ v).transpose(1, 2).reshape(batch, length, width)
        attended = ln(lin(context, layer + "attention.output.dense") + h, layer + "attention.output.LayerNorm")
        h = ln(lin(F.gelu(lin(attended, layer + "intermediate.dense")), layer + "output.dense") + attended, layer + "output.LayerNorm")
    pooled = torch.tanh(lin(h[:, 0], u + "pooler.dense"))
    out = {"sequence": h, "pooled": pooled}
    if "vqa_output.0.weight" in s:
        out["vqa"] = lin(ln(F.gelu(lin(pooled, "vqa_output.0")), "vqa_output.2"), "vqa_output.3")
    if "cls.predictions.bias" in s:  # the pretraining heads
        mlm_hidden = ln(F.gelu(lin(h, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
        mrfr_hidden = ln(F.gelu(lin(h, "feat_regress.net.0")), "feat_regress.net.2")
        mrc_hidden = ln(F.gelu(lin(h, "region_classifier.net.0")), "region_classifier.net.2")
        out["itm"] = lin(pooled, "itm_output")
        out["mlm"] = mlm_hidden @ s[u + "embeddings.word_embeddings.weight"].T + s["cls.predictions.bias"]
        out["mrfr"] = mrfr_hidden @ s["feat_regress.weight"] + s["feat_regress.bias"]
        out["mrc"] = lin(mrc_hidden, "region_classifier.net.3")
    return out


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, V, (3, 7), generator=g)
    text_mask = torch.arange(7)[None] < torch.tensor([[7], [4], [2]])
    region_mask = torch.arange(5)[None] < torch.tensor([[5], [3], [1]])
    features = torch.randn(3, 5, D, generator=g).relu()
    corners = torch.rand(3, 5, 4, generator=g).sort(-1).values[..., [0, 1, 2, 3]]
    x1, y1, x2, y2 = corners[..., 0], corners[..., 1], corners[..., 2], corners[..., 3]
    locations = torch.stack([x1, y1, x2, y2, x2 - x1, y2 - y1, (x2 - x1) * (y2 - y1)], -1)
    return input_ids, text_mask, features, locations, region_mask


def save(state, path):
    torch.save(state, path)
    return path


def uniter_config_file(tmp_path, **overrides):
    config = {"vocab_size": V, "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "intermediate_size": I, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "max_position_embeddings": P, "type_vocab_size": 2,
              "initializer_range": 0.02, **overrides}
    path = tmp_path / "uniter-tiny.json"
    path.write_text(json.dumps(config))
    return path


def convert(*argv) -> int:
    return main([str(a) for a in argv])


def test_uniter_checkpoint_converts_with_every_key_accounted_for(tmp_path, capsys):
    source = uniter_state()
    # As published: apex O2 fp16 weights, here also under DataParallel's "module." prefix.
    save({"module." + k: v.half() for k, v in source.items()}, tmp_path / "uniter.pt")
    answers = tmp_path / "ans2label.json"
    answers.write_text(json.dumps({f"ans{i}": i for i in range(ANSWERS)}))
    assert convert("--from", "uniter", tmp_path / "uniter.pt", "--out", tmp_path / "dst",
                   "--uniter-config", uniter_config_file(tmp_path), "--answers", answers) == 0
    printed = capsys.readouterr().out
    assert "float16" in printed

    report = json.loads((tmp_path / "dst" / "conversion.json").read_text())
    used = {part for keys in report["converted"].values() for part in keys.split(" + ")}
    accounted = used | set(report["skipped"]) | set(report["unconverted"])
    assert accounted == set(source)  # nothing dropped without being listed
    assert report["unconverted"] == {}
    assert set(report["skipped"]) == {"cls.predictions.decoder.weight", "feat_regress.weight"}
    assert report["vqa_head"] == {"style": "pooled_mlp", "num_answers": ANSWERS}

    config, state = load_pretrained(tmp_path / "dst")
    # UNITER's masked-region input (row 1; row 0 is the unmasked zero row)
    assert torch.equal(state["vlbert.region_embeddings.mask_embedding"], source["uniter.img_embeddings.mask_embedding.weight"][1].half().float())  # saved as fp16
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (H, LAYERS, HEADS, I)
    assert (config.region_embedding, config.region_location_dim, config.region_feature_dim) == ("uniter", 7, D)
    assert config.num_region_classes == CLASSES and config.vocab_size == V and config.max_position_embeddings == P
    assert state["vlbert.encoder.layers.1.attention.qkv.weight"].shape == (3 * H, H)
    assert state["vlbert.region_embeddings.location_proj.weight"].shape == (H, 7)
    assert state["vqa_head.classifier.weight"].shape == (ANSWERS, 2 * H)
    assert all(v.dtype == torch.float32 for v in state.values())
    assert json.loads((tmp_path / "dst" / "answers.json").read_text())["answers"][3] == "ans3"

    model = VLBertForPretraining(config).eval()
    assert load_submodule_state(model, state, "", strict=False) == []
    vqa = head_from_state(config, state, "pooled_mlp").eval()
    load_submodule_state(vqa, state, "vqa_head.", strict=True)
    input_ids, text_mask, features, locations, region_mask = inputs()
    expected = reference_forward({k: v.half() for k, v in source.items()}, input_ids, text_mask, features, locations, region_mask)
    with torch.no_grad():
        out = model.vlbert(input_ids, text_mask, features, locations, region_mask)
        text_len = input_ids.shape[1]
        got = {
            "sequence": out.last_hidden_state,
            "pooled": out.pooler_output,
            "itm": model.itm_head(out.pooler_output),
            "vqa": vqa(out.last_hidden_state, out.pooler_output, text_mask),
            "mlm": model.mlm_head(out.last_hidden_state[:, :text_len]),
            "mrfr": model.mrfr_head(out.last_hidden_state[:, text_len:]),
            "mrc": model.mrc_head(out.last_hidden_state[:, text_len:]),
        }
    valid = torch.cat([text_mask, region_mask], 1)
    expected["mlm"], expected["mrfr"], expected["mrc"] = (
        expected["mlm"][:, :text_len], expected["mrfr"][:, text_len:], expected["mrc"][:, text_len:])
    masks = {"sequence": valid, "mlm": text_mask, "mrfr": region_mask, "mrc": region_mask}
    diffs = {name: float((got[name] - expected[name]).abs()[masks[name]].max() if name in masks
                         else (got[name] - expected[name]).abs().max()) for name in got}
    print("UNITER -> vlbert max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < ATOL


def test_uniter_encoder_only_and_default_heads(tmp_path, capsys):
    source = {k: v for k, v in uniter_state(1, hidden=64).items() if k.startswith("uniter.")}
    save(source, tmp_path / "encoder.pt")
    assert convert("--from", "uniter", tmp_path / "encoder.pt", "--out", tmp_path / "dst") == 0
    assert "num_attention_heads=1 assumed" in capsys.readouterr().out
    config, state = load_pretrained(tmp_path / "dst")
    assert config.num_attention_heads == 1 and config.num_region_classes == 0
    assert all(k.startswith("vlbert.") for k in state)
    VLBertModel.from_pretrained(tmp_path / "dst")


def test_unknown_keys_are_refused_or_listed(tmp_path, capsys):
    source = uniter_state(2)
    source["nlvr2_output.weight"] = torch.zeros(2, H)
    save(source, tmp_path / "nlvr2.pt")
    config = uniter_config_file(tmp_path)
    assert convert("--from", "uniter", tmp_path / "nlvr2.pt", "--out", tmp_path / "a", "--uniter-config", config) == 2
    error = capsys.readouterr().err
    assert "nlvr2_output.weight" in error and "--allow-unconverted" in error
    assert not (tmp_path / "a").exists()
    assert convert("--from", "uniter", tmp_path / "nlvr2.pt", "--out", tmp_path / "b", "--uniter-config", config,
                   "--allow-unconverted") == 0
    report = json.loads((tmp_path / "b" / "conversion.json").read_text())
    assert report["unconverted"]["nlvr2_output.weight"] == "unknown key"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("uniter.encoder.layer.1.attention.self.key.weight"), "uniter.encoder.layer.1.attention.self.key.weight"),
        (lambda s: s.pop("vqa_output.2.bias"), "the VQA head is incomplete"),
        (lambda s: s.__setitem__("feat_regress.weight", torch.zeros(H, D)), "feat_regress.weight differs"),
        (lambda s: s.__setitem__("uniter.pooler.dense.weight", torch.zeros(H, H + 1)), "mismatched sizes"),
        (lambda s: s.pop("uniter.img_embeddings.pos_linear.weight"), "not a UNITER checkpoint"),
    ],
)
def test_broken_checkpoints_give_clear_errors(tmp_path, capsys, change, message):
    source = uniter_state(3)
    change(source)
    save(source, tmp_path / "broken.pt")
    assert convert("--from", "uniter", tmp_path / "broken.pt", "--out", tmp_path / "dst",
                   "--uniter-config", uniter_config_file(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_bad_files_and_configs(tmp_path, capsys):
    assert convert("--from", "uniter", tmp_path / "missing.pt", "--out", tmp_path / "a") == 2
    assert "is not a file" in capsys.readouterr().err
    save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "pickle.pt")  # needs unpickling code: refused by weights_only
    assert convert("--from", "uniter", tmp_path / "pickle.pt", "--out", tmp_path / "a") == 2
    assert "weights_only=True" in capsys.readouterr().err
    save(uniter_state(4), tmp_path / "ok.pt")
    wrong = uniter_config_file(tmp_path, hidden_size=48)
    assert convert("--from", "uniter", tmp_path / "ok.pt", "--out", tmp_path / "a", "--uniter-config", wrong) == 2
    assert "hidden_size: config 48 vs checkpoint 32" in capsys.readouterr().err
    assert convert("--from", "uniter", tmp_path / "ok.pt", "--out", tmp_path / "a") == 2  # 32 is not a multiple of 64
    assert "--uniter-config" in capsys.readouterr().err
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["yes", "no"]))
    assert convert("--from", "uniter", tmp_path / "ok.pt", "--out", tmp_path / "a", "--uniter-config",
                   uniter_config_file(tmp_path), "--answers", answers) == 2
    assert "2 answers but the VQA head scores 6" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_converted_uniter_vqa_loads_as_vlbert_vqa_model(tmp_path):
    """The VQA task's model reads a converted UNITER VQA checkpoint as is and gives UNITER's answer logits."""
    from vlbert import VLBertForVQA

    # UniterForVisualQuestionAnswering's state dict: the encoder and vqa_output only.
    source = {k: v for k, v in uniter_state(5).items() if k.startswith(("uniter.", "vqa_output."))}
    save(source, tmp_path / "vqa.pt")
    answers = tmp_path / "ans2label.json"
    answers.write_text(json.dumps({f"ans{i}": i for i in range(ANSWERS)}))
    assert convert("--from", "uniter", tmp_path / "vqa.pt", "--out", tmp_path / "dst",
                   "--uniter-config", uniter_config_file(tmp_path), "--answers", answers) == 0
    model = VLBertForVQA.from_pretrained(tmp_path / "dst").eval()
    assert model.answers == [f"ans{i}" for i in range(ANSWERS)]
    batch = inputs(1)
    with torch.no_grad():
        logits = model(*batch).logits
    diff = float((logits - reference_forward(source, *batch)["vqa"]).abs().max())
    print(f"UNITER VQA -> VLBertForVQA: max |diff| answer logits {diff:.2e}")
    assert diff < ATOL
