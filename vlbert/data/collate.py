"""Dynamic padding: each batch is padded only to its own longest text and region count."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad_stack(arrays: Sequence[np.ndarray], pad_value: float = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack arrays whose first dimension differs into [B, max_len, ...], padding with `pad_value`."""
    length = max((a.shape[0] for a in arrays), default=0)
    trailing = arrays[0].shape[1:]
    out = np.full((len(arrays), length, *trailing), pad_value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    tensor = torch.from_numpy(out)
    return tensor if dtype is None else tensor.to(dtype)


def length_mask(lengths: Sequence[int]) -> torch.Tensor:
    """[B, max_len] bool, True on the first lengths[i] positions of row i."""
    lengths_t = torch.as_tensor(list(lengths))
    return torch.arange(int(lengths_t.max()) if len(lengths_t) else 0)[None, :] < lengths_t[:, None]


def collate_inputs(examples: Sequence[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """The model inputs of a list of examples with keys input_ids [T], region_features [R, D],
    region_locations [R, 7]: input_ids, text_mask, region_features, region_locations, region_mask."""
    return {
        "input_ids": pad_stack([e["input_ids"] for e in examples], pad_token_id, torch.long),
        "text_mask": length_mask([len(e["input_ids"]) for e in examples]),
        "region_features": pad_stack([e["region_features"] for e in examples], 0, torch.float32),
        "region_locations": pad_stack([e["region_locations"] for e in examples], 0, torch.float32),
        "region_mask": length_mask([len(e["region_features"]) for e in examples]),
    }
