"""Turning user prompts into model inputs: chat templates, left padding, length checks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch

from steer.errors import DataError

_SENTINEL = "\u2063steer-instruction-end\u2063"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(
    tokenizer: Any,
    prompt: str,
    *,
    chat: bool = True,
    system_prompt: str | None = None,
    assistant_prefix: str = "",
) -> str:
    """The text the model sees: the chat template (when the model has one and `chat`) or the prompt."""
    if not (chat and has_chat_template(tokenizer)):
        return prompt + assistant_prefix
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def uses_template(tokenizer: Any, chat: bool) -> bool:
    return chat and has_chat_template(tokenizer)


@lru_cache(maxsize=32)
def _suffix_length(tokenizer: Any) -> int:
    text = render_prompt(tokenizer, _SENTINEL)
    end = text.rindex(_SENTINEL) + len(_SENTINEL)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return sum(1 for start, _ in encoded["offset_mapping"] if start >= end)


def instruction_suffix_length(tokenizer: Any) -> int:
    """How many tokens of a chat-formatted prompt follow the user's message (the assistant header).

    The `after_instruction` position policy steers from there on, as CAA does.
    1 when the tokenizer has no chat template (steer from the last prompt token).
    """
    if not has_chat_template(tokenizer):
        return 1
    try:
        return max(_suffix_length(tokenizer), 1)
    except (TypeError, ValueError, NotImplementedError):  # slow tokenizers have no offsets
        return 1


def max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def pad_id(tokenizer: Any) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


def encode_batch(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    templated: bool,
    limit: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize and left-pad `texts` without changing the tokenizer's own settings.

    Templated text already has its special tokens; plain text gets the tokenizer's
    (e.g. BOS). Left padding aligns the ends so generation continues every row at once.
    """
    if not texts:
        raise DataError("Nothing to encode: the list of prompts is empty.")
    rows = [tokenizer(t, add_special_tokens=not templated)["input_ids"] for t in texts]
    for index, row in enumerate(rows):
        if not row:
            raise DataError(f"Prompt {index} is empty after tokenization.")
        if limit is not None and len(row) > limit:
            raise DataError(
                f"Prompt {index} is {len(row)} tokens long; the model takes at most {limit}. "
                "Shorten it or lower --max-new-tokens."
            )
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token.

    Plain forward calls need these with left padding: models with absolute position
    embeddings (GPT-2) would otherwise shift every padded row. `generate` does the same.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def forward_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """input_ids + attention_mask + position_ids for a single forward pass over a padded batch."""
    return {**batch, "position_ids": position_ids_for(batch["attention_mask"])}
