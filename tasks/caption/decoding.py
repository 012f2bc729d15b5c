"""Caption decoding: greedy and beam search over a step function, batched, deterministic.

A step function maps the prefixes so far, tokens [N, t] ([CLS] first), to next-token
log-probabilities [N, V]. The searches know nothing of the model: `model_step` makes one from a
VLBertForCaptioning and the regions of each row, and tests use hand-made ones.

Scores are sums of log-probabilities divided by length ** length_penalty, length counting the
generated tokens with the end token (length_penalty 0: the plain sum; 1: the mean per token, as
transformers' `length_penalty`). A hypothesis that has produced the end token is finished: it is
kept in its beam with its score frozen, competing with the live ones on that normalised score, so
a beam of size 1 is exactly greedy search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from vlbert.modeling.caption import VLBertForCaptioning

StepFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Decoding:
    """How captions are generated.

    Args:
        beam_size: hypotheses kept per image (1: greedy search).
        max_length: most generated tokens per caption, the end token included.
        length_penalty: scores are sum(log p) / length ** length_penalty (0: favours short captions;
            1: the mean log-probability per token).
    """

    beam_size: int = 1
    max_length: int = 20
    length_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.max_length < 1:
            raise ValueError(f"decoding needs beam_size >= 1 and max_length >= 1, got {self.beam_size} and {self.max_length}")


@dataclass
class Decoded:
    """The best hypothesis per example: its tokens (without [CLS], up to and without the end token)
    and its normalised score [B]."""

    tokens: list[list[int]]
    scores: torch.Tensor


def normalised(raw: torch.Tensor, lengths: torch.Tensor, length_penalty: float) -> torch.Tensor:
    return raw if length_penalty == 0 else raw / lengths.clamp_min(1).to(raw.dtype) ** length_penalty


def strip(sequence: Sequence[int], eos_id: int) -> list[int]:
    """A generated sequence ([CLS] first) up to its first end token."""
    out = []
    for token in list(sequence)[1:]:
        if token == eos_id:
            break
        out.append(int(token))
    return out


def greedy_search(step: StepFn, batch_size: int, bos_id: int, eos_id: int, max_length: int,
                  length_penalty: float = 0.0, pad_id: int = 0, device: torch.device | str = "cpu") -> Decoded:
    """The most likely next token at every step, until each example has ended or max_length."""
    tokens = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    raw = torch.zeros(batch_size, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
    for _ in range(max_length):
        best, token = step(tokens).float().max(-1)
        raw = raw + torch.where(finished, torch.zeros_like(best), best)
        lengths = lengths + (~finished).long()
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        finished = finished | (token == eos_id)
        tokens = torch.cat([tokens, token[:, None]], dim=1)
        if bool(finished.all()):
            break
    return Decoded([strip(row, eos_id) for row in tokens.tolist()], normalised(raw, lengths, length_penalty))


def beam_search(step: StepFn, batch_size: int, beam_size: int, bos_id: int, eos_id: int, max_length: int,
                length_penalty: float = 0.0, pad_id: int = 0, device: torch.device | str = "cpu") -> Decoded:
    """Beam search over batch x beams rows (row b * K + k is beam k of example b): every step
    scores each live beam's continuations and each finished beam as it is, and keeps the K best
    by normalised score per example. Ends when every beam has ended, or at max_length."""
    batch, beams = batch_size, beam_size
    tokens = torch.full((batch * beams, 1), bos_id, dtype=torch.long, device=device)
    raw = torch.zeros(batch, beams, device=device)
    raw[:, 1:] = float("-inf")  # the beams start identical: expand only the first
    lengths = torch.zeros(batch, beams, dtype=torch.long, device=device)
    finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * beams
    for _ in range(max_length):
        logp = step(tokens).float()
        vocab = logp.shape[-1]
        logp = logp.view(batch, beams, vocab)
        frozen = torch.full((vocab,), float("-inf"), device=device)
        frozen[pad_id] = 0.0  # a finished beam's one continuation: padding, at no cost
        logp = torch.where(finished[..., None], frozen, logp)
        candidate_raw = (raw[..., None] + logp).view(batch, beams * vocab)
        candidate_lengths = (lengths + (~finished).long())[..., None].expand(batch, beams, vocab).reshape(batch, beams * vocab)
        top = normalised(candidate_raw, candidate_lengths, length_penalty).topk(beams, dim=1)
        beam, token = top.indices // vocab, top.indices % vocab
        raw, lengths = candidate_raw.gather(1, top.indices), candidate_lengths.gather(1, top.indices)
        finished = finished.gather(1, beam) | (token == eos_id)
        tokens = torch.cat([tokens[(offsets + beam).view(-1)], token.view(-1, 1)], dim=1)
        if bool(finished.all()):
            break
    scores = normalised(raw, lengths, length_penalty)
    best = scores.argmax(1)
    rows = tokens.view(batch, beams, -1)[torch.arange(batch, device=device), best]
    return Decoded([strip(row, eos_id) for row in rows.tolist()], scores[torch.arange(batch, device=device), best])


def banned_tokens(tokenizer, vocab_size: int) -> list[int]:
    """Ids a caption never contains: padding, [CLS], [MASK], [UNK] and ids past the tokenizer."""
    ids = {tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.mask_token_id, tokenizer.unk_token_id}
    return sorted({i for i in ids if i is not None} | set(range(len(tokenizer), vocab_size)))


def model_step(model: VLBertForCaptioning, regions: dict[str, torch.Tensor], mask_token_id: int,
               banned: Sequence[int]) -> StepFn:
    """The step function of a captioning model on fixed regions (one row of `regions` per
    decoded row): the prefix is the text, followed by a [MASK] for the "masked" objective, and the
    last text position's logits (banned ids excluded) give the log-probabilities."""
    append_mask = model.objective == "masked"

    def step(tokens: torch.Tensor) -> torch.Tensor:
        if append_mask:
            tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], mask_token_id)], dim=1)
        positions = torch.full((len(tokens),), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        logits = model(tokens, torch.ones_like(tokens, dtype=torch.bool), regions["region_features"],
                       regions["region_locations"], regions["region_mask"], positions=positions).logits.float()
        logits[:, list(banned)] = float("-inf")
        return logits.log_softmax(-1)

    return step


@torch.no_grad()
def generate(model: VLBertForCaptioning, regions: dict[str, torch.Tensor], tokenizer, decoding: Decoding) -> Decoded:
    """Captions (token ids) for a batch of images: regions holds region_features [B, R, D],
    region_locations [B, R, 7] and region_mask [B, R]."""
    longest = decoding.max_length + 1 + (model.objective == "masked")  # [CLS] and the [MASK] read
    if longest > model.config.max_position_embeddings:
        raise ValueError(f"decoding.max_length {decoding.max_length} needs {longest} text positions but the model has "
                         f"max_position_embeddings={model.config.max_position_embeddings}")
    batch = len(regions["region_mask"])
    beams = decoding.beam_size
    rows = {k: regions[k].repeat_interleave(beams, dim=0) if beams > 1 else regions[k]
            for k in ("region_features", "region_locations", "region_mask")}
    step = model_step(model, rows, tokenizer.mask_token_id, banned_tokens(tokenizer, model.config.vocab_size))
    device = regions["region_mask"].device
    common = dict(bos_id=tokenizer.cls_token_id, eos_id=tokenizer.sep_token_id, max_length=decoding.max_length,
                  length_penalty=decoding.length_penalty, pad_id=tokenizer.pad_token_id, device=device)
    if beams == 1:
        return greedy_search(step, batch, **common)
    return beam_search(step, batch, beams, **common)


def caption_texts(tokens: list[list[int]], tokenizer) -> list[str]:
    return [tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for ids in tokens]
