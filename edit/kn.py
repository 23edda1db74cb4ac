"""Knowledge neurons (Dai et al., 2022): find the MLP neurons that carry a fact, then rewrite their values.

1. Attribution: for the prompt and the answer it should stop giving (ground_truth, else
   the model's own prediction), every neuron i of layer l (an input of the down-projection,
   the site `mlp_key.l`) at the prompt's last token gets integrated gradients from a zero
   baseline:  attr_i = a_i / m * sum_{k=1..m} d p(answer | a scaled by k/m) / d a_i.
   One batched forward and backward per layer, the m scaled copies as the batch rows.
2. Selection: neurons with attr > adaptive_threshold * the largest attribution over the
   searched layers (at most max_neurons, the highest first).
3. Edit (the knowledge-neurons package's "edit" mode, used by EasyEdit): each selected
   neuron's value vector, its column of the down-projection, gets
   edit_scale * (E[new] - E[old]), with E the input embeddings of the first token of the
   target and of the old answer. Per layer that is a rank-one change: the difference vector
   times the indicator of the layer's selected neurons.
Answers are scored by their first token (the package scores single tokens too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.hparams import KNHparams
from steer.edit.lowrank import LowRank
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.tokens import encode
from steer.sites.hooks import ForwardState, intervene
from steer.sites.resolve import Site


@dataclass
class ScaleAt:
    """Replaces the activation at one position of every row by `scaled[row]` (out of place)."""

    site: Site
    position: int
    scaled: torch.Tensor  # [rows, d]

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        mask = torch.zeros(hidden.shape[1], 1, dtype=hidden.dtype, device=hidden.device)
        mask[self.position] = 1
        return hidden * (1 - mask) + self.scaled.to(hidden.dtype).unsqueeze(1) * mask


def first_token(tokenizer: object, prompt: str, answer: str) -> int:
    row = encode(tokenizer, prompt, answer)
    return row.ids[row.target[0]]


def attributions(ctx: EditContext, prompt: str, token: int, layer: int, steps: int) -> torch.Tensor:
    """[d_ff] integrated gradients of p(token) w.r.t. the layer's neurons at the prompt's last token."""
    model = ctx.sites.model
    ids = encode(ctx.tokenizer, prompt).ids
    last = len(ids) - 1
    site = Site("mlp_key", layer)
    activation = ctx.read_at([encode(ctx.tokenizer, prompt)], [last], [site])[site][0]
    alphas = torch.arange(1, steps + 1, dtype=torch.float32, device=ctx.device) / steps
    scaled = (alphas.unsqueeze(1) * activation.unsqueeze(0)).requires_grad_(True)
    batch = torch.tensor([ids] * steps, device=ctx.device)
    with frozen(model), torch.enable_grad(), intervene(model, [ScaleAt(site, last, scaled)]):
        logits = model(input_ids=batch, use_cache=False).logits[:, last].float()
        probability = torch.softmax(logits, dim=-1)[:, token].sum()
        (grads,) = torch.autograd.grad(probability, scaled)
    return activation * grads.sum(0) / steps


def apply_kn(ctx: EditContext, requests: Sequence[EditRequest], hp: KNHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("KN edits one fact at a time.")
    request = requests[0]
    layers = [ctx.sites.check_layer(layer) for layer in hp.layers] or list(range(ctx.sites.num_layers))
    new = first_token(ctx.tokenizer, request.prompt, request.target_new)
    if request.ground_truth:
        old = first_token(ctx.tokenizer, request.prompt, request.ground_truth)
    else:  # the model's own answer is what should change
        with torch.no_grad():
            ids = torch.tensor([encode(ctx.tokenizer, request.prompt).ids], device=ctx.device)
            old = int(ctx.sites.model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
    if old == new:
        raise EditError(f"The target {request.target_new!r} starts with the same token as the old answer; KN edits "
                        "the first token's value vectors, so there is nothing to change.")
    scores = {layer: attributions(ctx, request.prompt, old, layer, hp.steps) for layer in layers}
    top = max(float(s.max()) for s in scores.values())
    if top <= 0:
        raise EditError("No neuron has a positive attribution for the old answer; KN found nothing to edit.")
    candidates = sorted(((float(s[i]), layer, int(i)) for layer, s in scores.items()
                         for i in torch.nonzero(s > hp.adaptive_threshold * top).flatten()), reverse=True)
    chosen = candidates[: hp.max_neurons]
    embed = ctx.sites.module(Site("embed")).weight.detach().float()  # type: ignore[union-attr]
    direction = hp.edit_scale * (embed[new] - embed[old])
    deltas: dict[int, LowRank] = {}
    for layer in sorted({layer for _, layer, _ in chosen}):
        indicator = torch.zeros(1, scores[layer].shape[0], device=direction.device)
        indicator[0, [i for _, l, i in chosen if l == layer]] = 1.0
        deltas[layer] = LowRank(direction.unsqueeze(1).clone(), indicator)
    info = {"neurons": [(layer, i) for _, layer, i in chosen], "attributions": scores, "old_token": old,
            "new_token": new, "threshold": hp.adaptive_threshold * top}
    return MethodOutput(deltas, info)


METHODS = (
    EditMethod("kn", KNHparams, apply_kn, batched=False, needs_stats=False,
               description="knowledge neurons: integrated-gradients attribution, then value vectors moved from "
                           "the old answer's embedding to the new one's (Dai et al., 2022)", needs_subject=False),
)
