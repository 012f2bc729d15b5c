"""Box selection of the bottom-up-attention recipe on hand-built detections."""
import pytest
import torch
from torchvision.ops import box_iou, nms

from vlbert.features.boxes import BoxSelection, per_class_nms_confidence, select_boxes, select_from_confidence


def reference_confidence(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Slow oracle: one NMS per class, max of surviving scores per proposal."""
    confidence = torch.zeros(boxes.shape[0])
    for c in range(scores.shape[1]):
        for k in nms(boxes, scores[:, c], iou).tolist():
            confidence[k] = max(confidence[k].item(), scores[k, c].item())
    return confidence


def test_per_class_nms_suppresses_within_a_class_only():
    # proposals 0 and 1 overlap heavily (IoU 0.81), proposal 2 is elsewhere
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 9, 9], [50, 50, 60, 60]], dtype=torch.float)
    assert box_iou(boxes[:1], boxes[1:2]).item() > 0.3
    scores = torch.tensor([
        [0.9, 0.1],  # proposal 0 wins class 0
        [0.8, 0.3],  # proposal 1 loses class 0 to proposal 0 but wins class 1 (0.3 > 0.1)
        [0.5, 0.0],
    ])
    confidence = per_class_nms_confidence(boxes, scores, iou=0.3)
    # proposal 1: suppressed in class 0 (0.8 dropped), survives class 1 with 0.3
    torch.testing.assert_close(confidence, torch.tensor([0.9, 0.3, 0.5]))


def test_per_class_nms_zero_when_suppressed_everywhere():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=torch.float)
    scores = torch.tensor([[0.9, 0.7], [0.8, 0.6]])
    confidence = per_class_nms_confidence(boxes, scores, iou=0.5)
    torch.testing.assert_close(confidence, torch.tensor([0.9, 0.0]))


def test_nms_iou_threshold_is_respected():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 6]], dtype=torch.float)  # IoU 0.6
    scores = torch.tensor([[0.9], [0.8]])
    assert per_class_nms_confidence(boxes, scores, iou=0.5)[1] == 0  # 0.6 > 0.5: suppressed
    assert per_class_nms_confidence(boxes, scores, iou=0.7)[1] == pytest.approx(0.8)  # kept


def test_matches_oracle_on_random_detections():
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=generator) * 100
    wh = torch.rand(200, 2, generator=generator) * 40 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.softmax(torch.randn(200, 12, generator=generator) * 3, -1)
    torch.testing.assert_close(per_class_nms_confidence(boxes, scores, 0.3), reference_confidence(boxes, scores, 0.3))


def confidences(values):
    return torch.tensor(values, dtype=torch.float)


def test_adaptive_keeps_boxes_above_threshold_most_confident_first():
    conf = confidences([0.1, 0.5, 0.25, 0.05, 0.9, 0.2])
    keep = select_from_confidence(conf, BoxSelection(score_threshold=0.2, min_boxes=1, max_boxes=10))
    assert keep.tolist() == [4, 1, 2, 5]  # >= 0.2, sorted by confidence


def test_adaptive_fills_up_to_min_boxes():
    conf = confidences([0.1, 0.5, 0.05, 0.15, 0.01])
    keep = select_from_confidence(conf, BoxSelection(score_threshold=0.2, min_boxes=3, max_boxes=10))
    assert keep.tolist() == [1, 3, 0]  # only one above 0.2: top 3 anyway


def test_adaptive_caps_at_max_boxes():
    conf = torch.linspace(0.3, 0.9, 20)
    keep = select_from_confidence(conf, BoxSelection(score_threshold=0.2, min_boxes=2, max_boxes=5))
    assert keep.tolist() == [19, 18, 17, 16, 15]


def test_adaptive_with_fewer_proposals_than_min_boxes():
    keep = select_from_confidence(confidences([0.1, 0.3]), BoxSelection(min_boxes=10, max_boxes=100))
    assert keep.tolist() == [1, 0]


def test_fixed_number_ignores_threshold():
    conf = confidences([0.01, 0.02, 0.9, 0.5, 0.03])
    keep = select_from_confidence(conf, BoxSelection(score_threshold=0.2, num_boxes=3))
    assert keep.tolist() == [2, 3, 4]
    assert len(select_from_confidence(torch.rand(100), BoxSelection(num_boxes=36))) == 36


def test_select_boxes_end_to_end_and_defaults():
    selection = BoxSelection()
    assert (selection.score_threshold, selection.min_boxes, selection.max_boxes) == (0.2, 10, 100)
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 9, 9], [50, 50, 60, 60]], dtype=torch.float)
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.5, 0.0]])
    keep = select_boxes(boxes, scores, BoxSelection(score_threshold=0.4, min_boxes=1, max_boxes=10))
    assert keep.tolist() == [0, 2]  # proposal 1 only reaches 0.3 after NMS


def test_empty_detections():
    keep = select_boxes(torch.zeros(0, 4), torch.zeros(0, 5), BoxSelection())
    assert keep.numel() == 0


@pytest.mark.parametrize("kwargs", [dict(min_boxes=20, max_boxes=10), dict(num_boxes=0), dict(nms_iou=0.0),
                                    dict(max_boxes=0, min_boxes=0)])
def test_bad_selection_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        BoxSelection(**kwargs)


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="scores must be"):
        select_boxes(torch.zeros(3, 4), torch.zeros(2, 5), BoxSelection())


def test_fewer_survivors_than_min_boxes_fill_with_the_top_scoring_proposals():
    """Three copies of one box and a lone box: after NMS only two proposals survive (in any class),
    min_boxes is 4, so two suppressed copies fill up, the higher-scoring copy first (not RPN order)."""
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10]],
                         dtype=torch.float)
    scores = torch.tensor([[0.9, 0.0], [0.3, 0.1], [0.6, 0.2], [0.05, 0.1], [0.1, 0.15]])
    confidence = per_class_nms_confidence(boxes, scores, iou=0.5)
    torch.testing.assert_close(confidence, torch.tensor([0.9, 0.0, 0.2, 0.1, 0.0]))  # 2 won class 1
    keep = select_boxes(boxes, scores, BoxSelection(score_threshold=0.5, min_boxes=4, max_boxes=10))
    # above 0.5: proposal 0; then the other survivors by confidence (2: 0.2, 3: 0.1); then the
    # suppressed ones by their best class score: 1 (0.3) before 4 (0.15)
    assert keep.tolist() == [0, 2, 3, 1]
    keep = select_boxes(boxes, scores, BoxSelection(score_threshold=0.5, min_boxes=5, max_boxes=10))
    assert keep.tolist() == [0, 2, 3, 1, 4]  # every proposal, as there are no more
    assert select_boxes(boxes, scores, BoxSelection(num_boxes=4)).tolist() == [0, 2, 3, 1]  # fixed K alike


def test_tie_break_only_orders_equal_confidences():
    from vlbert.features.boxes import ranking

    confidence = confidences([0.0, 0.5, 0.0, 0.5, 0.2])
    raw = confidences([0.1, 0.2, 0.9, 0.7, 0.0])
    assert ranking(confidence, raw).tolist() == [3, 1, 4, 2, 0]
    assert ranking(confidence).tolist() == [1, 3, 4, 0, 2]  # without: index order
