"""Vector prompt: the activation difference that a steering prompt makes.

For every input x (question/prompt/input items):
    diff(x) = activation(x with the steering prompt) - activation(x without it)
read at the last token of the input (where the next token is decided) or as the mean
over x's own tokens, per layer; the vector is the aggregate of the diffs (mean by
default). The steering prompt is given (`steering_prompt`), or written by the model
itself from a short `description` of the behaviour (greedy generation, recorded in
the vector's metadata). The vector then steers without the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


from steer.errors import ConfigError, DataError
from steer.methods import SteeringMethod
from steer.methods.aggregators import aggregate
from steer.prompts import render_prompt, uses_template
from steer.sites.read import Span, pooled_activations
from steer.sites.resolve import Site, SiteMap
from steer.vector import SteeringVector, VectorMeta

WRITER = ("Write one short instruction, in the second person, that tells an assistant to {description}. "
          "Reply with the instruction only.")


@dataclass
class VectorPromptHparams:
    steering_prompt: str | None = None
    description: str | None = None  # used when steering_prompt is null: the model writes the prompt
    placement: Literal["auto", "system", "prefix"] = "auto"  # auto: system with the chat template, else prefix
    layers: list[int] = field(default_factory=lambda: [12])
    site: str = "resid_post"
    token: Literal["last", "mean"] = "last"
    aggregator: Literal["mean_diff", "pca", "logistic"] = "mean_diff"
    batch_size: int = 8
    chat_template: bool = True
    max_items: int | None = None
    max_new_tokens: int = 40  # for writing the prompt from a description
    normalize: bool = False

    def validate(self) -> None:
        Site(self.site, 0)
        if not self.layers:
            raise ConfigError("vector_prompt: give at least one layer (layers: [12]).")

    def check_prompt(self) -> None:
        # not in validate(): the shipped YAML leaves both empty for the user to fill in
        if not (self.steering_prompt or self.description):
            raise ConfigError('vector_prompt: give steering_prompt="Be very positive." or '
                              'description="be very positive" (the model then writes the prompt).')


def write_steering_prompt(model: Any, tokenizer: Any, description: str, max_new_tokens: int) -> str:
    """The model's own instruction for `description`, greedy, first line."""
    from steer.generation import GenerationSettings, generate_texts  # local: generation imports steering

    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False, chat_template=True, batch_size=1)
    text = generate_texts(model, tokenizer, [WRITER.format(description=description)], settings, progress=False)[0]
    line = next((ln.strip().strip('"') for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise DataError(f"The model wrote an empty steering prompt for {description!r}; give steering_prompt=... instead.")
    return line


def input_spans(tokenizer: Any, prompt: str, steering_prompt: str | None, hp: VectorPromptHparams) -> Span:
    """The input as the model sees it, with or without the steering prompt; the span covers the prompt."""
    chat = uses_template(tokenizer, hp.chat_template)
    placement = ("system" if chat else "prefix") if hp.placement == "auto" else hp.placement
    if placement == "system" and not chat:
        raise ConfigError("vector_prompt: placement=system needs the chat template; use placement=prefix.")
    user = f"{steering_prompt} {prompt}" if steering_prompt and placement == "prefix" else prompt
    system = steering_prompt if placement == "system" else None
    text = render_prompt(tokenizer, user, chat=hp.chat_template, system_prompt=system)
    start = text.rindex(prompt)
    # last: up to the end of the text (the chat template's assistant header included)
    return Span(text, start, None if hp.token == "last" else start + len(prompt))


def make_vector_prompt(model: Any, tokenizer: Any, prompts: list[str], hp: VectorPromptHparams,
                       model_id: str | None = None) -> SteeringVector:
    hp.check_prompt()
    prompts = prompts[: hp.max_items] if hp.max_items else prompts
    if not prompts:
        raise DataError("vector_prompt needs prompts (--data FILE with question/prompt/input items).")
    steering_prompt = hp.steering_prompt or write_steering_prompt(model, tokenizer, hp.description or "", hp.max_new_tokens)
    site_map = SiteMap(model)
    sites = [site_map.normalise(Site(hp.site, layer)) for layer in hp.layers]
    templated = uses_template(tokenizer, hp.chat_template)
    common: dict[str, Any] = dict(templated=templated, pool=hp.token, batch_size=hp.batch_size)
    with_prompt = pooled_activations(model, tokenizer, [input_spans(tokenizer, p, steering_prompt, hp) for p in prompts],
                                     sites, desc="vector_prompt: with", **common)
    without = pooled_activations(model, tokenizer, [input_spans(tokenizer, p, None, hp) for p in prompts],
                                 sites, desc="vector_prompt: without", **common)
    directions = {s: aggregate(hp.aggregator, with_prompt[s], without[s], paired=True) for s in sites}
    if hp.normalize:
        directions = {s: d / d.norm().clamp_min(1e-12) for s, d in directions.items()}
    meta = VectorMeta(method="vector_prompt", model_id=model_id, hidden_size=site_map.hidden_size,
                      num_layers=site_map.num_layers,
                      extra={"hparams": hp.__dict__.copy(), "steering_prompt": steering_prompt, "items": len(prompts)})
    return SteeringVector(directions, meta)


METHOD = SteeringMethod(
    name="vector_prompt",
    hparams=VectorPromptHparams,
    make=make_vector_prompt,
    description="Vector prompt: activation difference between inputs with and without a steering prompt.",
    inputs=("prompts",),
)
