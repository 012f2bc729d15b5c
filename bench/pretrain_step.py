"""Training-step throughput of vlbert pretraining against transformers' VisualBertForPreTraining.

One process, same machine, same batches, timed in alternating rounds (noise from other work on
the machine hits every model alike); medians / sums over rounds. Prints one JSON line.

Scenarios:
  fixed  every example has `--text-len` tokens and `--regions` regions (no padding anywhere);
  mix    captions of 8-40 tokens and 10-100 regions per image (uniform), as an adaptive-K
         extractor gives. vlbert batches come from the real sampler (length-bucketed) and collate
         (padded to each batch's own maximum); VisualBERT gets the same examples padded to
         40 tokens / 100 regions, as its users pad.
  budget the mix's examples in token-budget batches (`--max-tokens` text + region tokens a
         batch, default batch size x the mix's mean length): as many examples as fit, sorted by
         length; VisualBERT gets the same batches padded to 40 / 100.

The encoder's attention path (`--attention-path`), torch.compile (`--compile`) and the padded
lengths' multiple (`--pad-to-multiple-of`) are selectable; GPU batch 256: `--batch-size 256`.

vlbert's step is the real one: PretrainDataset over a temporary feature store written with
FeatureWriter -> collate_pretrain -> PretrainModule.training_step -> backward -> AdamW from
build_optimizer. VisualBERT gets the same AdamW settings and parameter groups.

FLOPs are counted analytically from the executed shapes (padded batch shapes; see
`train_flops`), cross-checked once against torch.utils.flop_counter.FlopCounterMode;
"fraction of peak" divides vlbert's FLOP/s by a large torch.mm measured in the same rounds.

    python bench/pretrain_step.py                       # CPU, fp32, BERT-base
    python bench/pretrain_step.py --device cuda --dtype bf16 --steps 20
    python bench/pretrain_step.py --device cuda --dtype bf16 --steps 10 --batch-size 256 --pad-to-multiple-of 8
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    autocast,
    caption_pairs,
    MatmulPeak,
    Timing,
    emit,
    machine,
    median,
    set_threads,
    timed,
    word_tokenizer,
    write_feature_store,
)
from vlbert.data.samplers import EpochSampler, TaskBatchSampler  # noqa: E402
from vlbert.featstore import FeatureStore  # noqa: E402
from vlbert.modeling.config import ATTENTION_PATHS, VLBertConfig  # noqa: E402
from vlbert.modeling.encoder import Encoder, Packing  # noqa: E402
from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain  # noqa: E402
from vlbert.pretraining.masking import IGNORE_INDEX  # noqa: E402
from vlbert.pretraining.module import PretrainModule  # noqa: E402
from vlbert.pretraining.objectives import Objectives  # noqa: E402
from vlbert.training.optim import Optimization, build_optimizer  # noqa: E402

SIZES = {
    # BERT-base with 2048-d (ResNet-101 C5 / bottom-up-attention) region features, 1600 VG classes.
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, region_feature_dim=2048, num_region_classes=1600),
    # For the tests: the same code path in a second.
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, region_feature_dim=64, num_region_classes=16),
}
VARIANTS = {
    "mlm_itm": dict(mlm=1.0, mrfr=0.0, mrc=0.0, mrc_kl=0.0, itm=1.0),
    "mlm_mrm_itm": dict(mlm=1.0, mrfr=1.0, mrc=0.0, mrc_kl=1.0, itm=1.0),
}
MIX_TEXT = (8, 40)
MIX_REGIONS = (10, 100)
BUCKET_BATCHES = 50  # the sampler's default group: lengths are sorted within 50 batches


# ----------------------------------------------------------------------------- FLOPs


def linear_train_flops(rows: int, fan_in: int, fan_out: int, input_grad: bool = True) -> int:
    """Forward 2mkn, weight gradient 2mkn, input gradient 2mkn (unless the input is data)."""
    return 2 * rows * fan_in * fan_out * (3 if input_grad else 2)


def encoder_train_flops(config: VLBertConfig, rows: int, attention_pairs: int) -> int:
    """Matmul FLOPs of the encoder layers for one step: projections and feed-forward on `rows` token
    rows (B * L padded, or the real tokens when the encoder packs), attention over `attention_pairs`
    query-key pairs (B * L^2 padded, or sum of n_i^2 when each example attends on its own)."""
    h, i = config.hidden_size, config.intermediate_size
    per_layer = (
        linear_train_flops(rows, h, 3 * h)
        + linear_train_flops(rows, h, h)
        + linear_train_flops(rows, h, i)
        + linear_train_flops(rows, i, h)
        + 3 * 2 * 2 * attention_pairs * h  # QK^T and AV: forward + two gradients each
    )
    return config.num_hidden_layers * per_layer


def train_flops(config: VLBertConfig, batch: dict) -> int:
    """Matmul FLOPs of one vlbert pretraining step (forward + backward) as executed on this batch:
    region projections on the padded regions; with padding, the encoder packed to real tokens and
    attention over each example's own tokens (per example, or nested) or padded, as the encoder's
    attention path chooses for the batch (`Packing.attention`)."""
    b, t = batch["input_ids"].shape
    r = batch["region_features"].shape[1]
    h = config.hidden_size
    lengths = batch["text_mask"].sum(1) + batch["region_mask"].sum(1)
    padded = bool((lengths < t + r).any())
    key_mask = torch.cat([batch["text_mask"], batch["region_mask"]], dim=1).bool()
    packing = Packing.from_key_mask(key_mask[:, None, None, :], config.attention_path)
    own_tokens = padded and packing.attention(h, key_mask.device) != "padded"
    pairs = int((lengths.long() ** 2).sum()) if own_tokens else b * (t + r) ** 2
    flops = linear_train_flops(b * r, config.region_feature_dim, h, input_grad=False)
    if config.region_location_dim:
        flops += linear_train_flops(b * r, config.region_location_dim, h, input_grad=False)
    flops += encoder_train_flops(config, real_tokens(batch) if padded else b * (t + r), pairs)
    text_targets = int((batch["mlm_labels"] != IGNORE_INDEX).sum())
    flops += linear_train_flops(text_targets, h, h) + linear_train_flops(text_targets, h, config.vocab_size)
    region_targets = int(batch["region_masked"].sum())
    if region_targets:
        flops += linear_train_flops(1, config.region_feature_dim, h)  # the learned mask vector, projected once
        if "mrfr" in batch.get("objectives", ()):
            flops += linear_train_flops(region_targets, h, h) + linear_train_flops(region_targets, h, config.region_feature_dim)
        if "mrc_kl" in batch.get("objectives", ()):
            flops += linear_train_flops(region_targets, h, h) + linear_train_flops(region_targets, h, config.num_region_classes)
    itm_rows = int((batch["itm_labels"] != IGNORE_INDEX).sum())
    flops += linear_train_flops(itm_rows, h, 2)
    # The pooler always runs forward; it has a backward only when some example trains ITM.
    flops += linear_train_flops(b, h, h) if itm_rows else 2 * b * h * h
    return flops


def visualbert_train_flops(config: VLBertConfig, batch: dict) -> int:
    """The same count for VisualBertForPreTraining: vocabulary logits at every position, text and image."""
    b, t = batch["input_ids"].shape
    r = batch["visual_embeds"].shape[1]
    h = config.hidden_size
    return (
        linear_train_flops(b * r, config.region_feature_dim, h, input_grad=False)
        + encoder_train_flops(config, b * (t + r), b * (t + r) ** 2)
        + linear_train_flops(b * (t + r), h, h)
        + linear_train_flops(b * (t + r), h, config.vocab_size)
        + linear_train_flops(b, h, 2)
        + linear_train_flops(b, h, h)  # pooler
    )


# ----------------------------------------------------------------------------- data


@dataclass
class Scenario:
    name: str
    batches: dict[str, list[dict]]  # variant -> timed batches (the same examples for every variant)
    warmup: dict[str, dict]
    stats: dict  # lengths over the whole epoch the timed batches were drawn from


def bucket_lengths(dataset: PretrainDataset, store: FeatureStore, key: str) -> list[int] | None:
    """The sampler's sort key: caption length ("text", what the datamodule passes), regions then
    caption length ("regions"), or None (no bucketing)."""
    if key == "none":
        return None
    text = dataset.text_lengths()
    if key == "text":
        return text
    regions = [min(store.num_boxes(p.image_id), dataset.max_regions) for p in dataset.pairs]
    return [r * 1024 + t for r, t in zip(regions, text)]


def padded_size(batch: dict) -> int:
    return batch["input_ids"].shape[1] + batch["region_features"].shape[1]


def build_scenario(
    name: str, workdir: Path, tokenizer, size: dict, args: argparse.Namespace
) -> Scenario:
    rng = np.random.default_rng(args.seed)
    batch_size = args.batch_size
    budget = args.max_tokens or batch_size * (sum(MIX_TEXT) + sum(MIX_REGIONS)) // 2
    if name == "fixed":
        count = batch_size * (args.steps + 1)
        text = [args.text_len] * count
        regions = [args.regions] * count
    else:  # mix, budget
        count = batch_size * BUCKET_BATCHES
        text = rng.integers(MIX_TEXT[0], MIX_TEXT[1] + 1, count).tolist()
        regions = rng.integers(MIX_REGIONS[0], MIX_REGIONS[1] + 1, count).tolist()
    path = workdir / f"{name}.h5"
    ids = write_feature_store(path, regions, size["region_feature_dim"], size["num_region_classes"], args.seed)
    store = FeatureStore(path)
    pairs = caption_pairs(ids, text, args.seed)
    batches: dict[str, list[dict]] = {}
    warmup: dict[str, dict] = {}
    chosen: list[int] | None = None
    for variant, weights in VARIANTS.items():
        objectives = Objectives(**weights, mixing="sum")
        dataset = PretrainDataset(pairs, store, tokenizer, objectives, MIX_TEXT[1], MIX_REGIONS[1], args.seed,
                                  args.pad_to_multiple_of)
        sampler = TaskBatchSampler(
            EpochSampler(len(dataset), shuffle=True, seed=args.seed),
            batch_size,
            drop_last=name != "budget",
            tasks=["mix"],
            lengths=dataset.token_lengths() if name == "budget" else bucket_lengths(dataset, store, args.bucket) if name == "mix" else None,
            seed=args.seed,
            max_tokens=budget if name == "budget" else None,
        )
        keys = list(sampler)

        def collate(batch_keys):
            batch = collate_pretrain([dataset[k] for k in batch_keys], tokenizer.pad_token_id, args.pad_to_multiple_of)
            batch["objectives"] = tuple(objectives.enabled())
            return batch

        if chosen is None:
            if name == "fixed":
                chosen = list(range(args.steps + 1))
            else:
                # Stratified: the epoch's batches sorted by their real (unpadded) tokens, one taken at
                # each of `steps` evenly spaced quantiles, so a few timed steps estimate the epoch's
                # mean; the epoch's and the chosen batches' mean lengths are both reported.
                # (budget batches: by their number of examples, which is what varies.)
                epoch = [collate(k) for k in keys]
                epoch_stats = {
                    f"{name}_epoch_mean_real_len": round(float(np.mean([real_tokens(b) / len(b["input_ids"]) for b in epoch])), 1),
                    f"{name}_epoch_mean_padded_len": round(float(np.mean([padded_size(b) for b in epoch])), 1),
                    f"{name}_epoch_batches": len(epoch),
                    f"{name}_epoch_mean_examples": round(float(np.mean([len(b["input_ids"]) for b in epoch])), 1),
                }
                if name == "budget":
                    epoch_stats["budget_max_tokens"] = budget
                size_of = (lambda b: len(b["input_ids"])) if name == "budget" else real_tokens
                order = np.argsort([size_of(b) for b in epoch], kind="stable")
                del epoch
                timed_batches = [int(order[int((i + 0.5) * len(keys) / args.steps)]) for i in range(args.steps)]
                chosen = [int(order[-1])] + timed_batches  # warm up on the largest batch
        collated = [collate(keys[i]) for i in chosen]
        warmup[variant], batches[variant] = collated[0], collated[1:]
    return Scenario(name, batches, warmup, epoch_stats if name != "fixed" else {})


def visualbert_batch(batch: dict, text_len: int, regions: int) -> dict:
    """VisualBertForPreTraining inputs for a vlbert batch, padded to text_len / regions; MLM labels
    span text + image positions (-100 on the image), as VisualBERT expects."""
    b, t = batch["input_ids"].shape
    r = batch["region_features"].shape[1]
    text_len, regions = max(text_len, t), max(regions, r)

    def pad(x: torch.Tensor, length: int, value) -> torch.Tensor:
        out = torch.full((b, length, *x.shape[2:]), value, dtype=x.dtype)
        out[:, : x.shape[1]] = x
        return out

    labels = pad(batch["mlm_labels"], text_len, IGNORE_INDEX)
    return {
        "input_ids": pad(batch["input_ids"], text_len, 0),
        "attention_mask": pad(batch["text_mask"], text_len, False).long(),
        "visual_embeds": pad(batch["region_features"].float(), regions, 0.0),  # as VisualBERT's users feed them
        "visual_attention_mask": pad(batch["region_mask"], regions, False).long(),
        "labels": torch.cat([labels, torch.full((b, regions), IGNORE_INDEX, dtype=labels.dtype)], 1),
        # VisualBERT trains ITM on every example; vlbert's examples without an ITM role are matched pairs.
        "sentence_image_labels": batch["itm_labels"].masked_fill(batch["itm_labels"] == IGNORE_INDEX, 1),
    }


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def real_tokens(batch: dict) -> int:
    return int(batch["text_mask"].sum() + batch["region_mask"].sum())


# ----------------------------------------------------------------------------- models


def adamw_for(module: torch.nn.Module, optimization: Optimization, device: torch.device, fused: bool | None) -> torch.optim.Optimizer:
    """vlbert's optimizer as training builds it (build_optimizer: AdamW, decay / no-decay groups),
    for any module; fused=True/False overrides build_optimizer's choice of implementation."""
    holder = types.SimpleNamespace(
        parameters=module.parameters,
        device=device,
        trainer=types.SimpleNamespace(estimated_stepping_batches=1_000_000),
    )
    optimizer = build_optimizer(holder, optimization)["optimizer"]
    if fused is not None and optimizer.defaults.get("fused") != fused:
        d = optimizer.defaults
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], fused=fused)
    return optimizer


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    d = optimizer.defaults
    kind = "fused" if d.get("fused") else "foreach" if d.get("foreach") else "default (for-loop on CPU)"
    return f"AdamW {kind}, lr {d['lr']}, betas {tuple(d['betas'])}, decay/no-decay groups"


class VLBertStep:
    def __init__(self, config: VLBertConfig, variant: str, device: torch.device, dtype: str, mixing: str, fused: bool | None) -> None:
        self.module = PretrainModule(model=config, objectives=Objectives(**VARIANTS[variant], mixing=mixing)).to(device)
        self.module.train()
        self.optimizer = adamw_for(self.module, self.module.optimization, device, fused)
        self.device, self.dtype = device, dtype

    def __call__(self, batch: dict) -> None:
        with autocast(self.device, self.dtype):
            loss = self.module.training_step(batch, 0)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class VisualBertStep:
    def __init__(self, config: VLBertConfig, device: torch.device, dtype: str, fused: bool | None) -> None:
        from transformers import VisualBertConfig, VisualBertForPreTraining

        hf = VisualBertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            visual_embedding_dim=config.region_feature_dim,
        )
        self.model = VisualBertForPreTraining(hf).to(device)
        self.model.train()
        self.optimizer = adamw_for(self.model, Optimization(), device, fused)
        self.device, self.dtype = device, dtype

    def __call__(self, batch: dict) -> None:
        with autocast(self.device, self.dtype):
            loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def check_flops(step: VLBertStep, batch: dict, config: VLBertConfig) -> tuple[int, int]:
    """(analytic, FlopCounterMode) matmul FLOPs of one forward + backward on `batch`."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Eager, and the nested path counted as its per-example equivalent (the same query-key pairs):
    # the counter sees aten ops, which compiled code does not dispatch one by one, and its meta
    # pass cannot run SDPA on jagged tensors.
    encoders = [m for m in step.module.modules() if isinstance(m, Encoder)]
    paths = [e.attention_path for e in encoders]
    for encoder in encoders:
        encoder.attention_path = "per_example" if encoder.attention_path == "nested" else encoder.attention_path
    try:
        with counter, torch.compiler.set_stance("force_eager"):
            with autocast(step.device, step.dtype):
                loss = step.module.training_step(batch, 0)
            loss.backward()
    finally:
        for encoder, path in zip(encoders, paths):
            encoder.attention_path = path
    step.optimizer.zero_grad(set_to_none=True)
    return train_flops(config, batch), int(counter.get_total_flops())


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/pretrain_step.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast for both models")
    parser.add_argument("--size", default="base", choices=sorted(SIZES))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and scenario (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--text-len", type=int, default=20, help="fixed scenario: tokens per caption")
    parser.add_argument("--regions", type=int, default=36, help="fixed scenario: regions per image")
    parser.add_argument("--scenarios", default="fixed,mix,budget")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="budget scenario: text + region tokens per batch (default batch size x the mix's mean length, 79)")
    parser.add_argument("--attention-path", default="auto", choices=list(ATTENTION_PATHS), help="vlbert's attention path (model setting)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                        help="torch.compile vlbert's encoder layers (auto: on CUDA); compile time is in the warm-up step")
    parser.add_argument("--pad-to-multiple-of", type=int, default=1, help="vlbert batches' padded lengths rounded up to a multiple")
    parser.add_argument("--bucket", default="text", choices=["text", "regions", "none"],
                        help="mix scenario: the sampler's length-bucketing key (text: what the datamodule passes)")
    parser.add_argument("--mixing", default="sum", choices=["sum", "sample"],
                        help="vlbert objective mixing: sum = every batch trains all objectives, as VisualBERT's step does")
    parser.add_argument("--adamw", default="framework", choices=["framework", "fused", "unfused"],
                        help="framework: whatever build_optimizer picks; fused/unfused: override, for both models")
    parser.add_argument("--peak-size", type=int, default=None, help="matmul peak size (default 4096; 8192 on cuda)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads for every model and the peak (default 1: on a shared machine more "
                             "threads than idle cores make each op wait for descheduled threads; 0 = torch's default)")
    parser.add_argument("--clock", default=None, choices=["cpu", "wall"],
                        help="which seconds the figures use (both are reported): cpu = this process's CPU time, "
                             "robust to other work on a shared machine (default on CPU with one thread); wall otherwise")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def run_scenario(scenario: Scenario, steps: dict, device, peak: MatmulPeak) -> tuple[dict, dict]:
    """Time every model on the scenario's batches in alternating rounds (the order rotates each
    round; the matmul peak is measured once per round). Returns (inputs, timings) per model."""
    names = list(steps)
    vb_pad = (MIX_TEXT[1], MIX_REGIONS[1]) if scenario.name != "fixed" else (0, 0)

    def inputs_for(name: str, batch: dict) -> dict:
        if name == "visualbert":
            return to_device(visualbert_batch(batch, *vb_pad), device)
        return to_device(batch, device)

    variant = {name: "mlm_itm" if name == "visualbert" else name.removeprefix("vlbert_") for name in names}
    inputs = {name: [inputs_for(name, b) for b in scenario.batches[variant[name]]] for name in names}
    for name in names:
        steps[name](inputs_for(name, scenario.warmup[variant[name]]))
    times: dict[str, list[Timing]] = {name: [] for name in names}
    for round_index in range(len(inputs[names[0]])):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            batch = inputs[name][round_index]
            times[name].append(timed(lambda: steps[name](batch), device))
        peak.measure()
    return inputs, times


def summarise(scenario: Scenario, inputs: dict, times: dict, config: VLBertConfig, clock: str, peak: MatmulPeak) -> dict:
    """samples/s, tokens/s, FLOP/s, fraction of peak and ratios to VisualBERT on one clock.
    fixed: equal batches, so the median step; mix: different batches, so the total over them."""
    prefix, result = scenario.name, {}
    samples = [len(b["input_ids"]) for b in inputs["visualbert"]]
    seconds = {}
    for name, timings in times.items():
        values = [t.on(clock) for t in timings]
        seconds[name] = median(values) * len(values) if prefix == "fixed" else float(sum(values))
        result[f"{prefix}_{name}_samples_per_s"] = round(sum(samples) / seconds[name], 3)
        if name == "visualbert":
            batches = inputs[name]
            flops = sum(visualbert_train_flops(config, b) for b in batches)
            real = sum(int(b["attention_mask"].sum() + b["visual_attention_mask"].sum()) for b in batches)
            result[f"{prefix}_{name}_tokens_per_s"] = round(real / seconds[name], 1)
            result[f"{prefix}_{name}_padded_tokens_per_s"] = round(sum(b["labels"].numel() for b in batches) / seconds[name], 1)
        else:
            batches = inputs[name]
            flops = sum(train_flops(config, b) for b in batches)
            result[f"{prefix}_{name}_tokens_per_s"] = round(sum(map(real_tokens, batches)) / seconds[name], 1)
            result[f"{prefix}_{name}_padded_tokens_per_s"] = round(sum(padded_size(b) * len(b["input_ids"]) for b in batches) / seconds[name], 1)
        result[f"{prefix}_{name}_gflop_per_s"] = round(flops / seconds[name] / 1e9, 2)
        result[f"{prefix}_{name}_fraction_of_peak"] = round(flops / seconds[name] / peak.flops_per_s(clock), 3)
    for name in times:
        if name != "visualbert":
            result[f"{prefix}_{name}_ratio"] = round(seconds["visualbert"] / seconds[name], 3)
            per_round = [v.on(clock) / p.on(clock) for v, p in zip(times["visualbert"], times[name])]
            result[f"{prefix}_{name}_ratio_median_round"] = round(median(per_round), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = set_threads(args.threads)
    clock = args.clock or ("cpu" if device.type == "cpu" and threads == 1 else "wall")
    other = "wall" if clock == "cpu" else "cpu"
    torch.manual_seed(args.seed)
    warnings.filterwarnings("ignore", message=".*self.log.*")
    size = SIZES[args.size]
    compile_encoder = {"auto": None, "true": True, "false": False}[args.compile]
    config = VLBertConfig(**size, attention_path=args.attention_path, compile_encoder=compile_encoder)
    fused = {"framework": None, "fused": True, "unfused": False}[args.adamw]
    steps = {
        "visualbert": VisualBertStep(config, device, args.dtype, fused),
        "vlbert_mlm_itm": VLBertStep(config, "mlm_itm", device, args.dtype, args.mixing, fused),
        "vlbert_mlm_mrm_itm": VLBertStep(config, "mlm_mrm_itm", device, args.dtype, args.mixing, fused),
    }
    peak_size = args.peak_size or (512 if args.size == "tiny" else 8192 if device.type == "cuda" else 4096)
    peak = MatmulPeak(device, args.dtype, peak_size)
    result: dict = {"bench": "pretrain_step", "device": args.device, "dtype": args.dtype, "size": args.size,
                    "threads": threads, "clock": clock, "batch_size": args.batch_size, "steps": args.steps,
                    "mixing": args.mixing, "bucket": args.bucket, "attention_path": args.attention_path,
                    "compile": args.compile, "pad_to_multiple_of": args.pad_to_multiple_of,
                    "optimizer": optimizer_name(steps["vlbert_mlm_itm"].optimizer)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="vlbert-bench-") as tmp:
        tokenizer = word_tokenizer(Path(tmp) / "tokenizer")
        scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        for name in scenarios:
            if name not in ("fixed", "mix", "budget"):
                raise SystemExit(f"unknown scenario {name!r}; use fixed, mix and/or budget")
            scenario = build_scenario(name, Path(tmp), tokenizer, size, args)
            analytic, counted = check_flops(steps["vlbert_mlm_mrm_itm"], to_device(scenario.warmup["mlm_mrm_itm"], device), config)
            result[f"{name}_flops_analytic_vs_counter"] = round(analytic / max(counted, 1), 4)
            runs.append((scenario, *run_scenario(scenario, steps, device, peak)))
    for scenario, inputs, times in runs:
        result.update(summarise(scenario, inputs, times, config, clock, peak))
        secondary = summarise(scenario, inputs, times, config, other, peak)
        for key in secondary:
            if key.endswith(("_samples_per_s", "_ratio", "_fraction_of_peak")):
                result[f"{key}_{other}"] = secondary[key]
        for name, timings in times.items():
            result[f"{scenario.name}_{name}_step_s"] = [round(t.on(clock), 3) for t in timings]
            result[f"{scenario.name}_{name}_step_s_{other}"] = [round(t.on(other), 3) for t in timings]
        batches = scenario.batches["mlm_itm"]
        result[f"{scenario.name}_timed_mean_padded_len"] = round(float(np.mean([padded_size(b) for b in batches])), 1)
        result[f"{scenario.name}_timed_mean_real_len"] = round(float(np.mean([real_tokens(b) / len(b["input_ids"]) for b in batches])), 1)
        if scenario.name != "fixed":
            result[f"{scenario.name}_visualbert_padded_len"] = MIX_TEXT[1] + MIX_REGIONS[1]
            result.update(scenario.stats)
    if "budget_vlbert_mlm_itm_samples_per_s" in result and "mix_vlbert_mlm_itm_samples_per_s" in result:
        result["budget_vs_mix_vlbert_mlm_itm_samples"] = round(
            result["budget_vlbert_mlm_itm_samples_per_s"] / result["mix_vlbert_mlm_itm_samples_per_s"], 3)
    result["matmul_peak_gflop_per_s"] = round(peak.flops_per_s(clock) / 1e9, 2)
    result[f"matmul_peak_gflop_per_s_{other}"] = round(peak.flops_per_s(other) / 1e9, 2)
    result["matmul_peak_best_gflop_per_s"] = round(peak.flops_per_s(clock, best=True) / 1e9, 2)
    result["flops_method"] = (
        "analytic matmul FLOPs as executed, forward + backward (vlbert: encoder on real tokens when packed, "
        "attention and region projection padded; VisualBERT: everything padded, vocabulary logits at every "
        "position); checked against FlopCounterMode on one MLM+MRM+ITM step per scenario (*_flops_analytic_vs_counter)"
    )
    result["peak_method"] = (
        f"{args.dtype} torch.mm {peak_size}x{peak_size} (x{peak.repeats} back to back), once per round, "
        "median over rounds, same clock"
    )
    targets = {}
    if "fixed_vlbert_mlm_itm_ratio" in result:
        targets["fixed_ratio_ge_1.25"] = result["fixed_vlbert_mlm_itm_ratio"] >= 1.25
        targets["fraction_of_peak_ge_0.5"] = result["fixed_vlbert_mlm_itm_fraction_of_peak"] >= 0.5
    if "mix_vlbert_mlm_itm_ratio" in result:
        targets["mix_ratio_ge_2"] = result["mix_vlbert_mlm_itm_ratio"] >= 2.0
    if device.type == "cuda":  # the GPU targets (bf16 peak)
        if "mix_vlbert_mlm_itm_fraction_of_peak" in result:
            targets["mix_fraction_of_peak_ge_0.4"] = result["mix_vlbert_mlm_itm_fraction_of_peak"] >= 0.4
        if "fixed_vlbert_mlm_itm_ratio" in result:
            targets["fixed_ratio_ge_1.5"] = result["fixed_vlbert_mlm_itm_ratio"] >= 1.5
    result["targets"] = targets
    result["machine"] = machine()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
