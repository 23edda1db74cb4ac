"""Context prefixes that keys and values are averaged over (ROME's "context templates").

A few short texts sampled from the model itself, so the edit holds when the subject
appears after some unrelated text, not only at the start. They are generated once per
Editor (memoised on its `EditContext`, never in a module-level cache), with a fixed
seed, before the first edit changes the model.
"""

from __future__ import annotations

import torch

from steer.edit.context import EditContext
from steer.prompts import encode_batch, pad_id
from steer.sites.backend import generate

_STARTERS = ("The", "Therefore", "Because", "I", "You")


def context_prefixes(ctx: EditContext, lengths: list[list[int]], seed: int) -> list[str]:
    """[''] plus `count` sampled prefixes of `tokens` new tokens for each [tokens, count]."""
    key = (tuple(tuple(p) for p in lengths), seed)
    if key in ctx.templates:
        return ctx.templates[key]
    prefixes = [""]
    model, tokenizer = ctx.sites.model, ctx.tokenizer
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []), torch.no_grad():
        torch.manual_seed(seed)
        for tokens, count in lengths:
            starters = [_STARTERS[i % len(_STARTERS)] for i in range(count)]
            batch = encode_batch(tokenizer, starters, templated=False, device=ctx.device)
            # through the active backend (model.generate with torch hooks; nnsight's generate inside
            # an nnsight editing block, where a plain model.generate is refused)
            out = generate(model, batch, do_sample=True, top_k=5, max_new_tokens=tokens, pad_token_id=pad_id(tokenizer))
            width = batch["input_ids"].shape[1]
            for starter, row in zip(starters, out):
                text = starter + tokenizer.decode(row[width:], skip_special_tokens=True)
                # braces would break str.format elsewhere; newlines would split the prompt
                text = text.replace("{", " ").replace("}", " ").replace("\n", " ").strip()
                prefixes.append(text + ". ")
    ctx.templates[key] = prefixes
    return prefixes
