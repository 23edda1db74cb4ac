"""CAA: Contrastive Activation Addition (Rimsky et al., 2024).

vector[site] = mean over pairs of (activation on the behaviour-matching input
             - activation on the non-matching input)

Where the activation is taken:
- A/B items: at the answer letter of "(A)" / "(B)" in the assistant turn, as in the paper;
  with token=mean or last, over the option's text after the bare question instead
  (for models too small to tie a letter to its option);
- prompt/completion pairs: mean over the completion's tokens (or its last token);
- two unpaired sets of texts: mean over each text's tokens (or last), then
  mean(positive) - mean(negative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from steer.errors import ConfigError, DataError
from steer.io.datasets import ABItem, ContrastiveData, ab_as_pair, ab_letter
from steer.methods import SteeringMethod
from steer.methods.aggregators import aggregate
from steer.prompts import render_prompt, uses_template
from steer.sites.read import Span, pooled_activations
from steer.sites.resolve import Site, SiteMap
from steer.vector import SteeringVector, VectorMeta


@dataclass
class CAAHparams:
    layers: list[int] = field(default_factory=lambda: [12])
    site: str = "resid_post"
    # where in each text the activation is read: 'auto' = answer letter for A/B data,
    # mean over the completion (or the whole text) otherwise; 'mean'/'last' on A/B data
    # read the chosen option's text as the completion of the question without its choices
    token: Literal["auto", "answer", "mean", "last"] = "auto"
    batch_size: int = 8
    chat_template: bool = True
    system_prompt: str | None = None
    max_items: int | None = None  # use only the first N items
    normalize: bool = False  # scale each layer's direction to unit norm
    # how activations become a direction: mean_diff (CAA), pca or logistic (steer.methods.aggregators)
    aggregator: Literal["mean_diff", "pca", "logistic"] = "mean_diff"

    def validate(self) -> None:
        Site(self.site, 0)  # raises, naming the closest site, unless it is a per-layer activation site
        if not self.layers:
            raise ConfigError("caa: give at least one layer (layers: [12]).")
        if self.batch_size < 1:
            raise ConfigError("caa: batch_size must be at least 1.")


def _ab_spans(tokenizer: Any, item: ABItem, hp: CAAHparams) -> tuple[Span, Span]:
    spans = []
    for answer in (item.matching, item.not_matching):
        prefix = render_prompt(tokenizer, item.question, chat=hp.chat_template, system_prompt=hp.system_prompt)
        text = prefix + answer
        letter_at = len(prefix) + answer.index(ab_letter(answer))
        spans.append(Span(text, letter_at, letter_at + 1))
    return spans[0], spans[1]


def _pair_spans(tokenizer: Any, prompt: str, completion: str, hp: CAAHparams, templated: bool) -> Span:
    prefix = render_prompt(tokenizer, prompt, chat=hp.chat_template, system_prompt=hp.system_prompt) if templated else (
        f"{prompt} " if prompt else ""
    )
    return Span(prefix + completion, len(prefix))


@dataclass
class ContrastiveReads:
    """Pooled activations of the behaviour-matching (pos) and opposite (neg) inputs, per site."""

    pos: dict[Site, torch.Tensor]
    neg: dict[Site, torch.Tensor]
    paired: bool  # row i of pos and row i of neg come from the same item
    count: int


def read_contrastive(
    model: torch.nn.Module, tokenizer: Any, data: ContrastiveData, hp: Any, sites: list[Site],
    transform: Callable[[Site, torch.Tensor], torch.Tensor] | None = None, label: str = "CAA",
) -> ContrastiveReads:
    """Read contrastive data where CAA reads it (shared by CAA and STA).

    `hp` needs CAA's reading fields: token, batch_size, chat_template, system_prompt, max_items.
    `transform` is applied per token before pooling (see `pooled_activations`).
    """
    if len(data) == 0:
        raise DataError(f"{label} needs at least one contrastive item; the dataset is empty.")
    limit = hp.max_items
    pool: Literal["mean", "last"] = "last" if hp.token == "last" else "mean"
    common = dict(pool=pool, batch_size=hp.batch_size, transform=transform)
    name = label.lower()
    if data.kind == "ab" and hp.token in ("mean", "last"):
        items = data.ab_items[:limit]  # type: ignore[index]
        data = ContrastiveData(pairs=[ab_as_pair(item, f"A/B item {i}") for i, item in enumerate(items)])
    if data.kind == "ab":
        templated = uses_template(tokenizer, hp.chat_template)
        pairs = [_ab_spans(tokenizer, item, hp) for item in data.ab_items[:limit]]  # type: ignore[index]
        pos = pooled_activations(model, tokenizer, [p for p, _ in pairs], sites, templated=templated, desc=f"{label} matching", **common)  # type: ignore[arg-type]
        neg = pooled_activations(model, tokenizer, [n for _, n in pairs], sites, templated=templated, desc=f"{label} not matching", **common)  # type: ignore[arg-type]
        return ContrastiveReads(pos, neg, True, len(pairs))
    if hp.token == "answer":
        raise ConfigError(f"{name}: token='answer' needs A/B data; use 'mean' or 'last' for text pairs and texts.")
    if data.kind == "pairs":
        items = data.pairs[:limit]  # type: ignore[index]
        templated = uses_template(tokenizer, hp.chat_template) and any(p.prompt for p in items)
        pos_spans = [_pair_spans(tokenizer, p.prompt, p.positive, hp, templated) for p in items]
        neg_spans = [_pair_spans(tokenizer, p.prompt, p.negative, hp, templated) for p in items]
        pos = pooled_activations(model, tokenizer, pos_spans, sites, templated=templated, desc=f"{label} positive", **common)  # type: ignore[arg-type]
        neg = pooled_activations(model, tokenizer, neg_spans, sites, templated=templated, desc=f"{label} negative", **common)  # type: ignore[arg-type]
        return ContrastiveReads(pos, neg, True, len(items))
    positive = (data.positive_texts or [])[:limit]
    negative = (data.negative_texts or [])[:limit]
    pos = pooled_activations(model, tokenizer, [Span(t) for t in positive], sites, templated=False, desc=f"{label} positive", **common)  # type: ignore[arg-type]
    neg = pooled_activations(model, tokenizer, [Span(t) for t in negative], sites, templated=False, desc=f"{label} negative", **common)  # type: ignore[arg-type]
    return ContrastiveReads(pos, neg, False, min(len(positive), len(negative)))


def make_caa(
    model: torch.nn.Module, tokenizer: Any, data: ContrastiveData, hp: CAAHparams, model_id: str | None = None
) -> SteeringVector:
    site_map = SiteMap(model)
    sites = [site_map.normalise(Site(hp.site, layer)) for layer in hp.layers]
    reads = read_contrastive(model, tokenizer, data, hp, sites)
    diffs = {s: aggregate(hp.aggregator, reads.pos[s], reads.neg[s], paired=reads.paired) for s in sites}
    count = reads.count
    if hp.normalize:
        diffs = {s: d / d.norm().clamp_min(1e-12) for s, d in diffs.items()}
    meta = VectorMeta(
        method="caa",
        model_id=model_id,
        hidden_size=site_map.hidden_size,
        num_layers=site_map.num_layers,
        data_hash=data.source_hash,
        extra={"hparams": hp.__dict__.copy(), "data_kind": data.kind, "items": count},
    )
    return SteeringVector(diffs, meta)


METHOD = SteeringMethod(
    name="caa",
    hparams=CAAHparams,
    make=make_caa,
    description="Contrastive Activation Addition: mean activation difference on contrastive pairs.",
)
