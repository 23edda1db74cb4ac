"""CAA A/B behaviour probability (Rimsky et al., 2024).

For each item the model sees the question and an assistant turn that starts with "(";
the score is p(matching letter) / (p(A) + p(B)) for the next token, averaged over items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steer.errors import DataError
from steer.io.datasets import ABItem, ab_letter
from steer.prompts import encode_batch, forward_inputs, instruction_suffix_length, render_prompt, uses_template
from steer.application import Steer, steering
from steer.sites.backend import forward as backend_forward

ANSWER_PREFIX = "("


def _letter_token(tokenizer: Any, context: str, letter: str, templated: bool) -> int:
    """The token id the model emits for `letter` right after `context` (which ends in '(')."""
    base = tokenizer(context, add_special_tokens=not templated)["input_ids"]
    full = tokenizer(context + letter, add_special_tokens=not templated)["input_ids"]
    if len(full) != len(base) + 1 or full[: len(base)] != base:
        raise DataError(
            f"The tokenizer merges {letter!r} with the preceding '(' so the A/B letter has no token of its own; "
            "this model cannot be scored with the A/B protocol."
        )
    return int(full[-1])


@dataclass
class ABResult:
    multiplier: float
    mean_p_matching: float
    per_item: list[float] = field(default_factory=list)


def ab_scores(
    model: Any,
    tokenizer: Any,
    items: Sequence[ABItem],
    *,
    steers: Sequence[Steer] = (),
    chat_template: bool = True,
    system_prompt: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> list[float]:
    """p(matching) normalised over the two answer letters, one per item."""
    if not items:
        raise DataError("The A/B dataset is empty.")
    templated = uses_template(tokenizer, chat_template)
    contexts = [
        render_prompt(tokenizer, item.question, chat=chat_template, system_prompt=system_prompt,
                      assistant_prefix=ANSWER_PREFIX)
        for item in items
    ]
    letters = sorted({ab_letter(item.matching) for item in items} | {ab_letter(item.not_matching) for item in items})
    token_of = {letter: _letter_token(tokenizer, contexts[0], letter, templated) for letter in letters}
    # Steer from the end of the instruction on, as CAA does: the assistant header plus "(".
    prefix_tokens = len(tokenizer(ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    suffix = (instruction_suffix_length(tokenizer) if templated else 0) + prefix_tokens
    device = next(model.parameters()).device
    scores: list[float] = []
    with steering(model, *steers, instruction_suffix=suffix), torch.inference_mode(), tqdm(
        total=len(items), desc="A/B", disable=not progress, leave=False
    ) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch = encode_batch(tokenizer, contexts[start : start + batch_size], templated=templated, device=device)
            # through the backend layer: a steering block may run on nnsight (--backend nnsight)
            logits = backend_forward(model, forward_inputs(batch), use_cache=False).logits[:, -1, :].float()
            for row, item in enumerate(chunk):
                match_id = token_of[ab_letter(item.matching)]
                other_id = token_of[ab_letter(item.not_matching)]
                pair = torch.softmax(logits[row, [match_id, other_id]], dim=0)
                scores.append(float(pair[0]))
            bar.update(len(chunk))
    return scores


def ab_sweep(
    model: Any,
    tokenizer: Any,
    items: Sequence[ABItem],
    base: Sequence[Steer],
    multipliers: Sequence[float],
    **kwargs: Any,
) -> list[ABResult]:
    """Score the items with the first steer's multiplier set to each value in turn."""
    results = []
    for multiplier in multipliers:
        steers = [Steer(base[0].vector, multiplier, "after_instruction", base[0].layer_multipliers), *base[1:]]
        per_item = ab_scores(model, tokenizer, items, steers=steers, **kwargs)
        results.append(ABResult(float(multiplier), sum(per_item) / len(per_item), per_item))
    return results
