"""Region inputs: 7-d normalised box locations and capping the number of regions."""
from __future__ import annotations

import numpy as np


def box_locations(boxes: np.ndarray, image_w: float, image_h: float) -> np.ndarray:
    """[N, 4] pixel boxes (x1 y1 x2 y2) -> [N, 7] float32 [x1, y1, x2, y2, w, h, w*h], each / image size."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scale = np.array([image_w, image_h, image_w, image_h], dtype=np.float32)
    xyxy = np.clip(boxes / scale, 0.0, 1.0)
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    return np.concatenate([xyxy, w[:, None], h[:, None], (w * h)[:, None]], axis=1)
