"""Greedy and beam search: hand-checkable step functions, and a tiny captioning model."""
import math

import pytest
import torch

from tiny import random_inputs, tiny_config
from vlbert import VLBertForCaptioning
from vlbert.tasks.caption.decoding import Decoding, banned_tokens, beam_search, generate, greedy_search

PAD, BOS, EOS, A, B = 0, 1, 2, 3, 4


def table_step(table: dict[tuple[int, ...], dict[int, float]], default: dict[int, float]):
    """A step function from next-token probabilities per generated prefix (without [CLS])."""
    def step(tokens: torch.Tensor) -> torch.Tensor:
        rows = []
        for prefix in tokens.tolist():
            probs = table.get(tuple(t for t in prefix[1:] if t != PAD), default)
            rows.append([math.log(probs[v]) if probs.get(v) else float("-inf") for v in range(5)])
        return torch.tensor(rows)
    return step


# greedy takes "a" (0.6), then "a" (0.4), then ends (0.5): p = 0.12; "b" then the end has p = 0.36
TABLE = {(): {A: 0.6, B: 0.4}, (A,): {A: 0.4, B: 0.3, EOS: 0.3}, (A, A): {EOS: 0.5, A: 0.25, B: 0.25},
         (B,): {EOS: 0.9, A: 0.05, B: 0.05}}
DEFAULT = {EOS: 0.9, A: 0.05, B: 0.05}


def test_greedy_by_hand():
    decoded = greedy_search(table_step(TABLE, DEFAULT), 1, BOS, EOS, max_length=10)
    assert decoded.tokens == [[A, A]]
    assert decoded.scores.item() == pytest.approx(math.log(0.6 * 0.4 * 0.5))


def test_beam_search_finds_what_greedy_misses():
    decoded = beam_search(table_step(TABLE, DEFAULT), 1, 2, BOS, EOS, max_length=10)
    assert decoded.tokens == [[B]]
    assert decoded.scores.item() == pytest.approx(math.log(0.4 * 0.9))


def test_length_penalty_divides_by_the_length_with_the_end_token():
    for penalty in (0.0, 1.0, 2.0):
        greedy = greedy_search(table_step(TABLE, DEFAULT), 1, BOS, EOS, 10, length_penalty=penalty)
        assert greedy.scores.item() == pytest.approx(math.log(0.6 * 0.4 * 0.5) / 3 ** penalty)
    # with penalty 2 long captions win: "a a" (3 tokens) over "b" (2 tokens)
    assert math.log(0.12) / 9 > math.log(0.36) / 4
    beam = beam_search(table_step(TABLE, DEFAULT), 1, 2, BOS, EOS, 10, length_penalty=2.0)
    assert beam.tokens == [[A, A]] and beam.scores.item() == pytest.approx(math.log(0.12) / 9)


def per_example_step(steps: list, beams: int):
    """Row b * beams + k asks example b's step function."""
    def step(tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([steps[row // beams](tokens[row:row + 1]) for row in range(len(tokens))])
    return step


def test_finished_examples_stop_and_max_length_cuts_the_others():
    ends_at_once = table_step({(): {EOS: 0.8, A: 0.2}}, {EOS: 0.9, A: 0.1})
    never_ends = table_step({}, {A: 0.5, B: 0.5})
    for beams in (1, 3):
        step = per_example_step([ends_at_once, never_ends], beams)
        decoded = (greedy_search(step, 2, BOS, EOS, max_length=4) if beams == 1 else
                   beam_search(step, 2, beams, BOS, EOS, max_length=4))
        assert decoded.tokens[0] == []  # the end token is not part of the caption
        assert len(decoded.tokens[1]) == 4 and set(decoded.tokens[1]) <= {A, B}
        assert decoded.scores[0].item() == pytest.approx(math.log(0.8))
        assert decoded.scores[1].item() == pytest.approx(4 * math.log(0.5))


def tiny_model(seed: int, objective: str = "masked") -> VLBertForCaptioning:
    torch.manual_seed(seed)
    return VLBertForCaptioning(tiny_config(initializer_range=0.5, caption_objective=objective)).eval()


def regions_of(seed: int, batch: int = 4) -> dict:
    inputs = random_inputs(batch=batch, regions=5, seed=seed)
    inputs["region_mask"][1, 3:] = False
    return {k: inputs[k] for k in ("region_features", "region_locations", "region_mask")}


@pytest.mark.parametrize("objective", ["masked", "next_token"])
def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_as_well(tiny_tokenizer, objective):
    for seed in range(3):
        model, regions = tiny_model(seed, objective), regions_of(seed)
        greedy = generate(model, regions, tiny_tokenizer, Decoding(beam_size=1, max_length=8))
        one = beam_search_with(model, regions, tiny_tokenizer, beams=1)
        assert one.tokens == greedy.tokens
        torch.testing.assert_close(one.scores, greedy.scores)
        for beams in (2, 4):
            wide = generate(model, regions, tiny_tokenizer, Decoding(beam_size=beams, max_length=8))
            assert bool((wide.scores >= greedy.scores - 1e-5).all()), (seed, beams)
        banned = set(banned_tokens(tiny_tokenizer, model.config.vocab_size))
        assert not banned & {t for row in greedy.tokens for t in row}
        assert all(len(row) <= 8 for row in greedy.tokens)


def beam_search_with(model, regions, tokenizer, beams: int):
    """The beam search function itself at a given width (generate takes greedy search for width 1)."""
    from vlbert.tasks.caption.decoding import model_step

    step = model_step(model, {k: v.repeat_interleave(beams, 0) for k, v in regions.items()}, tokenizer.mask_token_id,
                      banned_tokens(tokenizer, model.config.vocab_size))
    with torch.no_grad():
        return beam_search(step, len(regions["region_mask"]), beams, tokenizer.cls_token_id, tokenizer.sep_token_id,
                           max_length=8, pad_id=tokenizer.pad_token_id)


def test_a_batch_decodes_as_each_image_alone_and_deterministically(tiny_tokenizer):
    model, regions = tiny_model(5), regions_of(5)
    decoding = Decoding(beam_size=3, max_length=8, length_penalty=1.0)
    batched = generate(model, regions, tiny_tokenizer, decoding)
    assert generate(model, regions, tiny_tokenizer, decoding).tokens == batched.tokens
    for row in range(4):
        count = int(regions["region_mask"][row].sum())
        alone = generate(model, {k: v[row:row + 1, :count] for k, v in regions.items()}, tiny_tokenizer, decoding)
        assert alone.tokens[0] == batched.tokens[row]
        assert alone.scores[0].item() == pytest.approx(batched.scores[row].item(), abs=1e-4)


def test_the_masked_model_reads_the_word_at_an_appended_mask(tiny_tokenizer):
    """The first greedy word is the argmax over allowed ids at the [MASK] after [CLS]."""
    model, regions = tiny_model(1), regions_of(1, batch=2)
    first = generate(model, regions, tiny_tokenizer, Decoding(beam_size=1, max_length=1))
    ids = torch.tensor([[tiny_tokenizer.cls_token_id, tiny_tokenizer.mask_token_id]] * 2)
    with torch.no_grad():
        logits = model(ids, torch.ones_like(ids, dtype=torch.bool), **regions, positions=torch.tensor([1, 1])).logits
    logits[:, banned_tokens(tiny_tokenizer, model.config.vocab_size)] = float("-inf")
    expected = logits.argmax(-1).tolist()
    assert [row[0] if row else tiny_tokenizer.sep_token_id for row in first.tokens] == expected


def test_decoding_settings_are_checked(tiny_tokenizer):
    with pytest.raises(ValueError, match="beam_size"):
        Decoding(beam_size=0)
    model, regions = tiny_model(0), regions_of(0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        generate(model, regions, tiny_tokenizer, Decoding(max_length=63))
