"""Dynamic padding: each batch is padded only to its own longest text and region count.

Batches are built in place: the tensors of a batch are views of one allocation, sized from the
examples' lengths up front, and the examples' arrays are copied into them row by row. In a
DataLoader worker that allocation is in shared memory, so the batch crosses to the training
process as one file descriptor, with no further copy (one per tensor would cost a socket
connection and handshake with the worker each, and a copy into shared memory on sending).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

Spec = tuple[Sequence[int], torch.dtype]  # shape, dtype

_ALIGN = 64  # bytes: every tensor of a batch starts on a cache line


def new_tensors(specs: Mapping[str, Spec]) -> dict[str, torch.Tensor]:
    """Uninitialised contiguous tensors of the given shapes and dtypes, views of one allocation:
    in shared memory when called in a DataLoader worker. (The allocation lives as long as any
    of its tensors.)"""
    offsets, total = {}, 0
    for name, (shape, dtype) in specs.items():
        total = -(-total // _ALIGN) * _ALIGN
        offsets[name] = total
        total += math.prod(shape) * dtype.itemsize
    if fresh_memory_is_zeroed():
        storage = torch.UntypedStorage._new_shared(max(total, 1))
    else:
        storage = torch.UntypedStorage(max(total, 1))
    return {
        name: torch.empty(0, dtype=dtype).set_(storage, offsets[name] // dtype.itemsize, tuple(shape))
        for name, (shape, dtype) in specs.items()
    }


def fresh_memory_is_zeroed() -> bool:
    """Whether `new_tensors` gives zeros (a new shared-memory segment, in a DataLoader worker):
    zero padding then needs no writing."""
    return get_worker_info() is not None


def new_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """One uninitialised tensor; in shared memory when called in a DataLoader worker."""
    return new_tensors({"t": (shape, dtype)})["t"]


def torch_dtype(array: np.ndarray) -> torch.dtype:
    return torch.from_numpy(np.empty(0, array.dtype)).dtype


def _rows(tensor: torch.Tensor):
    """Where rows are copied in: numpy's slicing costs ~1 us a row, torch indexing ~10 us; numpy has no bfloat16."""
    return tensor if tensor.dtype == torch.bfloat16 else tensor.numpy()


def _row(rows, array: np.ndarray):
    return array if isinstance(rows, np.ndarray) else torch.from_numpy(np.asarray(array))


def round_up(length: int, multiple: int = 1) -> int:
    """`length` rounded up to a multiple of `multiple` (fewer distinct batch shapes)."""
    return -(-length // multiple) * multiple


def padded_shape(arrays: Sequence[np.ndarray], multiple: int = 1) -> tuple[int, ...]:
    """[B, max_len, ...] of `pad_stack(arrays)`, max_len rounded up to a multiple of `multiple`."""
    return (len(arrays), round_up(max((a.shape[0] for a in arrays), default=0), multiple), *arrays[0].shape[1:])


def pad_stack(
    arrays: Sequence[np.ndarray],
    pad_value: float = 0,
    dtype: torch.dtype | None = None,
    out: torch.Tensor | None = None,
    out_zeroed: bool = False,
) -> torch.Tensor:
    """Stack arrays whose first dimension differs into [B, max_len, ...], padding with `pad_value`.
    dtype: the output's (default: the arrays'); out: a tensor of `padded_shape(arrays)` to fill,
    out_zeroed: it holds zeros already (zero padding is then not written)."""
    if out is None:
        out = new_tensor(padded_shape(arrays), dtype or torch_dtype(arrays[0]))
        out_zeroed = fresh_memory_is_zeroed()
    rows, length = _rows(out), out.shape[1]
    write_padding = not (out_zeroed and pad_value == 0)
    for i, a in enumerate(arrays):
        n = a.shape[0]
        rows[i, :n] = _row(rows, a)
        if n < length and write_padding:
            rows[i, n:] = pad_value
    return out


def cat_rows(arrays: Sequence[np.ndarray], dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate arrays along their first dimension (dtype default: the arrays'; out: to fill)."""
    if out is None:
        out = new_tensor((sum(a.shape[0] for a in arrays), *arrays[0].shape[1:]), dtype or torch_dtype(arrays[0]))
    rows, start = _rows(out), 0
    for a in arrays:
        rows[start: start + a.shape[0]] = _row(rows, a)
        start += a.shape[0]
    return out


def length_mask(lengths: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """[B, max_len] bool, True on the first lengths[i] positions of row i (out: a tensor to fill)."""
    lengths_np = np.asarray(list(lengths), dtype=np.int64)
    if out is None:
        out = new_tensor((len(lengths_np), int(lengths_np.max()) if len(lengths_np) else 0), torch.bool)
    np.less(np.arange(out.shape[1])[None, :], lengths_np[:, None], out=out.numpy())
    return out


def holds_rows(padded: torch.Tensor | None, arrays: Sequence[np.ndarray], multiple: int = 1) -> bool:
    """Whether `padded` is `pad_stack(arrays)` already (padded to `multiple`), each array being a view of its row."""
    if padded is None or tuple(padded.shape) != padded_shape(arrays, multiple) or padded.dtype != torch_dtype(arrays[0]):
        return False
    start, row = padded.data_ptr(), padded.stride(0) * padded.element_size()
    return all(a.shape[1:] == tuple(padded.shape[2:]) and a.ctypes.data == start + i * row and a.flags.c_contiguous for i, a in enumerate(arrays))


def collate_inputs(
    examples: Sequence[dict],
    pad_token_id: int = 0,
    extra: Mapping[str, Spec] | None = None,
    region_features: torch.Tensor | None = None,
    pad_to_multiple_of: int = 1,
) -> dict[str, torch.Tensor]:
    """The model inputs of a list of examples with keys input_ids [T], region_features [R, D],
    region_locations [R, 7]: input_ids, text_mask, region_features, region_locations, region_mask;
    and token_type_ids when every example has them (object tags), padded with type 0.
    Region features keep their dtype (float16 as extraction stores them): the model casts them to
    its own on its device, which also halves what reaches the device.

    extra: more tensors of the batch (name: (shape, dtype)), allocated with the inputs and left
    for the caller to fill. region_features: the examples' region features padded already (their
    arrays being views of its rows), used as it is. pad_to_multiple_of: the text and region
    lengths are padded up to a multiple of it."""
    text = [e["input_ids"] for e in examples]
    features = [e["region_features"] for e in examples]
    locations = [e["region_locations"] for e in examples]
    multiple = pad_to_multiple_of
    batch_size, text_len = padded_shape(text, multiple)
    regions = padded_shape(features, multiple)[1]
    filled = holds_rows(region_features, features, multiple)
    types = [e["token_type_ids"] for e in examples] if all("token_type_ids" in e for e in examples) else None
    batch = new_tensors({
        "input_ids": ((batch_size, text_len), torch.long),
        "text_mask": ((batch_size, text_len), torch.bool),
        **({"token_type_ids": ((batch_size, text_len), torch.long)} if types is not None else {}),
        **({} if filled else {"region_features": (padded_shape(features, multiple), torch_dtype(features[0]))}),
        "region_locations": (padded_shape(locations, multiple), torch.float32),
        "region_mask": ((batch_size, regions), torch.bool),
        **(extra or {}),
    })
    zeroed = fresh_memory_is_zeroed()
    pad_stack(text, pad_token_id, out=batch["input_ids"], out_zeroed=zeroed)
    length_mask([len(t) for t in text], out=batch["text_mask"])
    if types is not None:
        pad_stack(types, 0, out=batch["token_type_ids"], out_zeroed=zeroed)
    if filled:
        batch["region_features"] = region_features
    else:
        pad_stack(features, 0, out=batch["region_features"], out_zeroed=zeroed)
    pad_stack(locations, 0, out=batch["region_locations"], out_zeroed=zeroed)
    length_mask([len(f) for f in features], out=batch["region_mask"])
    return batch
