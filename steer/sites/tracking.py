"""Where a forward pass is in its sequence, from what every transformers release gives.

Position policies ("prompt", "generated", "after_instruction") need to know which
columns of the left-padded sequence a forward pass covers, and whether it starts a
new sequence (a prefill) or continues one (a decoding step with the KV cache).

Keyword names are not a stable interface: transformers 4.x passes the cache as
`past_key_values` with a `cache_position`, 5.24 passes it as `cache=` with neither
`cache_position` nor (for an unpadded prompt) an attention mask. So nothing here reads
a keyword by name except the inputs themselves. The number of tokens already in the
sequence is read from:

1. a cache object among the call's arguments, whatever its keyword: anything with the
   public `get_seq_length()` of transformers' `Cache` (or a legacy tuple of per-layer
   (key, value) tensors);
2. else a 2-D attention mask wider than the input (it covers past plus new tokens);
3. else nothing is cached: the pass starts a sequence.

A pass starts a new sequence when it starts at column 0, or when it does not continue
where this context's previous pass on the model ended (a different batch, a cache
reused from elsewhere). That is steer's own count, kept per context by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from steer.errors import SteerError

POSITION_POLICIES: tuple[str, ...] = ("all", "prompt", "generated", "after_instruction")


@dataclass
class ForwardState:
    """One forward pass, as the position policies see it.

    Columns index the left-padded sequence (prompt plus generated tokens): left padding
    aligns every row's prompt end at column `prompt_length`.
    """

    columns: torch.Tensor | None = None  # [L] columns of the tokens in this pass
    prompt_length: int = 0  # padded prompt length, set when the sequence started
    pad_offsets: torch.Tensor | None = None  # [B] left pads per row
    is_prefill: bool = True
    batch: int = 0
    next_start: int = 0  # the column the next pass of this sequence starts at
    _masks: dict[tuple[str, int], torch.Tensor | None] = field(default_factory=dict, repr=False)

    def position_mask(self, policy: str, instruction_suffix: int = 1) -> torch.Tensor | None:
        """[1, L, 1] mask of positions the policy acts on, or None for all positions.

        `instruction_suffix` is how many prompt tokens close the instruction (the chat
        template's assistant header); `after_instruction` acts from there onward.
        """
        if policy == "all":
            return None  # pads are masked out of attention, so adding there is harmless
        key = (policy, instruction_suffix)
        mask = self._masks.get(key)
        if mask is None:
            if self.columns is None:
                raise SteerError("A position policy was used outside a tracked forward pass.")
            if policy == "prompt":
                selected = self.columns < self.prompt_length
            elif policy == "generated":
                # the last prompt token produces the first new token, so it counts
                selected = self.columns >= self.prompt_length - 1
            elif policy == "after_instruction":
                selected = self.columns >= self.prompt_length - max(instruction_suffix, 1)
            else:
                raise SteerError(f"Unknown position policy {policy!r}; use one of {POSITION_POLICIES}.")
            mask = selected.view(1, -1, 1)
            self._masks[key] = mask
        return mask


def input_shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int, torch.device]:
    """(batch, new tokens, device) of a causal LM call, from input_ids or inputs_embeds."""
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0]), int(value.shape[1]), value.device
    raise SteerError("steer could not find input_ids or inputs_embeds in the model call; "
                     "call the model with input_ids=... or inputs_embeds=....")


def _cache_length(value: Any) -> int | None:
    """Tokens held by a KV cache object, or None when `value` is not one."""
    get_seq_length = getattr(value, "get_seq_length", None)
    if callable(get_seq_length) and not isinstance(value, torch.Tensor):
        try:
            return int(get_seq_length())
        except (TypeError, ValueError, IndexError, AttributeError):
            return None
    # legacy cache: a tuple of per-layer (key, value) tensors [B, heads, seq, head_dim]
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], (tuple, list)) and value[0]:
        first = value[0][0]
        if isinstance(first, torch.Tensor) and first.dim() == 4:
            return int(first.shape[-2])
    return None


def past_length(args: Iterable[Any], kwargs: dict[str, Any], new_tokens: int) -> tuple[int, torch.Tensor | None]:
    """(tokens already in the sequence, the 2-D attention mask or None) for one call."""
    mask = kwargs.get("attention_mask")
    mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
    for value in (*kwargs.values(), *args):
        length = _cache_length(value)
        if length is not None:
            return length, mask
    if mask is not None and mask.shape[1] > new_tokens:
        return int(mask.shape[1]) - new_tokens, mask
    return 0, mask


def next_state(previous: ForwardState | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ForwardState:
    """The state of this pass, given the previous pass's state in the same context."""
    batch, length, device = input_shape(args, kwargs)
    start, mask = past_length(args, kwargs, length)
    continues = (previous is not None and start > 0 and start == previous.next_start
                 and batch == previous.batch)
    if continues:
        assert previous is not None
        prompt_length, pad_offsets = previous.prompt_length, previous.pad_offsets
    else:
        prompt_length = start + length
        if mask is not None and mask.shape[1] == start + length:
            pad_offsets = (mask.cumsum(dim=1) == 0).sum(dim=1)
        else:
            pad_offsets = torch.zeros(batch, dtype=torch.long, device=device)
    return ForwardState(
        columns=torch.arange(start, start + length, device=device),
        prompt_length=prompt_length,
        pad_offsets=pad_offsets,
        is_prefill=not continues,
        batch=batch,
        next_start=start + length,
    )
