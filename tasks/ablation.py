"""`python -m vlbert.tasks.ablation`: which pretraining objectives pay, in the manner of UNITER's Table 2.

For each row (none, mlm, mlm+itm, +mrfr, +mrc_kl, +wra, +tags) and each seed: pretrain the tiny
model with that row's objectives (the "none" row starts from scratch), then fine-tune VQA on a
fraction of the training questions (default 10%) and retrieval, the same steps and seeds for every
row. Prints one JSON line and writes ablation.md (mean and per-seed) under --out.

Rows are CLI overrides (ROWS below), so a new objective is one entry; --rows runs a subset.
Default cost on one CPU thread (2-core development machine): per row and seed ~130 s of
pretraining (5000 steps), ~22 s of VQA (1000 steps) and ~40 s of retrieval (400 steps), so the
7 rows x 2 seeds take about an hour; the world (4000 images, 12% test) is made once, ~10 s.
Each run's result is kept (result.json beside it): a rerun reuses what finished.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

from vlbert.errors import InputError

# every row switches all objectives explicitly, so a config default never leaks into a row
_OFF = {"mlm": "0", "itm": "0", "mrfr": "0", "mrc": "0", "mrc_kl": "0", "wra": "0"}


def _objectives(**on: str) -> list[str]:
    return [arg for name, weight in {**_OFF, **on}.items() for arg in (f"--model.objectives.{name}", weight)]


# name -> (pretraining overrides, or None for no pretraining; VQA fine-tuning overrides)
ROWS: dict[str, tuple[list[str] | None, list[str]]] = {
    "none": (None, []),
    "mlm": (_objectives(mlm="2"), []),
    "mlm+itm": (_objectives(mlm="2", itm="2"), []),
    "+mrfr": (_objectives(mlm="2", itm="2", mrfr="1"), []),
    "+mrc_kl": (_objectives(mlm="2", itm="2", mrfr="1", mrc_kl="1"), []),
    "+wra": (_objectives(mlm="2", itm="2", mrfr="1", mrc_kl="1", wra="0.1"), []),
    "+tags": (_objectives(mlm="2", itm="2", mrfr="1", mrc_kl="1", wra="0.1")
              + ["--data.object_tags", "true", "--model.objectives.tag_contrastive", "1"],
              ["--data.object_tags", "true"]),
}


def parse_rows(text: str) -> list[str]:
    """Comma-separated row names, in the order given; unknown names are refused."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise InputError(f"--rows: unknown row(s) {unknown or [text]}; choose from {', '.join(ROWS)}")
    return rows


def pretrain(world, run_dir: Path, steps: int, seed: int, overrides: list[str]) -> dict:
    """Pretrain one row; returns its export and the objective weights the model actually used."""
    from vlbert.pretraining.cli import PretrainCLI
    from vlbert.pretraining.datamodule import PretrainDataModule
    from vlbert.pretraining.module import PretrainModule
    from vlbert.pretraining.objectives import COMPANIONS, TASKS
    from vlbert.tasks.demo import pretrain_args

    args = pretrain_args(world, str(world.features_path), run_dir, steps, world.feature_dim, world.num_classes, True)
    args += ["--seed_everything", str(seed), "--data.num_workers", "0", *overrides]
    cli = PretrainCLI(PretrainModule, PretrainDataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model, cli.datamodule)
    objectives = cli.model.objectives
    weights = {name: float(getattr(objectives, name)) for name in (*TASKS, *COMPANIONS)}
    return {"export": str(cli.model.export_dir), "objectives": {k: v for k, v in weights.items() if v > 0}}


def kept_result(saved: Path, recipe: dict) -> dict | None:
    """The result kept in `saved` when it was made by `recipe`, else None."""
    if saved.exists():
        kept = json.loads(saved.read_text())
        if kept.get("recipe") == recipe:
            return kept["result"]
    return None


def shared_pretraining(world, out: Path, row: str, steps: int, seed: int, overrides: list[str]) -> dict:
    """`pretrain` once per row at `seed`, kept with its recipe in pretrain.json and reused by every
    fine-tuning seed (and by a rerun)."""
    run = out / row.replace("+", "plus_") / f"pretrain_seed{seed}"
    recipe = {"world": str(Path(world.root).resolve()), "steps": steps, "seed": seed, "pretrain": overrides}
    saved = run / "pretrain.json"
    kept = kept_result(saved, recipe)
    if kept is not None and Path(kept["export"], "config.json").is_file():
        return kept
    result = pretrain(world, run, steps, seed, overrides)
    saved.write_text(json.dumps({"recipe": recipe, "result": result}, indent=1))
    return result


def run_row(world, out: Path, row: str, seed: int, steps: dict[str, int], train_fraction: float,
            pretrain_seed: int | None = None) -> dict:
    """One row at one seed: pretraining (unless "none"), VQA at `train_fraction`, retrieval.
    pretrain_seed: pretrain once with this seed and fine-tune each seed from it (the fine-tuning
    seed's spread alone) instead of pretraining with every seed.

    The result is kept in the run's result.json with what produced it, so a rerun (after a crash,
    or with more rows or seeds) reuses finished runs instead of repeating minutes of training.
    """
    from vlbert.tasks.demo import retrieval_args, run_retrieval, run_vqa, vqa_args

    pre_overrides, vqa_overrides = ROWS[row]
    run = out / row.replace("+", "plus_") / (f"seed{seed}" if pretrain_seed is None else f"seed{seed}_from{pretrain_seed}")
    recipe = {"world": str(Path(world.root).resolve()), "steps": steps, "train_fraction": train_fraction,
              "pretrain": pre_overrides, "vqa": vqa_overrides, **({} if pretrain_seed is None else {"pretrain_seed": pretrain_seed})}
    saved = run / "result.json"
    kept = kept_result(saved, recipe)
    if kept is not None:
        print(f"[ablation] {row} seed {seed}: reusing {saved}", flush=True)
        return kept
    result: dict = {"objectives": {}}
    init = None
    if pre_overrides is not None:
        if pretrain_seed is None:
            pre = pretrain(world, run / "pretrain", steps["pretrain"], seed, pre_overrides)
        else:
            pre = shared_pretraining(world, out, row, steps["pretrain"], pretrain_seed, pre_overrides)
        init, result["objectives"] = pre["export"], pre["objectives"]
    seeds = ["--seed_everything", str(seed), "--data.num_workers", "0"]
    vqa = vqa_args(world, str(world.features_path), run / "vqa", init, world.feature_dim, train_fraction, steps["vqa"])
    result["vqa_acc"] = run_vqa(vqa + seeds + ["--data.seed", str(seed), *vqa_overrides])["vqa_acc"]
    if steps["retrieval"] > 0:
        ret = run_retrieval(retrieval_args(world, str(world.features_path), run / "retrieval", init, steps["retrieval"],
                                           world.feature_dim) + seeds, before=False)
        result["i2t_r1"], result["t2i_r1"] = ret["finetuned"]["i2t_r1"], ret["finetuned"]["t2i_r1"]
    saved.write_text(json.dumps({"recipe": recipe, "result": result}, indent=1))
    return result


METRICS = ("vqa_acc", "i2t_r1", "t2i_r1")


def summarise(per_seed: dict[str, dict[int, dict]]) -> dict:
    """Per row: objectives, per-seed metrics and their means; with a "none" row, each row's VQA gain
    over it seed by seed (the same fine-tuning seed) and the smallest of those gains."""
    table = {}
    baseline = per_seed.get("none", {})
    for row, seeds in per_seed.items():
        runs = list(seeds.values())
        mean = {m: round(sum(r[m] for r in runs) / len(runs), 2) for m in METRICS if all(m in r for r in runs)}
        table[row] = {"objectives": runs[0]["objectives"], "mean": mean,
                      "seeds": {str(s): {m: r[m] for m in METRICS if m in r} for s, r in seeds.items()}}
        gains = {str(s): round(r["vqa_acc"] - baseline[s]["vqa_acc"], 2) for s, r in seeds.items() if s in baseline}
        if row != "none" and gains:
            table[row]["vqa_gain_over_none"] = gains
            table[row]["min_vqa_gain"] = min(gains.values())
    return table


def markdown(table: dict, train_fraction: float) -> str:
    """UNITER Table 2 style: one line per row, mean then per-seed values."""
    pct = f"{train_fraction * 100:g}%"
    lines = [f"| row | objectives | VQA acc ({pct} labels) | IR R@1 (t2i) | TR R@1 (i2t) |", "|---|---|---|---|---|"]

    def cell(row: dict, metric: str) -> str:
        if metric not in row["mean"]:
            return "-"
        per = " / ".join(f"{s[metric]:.2f}" for s in row["seeds"].values())
        return f"{row['mean'][metric]:.2f} ({per})"

    for name, row in table.items():
        objectives = ", ".join(f"{k} {v:g}" for k, v in row["objectives"].items()) or "no pretraining"
        lines.append(f"| {name} | {objectives} | {cell(row, 'vqa_acc')} | {cell(row, 't2i_r1')} | {cell(row, 'i2t_r1')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlbert.tasks.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ablation_out", help="working directory (world, runs, ablation.md)")
    parser.add_argument("--world", default=None, help="an existing synthetic world (default: make one under --out)")
    parser.add_argument("--num-images", type=int, default=4000)
    parser.add_argument("--split", default="0.85,0.03,0.12", help="train,val,test fractions of a new world")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows, of {', '.join(ROWS)} (default: all)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 for pretraining and fine-tuning")
    parser.add_argument("--pretrain-steps", type=int, default=5000)
    parser.add_argument("--vqa-steps", type=int, default=1000)
    parser.add_argument("--retrieval-steps", type=int, default=400, help="0 skips retrieval")
    parser.add_argument("--train-fraction", type=float, default=0.1, help="fraction of the VQA training questions")
    parser.add_argument("--pretrain-seed", type=int, default=None,
                        help="pretrain each row once with this seed and fine-tune every seed from it (default: "
                             "pretrain with each seed)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    rows = parse_rows(args.rows)
    if args.seeds < 1 or min(args.pretrain_steps, args.vqa_steps) < 1 or args.retrieval_steps < 0:
        raise InputError("--seeds, --pretrain-steps and --vqa-steps must be >= 1, --retrieval-steps >= 0")
    import torch

    from vlbert.synth import generate_world, open_world

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out)
    if args.world:
        world = open_world(args.world)
    else:
        split = tuple(float(x) for x in args.split.split(","))
        if len(split) != 3:
            raise InputError(f"--split wants three fractions train,val,test, got {args.split!r}")
        world = generate_world(out / "world", seed=0, num_images=args.num_images, split_fractions=split)
    steps = {"pretrain": args.pretrain_steps, "vqa": args.vqa_steps, "retrieval": args.retrieval_steps}
    started = time.time()
    per_seed: dict[str, dict[int, dict]] = {}
    for row in rows:
        for seed in range(args.seeds):
            print(f"[ablation] {row} seed {seed}", flush=True)
            per_seed.setdefault(row, {})[seed] = run_row(world, out, row, seed, steps, args.train_fraction, args.pretrain_seed)
    table = summarise(per_seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(markdown(table, args.train_fraction))
    print(json.dumps({"rows": table, "steps": steps, "train_fraction": args.train_fraction, "pretrain_seed": args.pretrain_seed,
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
