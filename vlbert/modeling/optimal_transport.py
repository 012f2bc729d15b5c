"""Word-region alignment (UNITER's WRA): the optimal-transport distance between a text's contextual
word embeddings and its regions', small for matched image-text pairs and large for mismatched ones.

The transport plan comes from IPOT (Xie et al., 2018, "A fast proximal point method for computing
exact Wasserstein distance"): proximal point iterations, each a Sinkhorn-like scaling of the
previous plan by exp(-cost / beta), which converge to the exact optimal plan (not an entropic
approximation) for any beta. As in UNITER the plan is not differentiated (it is computed under
no_grad); the distance <cost, plan> is, through the cost. Padding has no mass and no cost.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_cost(words: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of every word with every region: [B, T, H] x [B, R, H] -> [B, T, R] in [0, 2]."""
    return 1.0 - F.normalize(words.float(), dim=-1) @ F.normalize(regions.float(), dim=-1).transpose(1, 2)


@torch.no_grad()
def ipot_plan(cost: torch.Tensor, word_mask: torch.Tensor, region_mask: torch.Tensor, beta: float = 0.5,
              iterations: int = 50, inner_steps: int = 1) -> torch.Tensor:
    """The transport plan [B, T, R] between uniform masses on the real words (word_mask [B, T]) and
    the real regions (region_mask [B, R]): each row sums to 1 / words, each column to 1 / regions;
    padded rows and columns are 0. An example without words or regions gets an all-zero plan."""
    word_mask, region_mask = word_mask.bool(), region_mask.bool()
    words = word_mask.sum(1, keepdim=True).clamp(min=1).to(cost.dtype)  # [B, 1]
    regions = region_mask.sum(1, keepdim=True).clamp(min=1).to(cost.dtype)
    word_mass = word_mask.to(cost.dtype) / words  # [B, T]
    region_mass = region_mask.to(cost.dtype) / regions  # [B, R]
    joint = (word_mask[:, :, None] & region_mask[:, None, :]).to(cost.dtype)
    kernel = torch.exp(-cost / beta) * joint
    plan = joint.clone()
    sigma = region_mass.clone()
    delta = word_mass.clone()
    for _ in range(iterations):
        scaled = kernel * plan
        for _ in range(inner_steps):
            delta = _divide(word_mass, torch.einsum("btr,br->bt", scaled, sigma))
            sigma = _divide(region_mass, torch.einsum("btr,bt->br", scaled, delta))
        plan = delta[:, :, None] * scaled * sigma[:, None, :]
    return plan


def _divide(mass: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """mass / total where there is mass (0 on padding, where both are 0)."""
    return torch.where(mass > 0, mass / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(mass))


def transport_distance(words: torch.Tensor, regions: torch.Tensor, word_mask: torch.Tensor, region_mask: torch.Tensor,
                       beta: float = 0.5, iterations: int = 50) -> torch.Tensor:
    """The approximate Wasserstein distance [B] between each example's words [B, T, H] and regions
    [B, R, H] under the cosine cost; differentiable in the embeddings."""
    cost = cosine_cost(words, regions)
    joint = word_mask.bool()[:, :, None] & region_mask.bool()[:, None, :]
    cost = cost.masked_fill(~joint, 0.0)
    plan = ipot_plan(cost.detach(), word_mask, region_mask, beta, iterations)
    return (cost * plan).sum((1, 2))


def wra_loss(distances: torch.Tensor, matched: torch.Tensor) -> torch.Tensor:
    """UNITER's WRA loss: the mean over pairs of +distance for matched pairs and -distance for
    mismatched ones (minimised: matched texts move towards their regions, mismatched ones away)."""
    sign = torch.where(matched.bool(), 1.0, -1.0).to(distances.dtype)
    return (sign * distances).sum() / max(distances.numel(), 1)
