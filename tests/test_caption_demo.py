"""The demo's caption stage in its summary: the table, the samples and the chart."""
from vlbert.tasks.demo_summary import write_summary


def test_the_summary_shows_caption_metrics_before_and_after(tmp_path):
    result = {"objective": "next_token", "test_images": 120, "samples": [{"caption": "a red circle", "reference": "a red circle"}]}
    caption = {"pretrained": {**result, "before_finetuning": {"cider": 15.1, "bleu4": 0.0, "rouge_l": 25.0},
                              "finetuned": {"cider": 140.9, "bleu4": 45.1, "rouge_l": 61.0}},
               "from_scratch": {**result, "before_finetuning": {"cider": 2.1, "bleu4": 0.0, "rouge_l": 15.0},
                                "finetuned": {"cider": 154.2, "bleu4": 45.6, "rouge_l": 61.4}}}
    text = write_summary({"caption": caption, "num_images": 4000, "seed": 0}, tmp_path).read_text()
    assert "## Captioning: test split (120 images, COCO metrics x 100)" in text
    assert "| CIDEr | 15.1 | 140.9 | 2.1 | 154.2 |" in text and "| BLEU-4 | 0 | 45.1 | 0 | 45.6 |" in text
    assert "- a red circle (a red circle)" in text
    assert (tmp_path / "caption_scores.png").stat().st_size > 1000
    assert "Captioning" not in write_summary({"num_images": 1}, tmp_path / "none").read_text()
