"""Retrieval on the synthetic world for `vlbert demo`: test, fine-tune, test again; recall vs chance.

    from vlbert.tasks.retrieval.demo import retrieval_args, run_retrieval
    results["retrieval"] = run_retrieval(retrieval_args(world, features, out / "retrieval", init_from=export,
                                                        steps=600, feature_dim=dim))
"""
from __future__ import annotations

from pathlib import Path

from vlbert.demo import stage_trainer_args

from .metric import chance_recall

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "retrieval" / "tiny.yaml"
REPORTED = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")


def retrieval_args(
    world,
    features: str,
    run_dir: Path,
    init_from: str | None = None,
    steps: int = 600,
    feature_dim: int = 64,
    num_workers: int = 0,
) -> list[str]:
    """`vlbert retrieval` arguments for the tiny config on a synthetic `World`.

    init_from: a model directory (the demo's pretraining export) or None to start from scratch
    (then the tiny config's sizes apply with ``feature_dim``-d regions)."""
    return [
        "--config", str(CONFIG),
        "--data.annotations", str(world.karpathy_json),
        "--data.features", str(features),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", str(num_workers),
        "--model.model.region_feature_dim", str(feature_dim),
        "--model.init_from", str(init_from) if init_from else "null",
        "--model.export_dir", str(Path(run_dir) / "export"),
        *stage_trainer_args(Path(run_dir), steps, validations=3),
    ]


def run_retrieval(args: list[str]) -> dict:
    """Test recall before and after fine-tuning, with the chance level of the test split."""
    from .cli import RetrievalCLI
    from .datamodule import RetrievalDataModule
    from .module import RetrievalModule

    cli = RetrievalCLI(RetrievalModule, RetrievalDataModule, args=args, run=False, save_config_kwargs={"overwrite": True})
    before = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    split = cli.datamodule.splits["test"]
    chance = chance_recall(split.caption_image, split.num_images)

    def pick(metrics: dict) -> dict:
        return {k: round(float(metrics[f"test/{k}"]), 2) for k in REPORTED}

    return {
        "test_images": split.num_images,
        "test_captions": split.num_captions,
        "before_finetuning": pick(before),
        "finetuned": pick(after),
        "chance": {k: round(v, 2) for k, v in chance.items() if k in REPORTED},
        "pairs_per_second": round(float(after["test/pairs_per_second"]), 1),
        "export": str(cli.model.export_dir),
    }
