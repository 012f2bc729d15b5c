"""The demo's equal-budget comparison: each pretrained / from-scratch pair, its gain, and the summary table."""
from vlbert.tasks.demo import RUN_DIRS, equal_budget, vqa_runs
from vlbert.tasks.demo_summary import write_summary


def test_every_vqa_run_has_its_own_directory_and_a_scratch_twin():
    runs = vqa_runs("pre/export")
    assert {run for _, run, _, _ in runs} <= set(RUN_DIRS)
    assert {(init is None, fraction) for _, _, init, fraction in runs} == {(a, f) for a in (True, False) for f in (0.1, 1.0)}


def test_equal_budget_reports_pairs_and_gains(tmp_path):
    vqa = {"pretrained_all_questions": {"vqa_acc": 70.0}, "untrained_all_questions": {"vqa_acc": 66.5},
           "pretrained_10pct_questions": {"vqa_acc": 60.0}, "untrained_10pct_questions": {"vqa_acc": 52.25}}
    results = {"vqa": vqa, "retrieval": {"finetuned": {"i2t_r1": 50.0, "t2i_r1": 40.0}},
               "retrieval_scratch": {"finetuned": {"i2t_r1": 30.0, "t2i_r1": 25.5}}}
    comparison = equal_budget(results)
    assert comparison["vqa_10pct"] == {"from_scratch": 52.25, "pretrained": 60.0, "gain": 7.75}
    assert comparison["vqa_all"]["gain"] == 3.5 and comparison["retrieval_t2i_r1"]["gain"] == 14.5
    text = write_summary({"num_images": 4000, "seed": 0, "equal_budget": comparison}, tmp_path).read_text()
    assert "| VQA accuracy, 10% of the questions | 52.25 | 60 | 7.75 |" in text
    assert "| retrieval image → text R@1 | 30 | 50 | 20 |" in text
