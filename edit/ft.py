"""Fine-tuning the MLP down-projection weights: FT-L and FT-M.

FT-L (Zhu et al., 2020; the ROME paper's baseline): Adam on the chosen weights with the
LM loss over prompt and target, and after every step each weight is clamped to within
`norm_constraint` of its original value (an L-infinity bound on the change).
FT-M (EasyEdit): the same optimiser with the loss on the target tokens only.
The weights are optimised in place (they are the model's own parameters, reached
through the site layer), the change is returned as a delta and the weights restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.hparams import FTHparams, FTMHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.tokens import Encoded, encode, pad_right, target_log_probs


def _loss(ctx: EditContext, rows: list[Encoded], loss_on: str) -> torch.Tensor:
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    logits = ctx.sites.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    if loss_on == "target":
        return torch.stack([-lp.mean() for lp in target_log_probs(logits, rows, ids)]).mean()
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(2, ids[:, 1:].unsqueeze(2)).squeeze(2)
    weights = mask[:, 1:].float()
    return -(log_probs * weights).sum() / weights.sum()


def apply_ft(ctx: EditContext, requests: Sequence[EditRequest], hp: FTHparams) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    rows = [encode(ctx.tokenizer, r.prompt, r.target_new) for r in requests]
    weights = {layer: ctx.sites.weight(layer) for layer in layers}
    originals = {layer: w.detach().clone() for layer, w in weights.items()}
    losses: list[float] = []
    try:
        with frozen(ctx.sites.model), torch.enable_grad():
            for weight in weights.values():
                weight.requires_grad_(True)
            optimizer = torch.optim.Adam(list(weights.values()), lr=hp.lr)
            bound = hp.norm_constraint
            after_step = None if bound is None else (lambda: clamp_near(weights, originals, bound))
            losses = train(ctx, rows, optimizer, hp.num_steps, hp.batch_size, hp.loss_on, after_step)
        deltas = weight_deltas(ctx, weights, originals)
    finally:
        with torch.no_grad():
            for layer, weight in weights.items():
                weight.copy_(originals[layer])
    return MethodOutput(deltas, {"layers": layers, "losses": losses})


def train(
    ctx: EditContext,
    rows: list[Encoded],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    batch_size: int,
    loss_on: str,
    after_step: Callable[[], None] | None = None,
) -> list[float]:
    """`num_steps` epochs over `rows` in mini-batches of `batch_size` (FT-L/FT-M and LoRA); each
    epoch's mean loss. `after_step` runs after every optimiser step (FT-L's bound)."""
    losses: list[float] = []
    for _ in range(num_steps):
        total = 0.0
        for start in range(0, len(rows), batch_size):
            optimizer.zero_grad()
            loss = _loss(ctx, rows[start : start + batch_size], loss_on)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows[start : start + batch_size])
            if after_step is not None:
                after_step()
        losses.append(total / len(rows))
    return losses


def clamp_near(weights: dict[int, torch.Tensor], originals: dict[int, torch.Tensor], bound: float) -> None:
    """Keep every entry of each weight within `bound` of its original (FT-L's norm constraint)."""
    with torch.no_grad():
        for layer, weight in weights.items():
            weight.copy_(torch.maximum(torch.minimum(weight, originals[layer] + bound), originals[layer] - bound))


def weight_deltas(ctx: EditContext, weights: dict[int, torch.Tensor], originals: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """{layer: weight - original} as [out, in] float32, whatever the storage layout."""
    deltas = {}
    for layer, weight in weights.items():
        change = (weight.detach() - originals[layer]).float()
        deltas[layer] = change if ctx.sites.arch.down_weight_layout == "out_in" else change.T
    return deltas


METHODS = (
    EditMethod("ft_l", FTHparams, apply_ft, batched=True, needs_stats=False,
               description="fine-tune MLP weights with an L-infinity bound on the change (FT-L)", needs_subject=False),
    EditMethod("ft_m", FTMHparams, apply_ft, batched=True, needs_stats=False,
               description="fine-tune MLP weights with the loss on the target tokens only (FT-M)", needs_subject=False),
)
