"""Recall@K for image-text retrieval from one score matrix.

The score matrix is ``[n_images, n_captions]`` (higher = better match) and each caption
belongs to exactly one image (``caption_image[c]``); an image may own several captions
(5 in Flickr30K / COCO).

* image -> text (i2t, "text retrieval"): an image query is a hit at K when any of its own
  captions is among the top K captions.
* text -> image (t2i, "image retrieval"): a caption query is a hit at K when its image is
  among the top K images.

Ties. UNITER (``torch.topk``) and the VSE++ / SCAN evaluation (``numpy.argsort``) leave
the order of equal scores to the sorting routine, so their figures depend on it. Here the
rule is fixed and pessimistic: a query's rank is the number of *wrong* candidates scoring
``>=`` its best right candidate (ties are broken against the query; other right
candidates never push it down). A model that gives every pair the same score therefore
scores zero, never 100%. Without ties this is exactly the 0-based position of the first
right candidate in the sorted list, which is what UNITER and VSE++ compute.

Recalls are returned in percent, like the papers and UNITER's logs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _check(scores: torch.Tensor, caption_image: torch.Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_images, n_captions], got shape {tuple(scores.shape)}")
    n_images, n_captions = scores.shape
    if caption_image.shape != (n_captions,):
        raise ValueError(
            f"caption_image must have one image index per caption ({n_captions}), got shape {tuple(caption_image.shape)}"
        )
    if n_captions and (int(caption_image.min()) < 0 or int(caption_image.max()) >= n_images):
        raise ValueError(f"caption_image holds indices outside [0, {n_images})")
    counts = torch.bincount(caption_image, minlength=n_images)
    if n_images and int(counts.min()) == 0:
        lonely = torch.nonzero(counts == 0).flatten()[:10].tolist()
        raise ValueError(f"images without any caption cannot be evaluated (image rows {lonely} ...); drop them")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf")


@torch.no_grad()
def retrieval_ranks(
    scores: torch.Tensor, caption_image: torch.Tensor, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of the best right answer for every query, ties counted against it.

    scores [I, C], caption_image [C] (long, image row of each caption).
    Returns (i2t_ranks [I], t2i_ranks [C]). ``chunk_size`` bounds the temporary
    boolean matrix to ``chunk_size`` rows or columns at a time (COCO 5K: 5K x 25K).
    """
    caption_image = caption_image.to(device=scores.device, dtype=torch.long)
    _check(scores, caption_image)
    n_images, n_captions = scores.shape
    columns = torch.arange(n_captions, device=scores.device)
    right = scores[caption_image, columns]  # [C] score of each caption with its own image

    # text -> image: images (other than the right one) scoring >= the right image.
    t2i = torch.empty(n_captions, dtype=torch.long, device=scores.device)
    for start in range(0, n_captions, chunk_size):
        block = scores[:, start : start + chunk_size]
        t2i[start : start + chunk_size] = (block >= right[start : start + chunk_size]).sum(0) - 1

    # image -> text: captions of other images scoring >= the image's best own caption.
    best = torch.full((n_images,), -math.inf, dtype=scores.dtype, device=scores.device)
    best = best.scatter_reduce(0, caption_image, right, reduce="amax")
    own_at_or_above = torch.zeros(n_images, dtype=torch.long, device=scores.device)
    own_at_or_above.scatter_add_(0, caption_image, (right >= best[caption_image]).long())
    i2t = torch.empty(n_images, dtype=torch.long, device=scores.device)
    for start in range(0, n_images, chunk_size):
        rows = slice(start, start + chunk_size)
        i2t[rows] = (scores[rows] >= best[rows, None]).sum(1)
    i2t -= own_at_or_above
    return i2t, t2i


def recall_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Percent of queries whose rank is below K, for each K."""
    if ranks.numel() == 0:
        raise ValueError("no queries to evaluate")
    return {k: 100.0 * float((ranks < k).float().mean()) for k in ks}


def retrieval_recall(
    scores: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall@K in both directions and their means (percent).

    Keys: ``i2t_r{K}``, ``t2i_r{K}``, ``i2t_mean``, ``t2i_mean`` and ``r_mean`` (the mean of
    all six numbers for the default K = 1, 5, 10, the "RSUM / 6" of the papers).
    """
    i2t_ranks, t2i_ranks = retrieval_ranks(scores, caption_image)
    i2t = recall_from_ranks(i2t_ranks, ks)
    t2i = recall_from_ranks(t2i_ranks, ks)
    out = {f"i2t_r{k}": v for k, v in i2t.items()} | {f"t2i_r{k}": v for k, v in t2i.items()}
    out["i2t_mean"] = sum(i2t.values()) / len(ks)
    out["t2i_mean"] = sum(t2i.values()) / len(ks)
    out["r_mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2
    return out


def chance_recall(caption_image: torch.Tensor, n_images: int, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Expected recall (percent) of a scorer that ranks candidates uniformly at random.

    t2i: K / n_images. i2t for an image with m of the n captions:
    1 - C(n - m, K) / C(n, K), averaged over images.
    """
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    n_captions = int(caption_image.numel())
    owned = torch.bincount(caption_image, minlength=n_images).tolist()
    out: dict[str, float] = {}
    for k in ks:
        miss = [math.comb(n_captions - m, k) / math.comb(n_captions, k) for m in owned]
        out[f"i2t_r{k}"] = 100.0 * (1.0 - sum(miss) / n_images)
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    return out
