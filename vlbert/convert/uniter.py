"""The original UNITER checkpoint layout (ChenRocks/UNITER: torch.save of a model's state dict,
e.g. uniter-base.pt) -> vlbert, region_embedding="uniter".

UNITER's image embeddings are vlbert's "uniter" style exactly: LN(W_f f) + LN(W_l loc7) + the
text token-type embedding 1, LayerNorm. LayerNorm eps is 1e-12 and the activation erf GELU
throughout. The file holds no config; sizes are read from the tensors, and the number of
attention heads (not visible in any shape) from --uniter-config or hidden_size // 64.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vlbert.convert.bert_layers import bert_encoder_to_vlbert, count_layers
from vlbert.convert.state import ConversionError, ConversionReport, Converted, SourceState, require_tied
from vlbert.modeling.config import VLBertConfig

PREFIX = "uniter."
TEXT_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "text_embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "text_embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "text_embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "text_embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias": "text_embeddings.LayerNorm.bias",
}
IMAGE_EMBEDDINGS = {
    "img_embeddings.img_linear.weight": "region_embeddings.feature_proj.weight",
    "img_embeddings.img_linear.bias": "region_embeddings.feature_proj.bias",
    "img_embeddings.img_layer_norm.weight": "region_embeddings.feature_norm.weight",
    "img_embeddings.img_layer_norm.bias": "region_embeddings.feature_norm.bias",
    "img_embeddings.pos_linear.weight": "region_embeddings.location_proj.weight",
    "img_embeddings.pos_linear.bias": "region_embeddings.location_proj.bias",
    "img_embeddings.pos_layer_norm.weight": "region_embeddings.location_norm.weight",
    "img_embeddings.pos_layer_norm.bias": "region_embeddings.location_norm.bias",
    "img_embeddings.LayerNorm.weight": "region_embeddings.LayerNorm.weight",
    "img_embeddings.LayerNorm.bias": "region_embeddings.LayerNorm.bias",
}
MASK_EMBEDDING = "img_embeddings.mask_embedding.weight"
# Heads, by the attribute names of UniterForPretraining / UniterForVisualQuestionAnswering /
# UniterForImageTextRetrieval. Index 1 of itm_output is "matched", as in vlbert.
MLM_HEAD = {
    "cls.predictions.transform.dense.weight": "mlm_head.transform.dense.weight",
    "cls.predictions.transform.dense.bias": "mlm_head.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "mlm_head.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias": "mlm_head.transform.LayerNorm.bias",
    "cls.predictions.bias": "mlm_head.bias",
}
MRFR_HEAD = {  # feat_regress.net = Linear, GELU, LayerNorm; its output weight is img_linear's, transposed
    "feat_regress.net.0.weight": "mrfr_head.transform.dense.weight",
    "feat_regress.net.0.bias": "mrfr_head.transform.dense.bias",
    "feat_regress.net.2.weight": "mrfr_head.transform.LayerNorm.weight",
    "feat_regress.net.2.bias": "mrfr_head.transform.LayerNorm.bias",
    "feat_regress.bias": "mrfr_head.bias",
}
MRC_HEAD = {  # region_classifier.net = Linear, GELU, LayerNorm, Linear
    "region_classifier.net.0.weight": "mrc_head.transform.dense.weight",
    "region_classifier.net.0.bias": "mrc_head.transform.dense.bias",
    "region_classifier.net.2.weight": "mrc_head.transform.LayerNorm.weight",
    "region_classifier.net.2.bias": "mrc_head.transform.LayerNorm.bias",
    "region_classifier.net.3.weight": "mrc_head.classifier.weight",
    "region_classifier.net.3.bias": "mrc_head.classifier.bias",
}
ITM_HEAD = {"itm_output.weight": "itm_head.classifier.weight", "itm_output.bias": "itm_head.classifier.bias"}
CONFIG_FIELDS = (  # UniterConfig fields that VLBertConfig shares
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range",
)


def read_uniter_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict of a UNITER .pt (loaded with weights_only=True), with "module." stripped,
    old "gamma"/"beta" LayerNorm names renamed and floats cast to float32; plus notes on what was done."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path} is not a file; --from uniter expects a UNITER checkpoint such as uniter-base.pt")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors name nothing useful to the user
        raise ConversionError(f"{path} could not be read as a PyTorch weights file with weights_only=True: {error}") from error
    notes = []
    if isinstance(loaded, dict) and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        nested = [k for k in ("model", "state_dict") if isinstance(loaded.get(k), dict)]
        if nested:
            notes.append(f"took the state dict under {nested[0]!r}")
            loaded = loaded[nested[0]]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConversionError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    state = {}
    for key, value in loaded.items():
        key = key.removeprefix("module.")
        if key.endswith(".gamma") or key.endswith(".beta"):
            key = key[: key.rindex(".")] + (".weight" if key.endswith(".gamma") else ".bias")
        state[key] = value
    if not any(k.startswith(PREFIX) for k in state) and any(k.startswith("embeddings.") for k in state):
        state = {(PREFIX + k if k.split(".")[0] in ("embeddings", "img_embeddings", "encoder", "pooler") else k): v
                 for k, v in state.items()}
        notes.append("keys had no 'uniter.' prefix (a bare UniterModel); read as the encoder")
    dtypes = sorted({str(v.dtype) for v in state.values() if v.is_floating_point() and v.dtype != torch.float32})
    if dtypes:
        notes.append(f"cast {', '.join(dtypes)} tensors to float32")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, notes


def uniter_config(state: dict[str, torch.Tensor], config_json: str | os.PathLike | None = None) -> VLBertConfig:
    """VLBertConfig from the tensors' shapes, checked against UNITER's model config JSON when given."""
    word = state.get(PREFIX + "embeddings.word_embeddings.weight")
    if word is None:
        raise ConversionError("no uniter.embeddings.word_embeddings.weight: not a UNITER checkpoint (see docs/convert.md for the layout)")
    hidden = word.shape[1]
    feature = state.get(PREFIX + "img_embeddings.img_linear.weight")
    location = state.get(PREFIX + "img_embeddings.pos_linear.weight")
    if feature is None or location is None:
        raise ConversionError("no uniter.img_embeddings.img_linear / pos_linear weights: not a UNITER checkpoint")
    if location.shape[1] != 7:
        raise ConversionError(f"uniter.img_embeddings.pos_linear takes {location.shape[1]}-d locations; vlbert supports UNITER's 7-d")
    layer0 = state.get(PREFIX + "encoder.layer.0.intermediate.dense.weight")
    if layer0 is None:
        raise ConversionError("no uniter.encoder.layer.0.* weights: not a UNITER checkpoint")
    inferred = {
        "vocab_size": word.shape[0],
        "hidden_size": hidden,
        "num_hidden_layers": count_layers(state, PREFIX + "encoder.layer."),
        "intermediate_size": layer0.shape[0],
        "max_position_embeddings": state[PREFIX + "embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": state[PREFIX + "embeddings.token_type_embeddings.weight"].shape[0],
    }
    values = {"num_attention_heads": hidden // 64, "hidden_act": "gelu"}
    if config_json is not None:
        given = json.loads(Path(config_json).read_text())
        given.setdefault("vocab_size", given.get("vocab_size_or_config_json_file"))
        values.update({k: given[k] for k in CONFIG_FIELDS if given.get(k) is not None})
        clashes = [f"{k}: config {values[k]} vs checkpoint {v}" for k, v in inferred.items() if k in values and values[k] != v]
        if clashes:
            raise ConversionError(f"{config_json} does not describe this checkpoint (mismatched sizes): " + "; ".join(clashes))
    elif hidden % 64:
        raise ConversionError(f"hidden_size {hidden} is not a multiple of 64; give the number of heads with --uniter-config")
    classes = state.get("region_classifier.net.3.weight")
    return VLBertConfig(
        **{**values, **inferred},
        layer_norm_eps=1e-12,
        region_feature_dim=feature.shape[1],
        region_location_dim=7,
        region_embedding="uniter",
        num_region_classes=0 if classes is None else classes.shape[0],
    )


def uniter_to_vlbert(state: dict[str, torch.Tensor], config: VLBertConfig, source: str) -> Converted:
    """A UNITER state dict in vlbert terms. Encoder tensors are required; heads are converted
    when present; every other key is listed in report.unconverted."""
    source_state = SourceState(state, source)
    out, origin = {}, {}

    def move(table: dict[str, str], src_prefix: str = "", dst_prefix: str = "") -> None:
        for src, dst in table.items():
            out[dst_prefix + dst] = source_state.take(src_prefix + src)
            origin[dst_prefix + dst] = src_prefix + src

    move(TEXT_EMBEDDINGS, PREFIX, "vlbert.")
    move(IMAGE_EMBEDDINGS, PREFIX, "vlbert.")
    encoder, encoder_origin = bert_encoder_to_vlbert(source_state, PREFIX, config.num_hidden_layers)
    out.update({"vlbert." + k: v for k, v in encoder.items()})
    origin.update({"vlbert." + k: v for k, v in encoder_origin.items()})
    report = ConversionReport(source, "uniter", "vlbert")
    for key in list(state):
        if key.endswith("position_ids"):
            source_state.skip(key, "buffer, not a weight")
    for name, table in (("MLM", MLM_HEAD), ("MRFR", MRFR_HEAD), ("MRC", MRC_HEAD), ("ITM", ITM_HEAD)):
        present = [src for src in table if source_state.has(src)]
        if present and len(present) < len(table):
            raise ConversionError(f"{source}: the {name} head is incomplete, it lacks {sorted(set(table) - set(present))}")
        if present:
            move(table)
    if "mlm_head.bias" in out:
        require_tied(source_state, "cls.predictions.decoder.weight", PREFIX + "embeddings.word_embeddings.weight")
    if "mrfr_head.bias" in out:
        if not source_state.has("feat_regress.weight"):
            raise ConversionError(f"{source}: the MRFR head lacks feat_regress.weight")
        feature_proj = state[PREFIX + "img_embeddings.img_linear.weight"]
        if not torch.equal(state["feat_regress.weight"], feature_proj):
            raise ConversionError(f"{source}: feat_regress.weight differs from img_linear.weight, but vlbert ties them")
        source_state.skip("feat_regress.weight", "tied to uniter.img_embeddings.img_linear.weight (transposed)")
    from vlbert.convert.vqa_head import uniter_heads_to_vlbert

    head, head_origin, head_notes = uniter_heads_to_vlbert(source_state, config)
    out.update(head)
    origin.update(head_origin)
    report.notes += head_notes
    if head:
        report.vqa_head = {"style": "pooled_mlp", "num_answers": int(head["vqa_head.classifier.weight"].shape[0])}
    if source_state.has(PREFIX + MASK_EMBEDDING):
        # UNITER's Embedding(2, D): row 0 (unmasked) is held at zero, row 1 is the masked-region input
        out["vlbert.region_embeddings.mask_embedding"] = source_state.take(PREFIX + MASK_EMBEDDING)[1].clone()
        origin["vlbert.region_embeddings.mask_embedding"] = PREFIX + MASK_EMBEDDING  # its row 1
    report.unconverted.update({key: "unknown key" for key in source_state.leftover()})
    report.skipped = dict(source_state.skipped)
    report.converted = dict(origin)
    return Converted(config, out, origin, report)
