"""Batched generation with Hugging Face `generate`, steered or not."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from steer.errors import SteerError
from steer.prompts import encode_batch, max_positions, pad_id, render_prompt, uses_template
from steer.application import SteerLike, steering


@dataclass
class GenerationSettings:
    """Hugging Face `generate` arguments (same names), plus batching and chat formatting."""

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = 0
    batch_size: int = 8
    chat_template: bool = True
    system_prompt: str | None = None
    # Contrastive decoding (steer.decoding): "plain", "dola" or "deco"; its hyper-parameters
    # are the mode's defaults < shipped/`decoding_config` YAML < `decoding_overrides`.
    decoding: str = "plain"
    decoding_config: str | None = None
    decoding_overrides: dict[str, Any] = field(default_factory=dict)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:  # greedy decoding warns about sampling-only settings
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
            if self.top_k is not None:
                kwargs["top_k"] = self.top_k
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings | None = None,
    *,
    steers: Sequence[SteerLike] = (),
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Completions of `prompts` (new text only), in order."""
    settings = settings or GenerationSettings()
    if settings.max_new_tokens < 1:
        raise SteerError("max_new_tokens must be at least 1.")
    templated = uses_template(tokenizer, settings.chat_template)
    texts = [
        render_prompt(tokenizer, p, chat=settings.chat_template, system_prompt=settings.system_prompt) for p in prompts
    ]
    limit = max_positions(model)
    prompt_limit = limit - settings.max_new_tokens if limit else None
    device = next(model.parameters()).device
    outputs: list[str] = []
    context = steering(model, *steers, tokenizer=tokenizer) if steers else nullcontext()
    from steer.decoding.base import settings_decoding  # local: decoding imports are only paid when used
    from steer.sites.backend import generate as backend_generate

    decode_context, decode_kwargs = settings_decoding(model, settings)
    # decoding outside steering: steering's hooks are then the innermost (they run first)
    with decode_context, context, torch.inference_mode(), tqdm(total=len(texts), desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(texts), settings.batch_size):
            batch = encode_batch(tokenizer, texts[start : start + settings.batch_size], templated=templated,
                                 limit=prompt_limit, device=device)
            if settings.seed is not None:
                torch.manual_seed(settings.seed + start)
            # through the backend layer: torch hooks act inside model.generate, nnsight blocks need nnsight's run
            generated = backend_generate(model, batch, **{**decode_kwargs, **settings.generate_kwargs()},
                                         pad_token_id=pad_id(tokenizer))
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
            bar.update(new_tokens.shape[0])
    return [o.strip() for o in outputs]
