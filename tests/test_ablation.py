"""The objective ablation harness end to end on a tiny world: JSON and table structure, and each
row pretrains with exactly the objectives its name says."""
import json

import pytest

from vlbert.errors import InputError
from vlbert.tasks import ablation

EXPECTED = {
    "none": set(),
    "mlm": {"mlm"},
    "mlm+itm": {"mlm", "itm"},
    "+mrfr": {"mlm", "itm", "mrfr"},
    "+mrc_kl": {"mlm", "itm", "mrfr", "mrc_kl"},
    "+wra": {"mlm", "itm", "mrfr", "mrc_kl", "wra"},
}


def test_rows_are_cumulative_and_tags_row_is_overrides_only():
    assert list(ablation.ROWS)[: len(EXPECTED)] == list(EXPECTED)
    pre, vqa = ablation.ROWS["+tags"]
    assert pre[-4:] == ["--data.object_tags", "true", "--model.objectives.tag_contrastive", "1"]
    assert vqa == ["--data.object_tags", "true"]
    with pytest.raises(InputError, match="unknown row"):
        ablation.parse_rows("mlm,nope")


def test_ablation_end_to_end(tiny_world, tmp_path, capsys, monkeypatch):
    import logging

    lightning_log = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(lightning_log, "level", lightning_log.level)  # main() quiets Lightning for the process
    rows = "none,mlm,+wra"
    ablation.main(["--world", str(tiny_world.root), "--out", str(tmp_path), "--rows", rows, "--seeds", "1",
                   "--pretrain-steps", "2", "--vqa-steps", "2", "--retrieval-steps", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(result["rows"]) == rows.split(",")
    for name, row in result["rows"].items():
        assert set(row["objectives"]) == EXPECTED[name]
        assert set(row["mean"]) == {"vqa_acc", "i2t_r1", "t2i_r1"} and list(row["seeds"]) == ["0"]
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[0].startswith("| row | objectives | VQA acc (10% labels)") and len(table) == 2 + 3
    assert table[2].startswith("| none | no pretraining |")

    # a rerun with one more row reuses the finished runs and trains only the new one
    ablation.main(["--world", str(tiny_world.root), "--out", str(tmp_path), "--rows", rows + ",mlm+itm", "--seeds", "1",
                   "--pretrain-steps", "2", "--vqa-steps", "2", "--retrieval-steps", "2"])
    out = capsys.readouterr().out.strip().splitlines()
    assert sum("reusing" in line for line in out) == 3
    again = json.loads(out[-1])["rows"]
    assert {k: again[k] for k in result["rows"]} == result["rows"] and set(again["mlm+itm"]["objectives"]) == {"mlm", "itm"}


def test_one_pretraining_per_row_for_every_fine_tuning_seed(tiny_world, tmp_path, capsys, monkeypatch):
    import logging

    lightning_log = logging.getLogger("lightning.pytorch")
    monkeypatch.setattr(lightning_log, "level", lightning_log.level)
    ablation.main(["--world", str(tiny_world.root), "--out", str(tmp_path), "--rows", "none,mlm", "--seeds", "2",
                   "--pretrain-seed", "0", "--pretrain-steps", "2", "--vqa-steps", "2", "--retrieval-steps", "0"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["pretrain_seed"] == 0
    assert sorted(p.name for p in (tmp_path / "mlm").iterdir()) == ["pretrain_seed0", "seed0_from0", "seed1_from0"]
    assert not list((tmp_path / "mlm").glob("seed*/pretrain"))
    mlm, none = result["rows"]["mlm"], result["rows"]["none"]
    gains = {s: round(mlm["seeds"][s]["vqa_acc"] - none["seeds"][s]["vqa_acc"], 2) for s in ("0", "1")}
    assert mlm["vqa_gain_over_none"] == gains and mlm["min_vqa_gain"] == min(gains.values())
    assert "vqa_gain_over_none" not in none
