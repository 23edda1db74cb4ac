"""WISE (Wang et al., 2024): a side memory at one layer, routed to by its activation gap.

The side memory is the down-projection of layer L plus a change D that only a random
`mask_ratio` share of its entries may take (EasyEdit's knowledge-sharding mask). For an
input, the activation gap is the mean over its positions of |act(x W'^T) - act(x W^T)|, with
`act` the model's MLP activation, as EasyEdit's `euc` computes it. Training (SGD on D,
EasyEdit's `edit_lr` and `n_iter`, entries clamped to `norm_constraint`) minimises the
target's NLL through the side memory plus WISE's margins on the gap: the edit's own input
above beta, irrelevant inputs below alpha, and the edit's gap at least gamma above theirs.
The irrelevant inputs are the request's locality prompts, else two lines of the shipped
WikiText sample. After training the routing threshold is act_ratio x the edit's own gap.

At inference the memory is an adapter (`steer.edit.adapters`): a row whose gap (over its real
positions, padding excluded, as in training) reaches the threshold gets the side memory's
output (the original output + x D^T), other rows are computed exactly as before, and rolling
the edit back removes it. Differences from EasyEdit:
each edit is its own side memory (no merging of shards, no retrieval among memories), and
with a KV cache each decoding step routes on its own new token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer.edit.adapters import pass_mask
from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.hparams import WISEHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import corpus_path
from steer.edit.tokens import encode, pad_right, target_log_probs
from steer.sites.resolve import Site


def activation_fn(model: Any) -> Any:
    from transformers.activations import ACT2FN

    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    name = (getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
            or getattr(config, "activation_function", None) or "gelu")
    return ACT2FN[name]


def gap(act: Any, original: torch.Tensor, new: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[rows]: mean over positions of |act(new) - act(original)| (masked positions excluded; a row
    with none left has gap 0)."""
    distance = (act(new.float()) - act(original.float())).norm(dim=-1)
    if mask is None:
        return distance.mean(-1)
    mask = mask.to(distance.dtype)
    return (distance * mask).sum(-1) / mask.sum(-1).clamp_min(1)


@dataclass
class SideMemory:
    """The adapter: rows whose activation gap reaches `threshold` use W + delta instead of W."""

    layer: int
    delta: torch.Tensor  # [out, in]
    threshold: float
    act: Any

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        squeeze = values.dim() == 2
        k, v = (keys.unsqueeze(0), values.unsqueeze(0)) if squeeze else (keys, values)
        new = v + (k.float() @ self.delta.to(k.device).T).to(v.dtype)
        # over the real positions only, as in training: padding must not decide a row's route
        mask = pass_mask()
        mask = mask if mask is not None and mask.shape == v.shape[:2] else None
        routed = gap(self.act, v, new, mask) >= self.threshold  # [rows]
        if not bool(routed.any()):
            return values
        out = torch.where(routed.view(-1, *([1] * (v.dim() - 1))), new, v)
        return out.squeeze(0) if squeeze else out


def _irrelevant(request: EditRequest) -> list[str]:
    prompts = [p.prompt for probes in request.locality.values() for p in probes]
    if prompts:
        return prompts[:4]
    lines = [line.strip() for line in corpus_path(None).read_text(encoding="utf-8").splitlines() if len(line) > 80]
    return [line[:200] for line in lines[:2]]


def apply_wise(ctx: EditContext, requests: Sequence[EditRequest], hp: WISEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("WISE trains one side memory per edit; edit requests one at a time.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    model = ctx.sites.model
    act = activation_fn(model)
    rows = [encode(ctx.tokenizer, request.prompt, request.target_new)]
    rows += [encode(ctx.tokenizer, text) for text in _irrelevant(request)]
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    weight = ctx.sites.down_weight_as_out_in(layer)
    generator = torch.Generator().manual_seed(hp.seed)
    entry_mask = (torch.rand(weight.shape, generator=generator) < hp.mask_ratio).float().to(ctx.device)
    delta = torch.zeros(weight.shape, dtype=torch.float32, device=ctx.device, requires_grad=True)
    seen: dict[str, torch.Tensor] = {"mask": mask}  # the attention mask of the rows being run

    def through_side_memory(_module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        new = output + (args[0].float() @ (delta * entry_mask).T).to(output.dtype)
        seen["gap"] = gap(act, output, new, seen["mask"])
        return new

    alpha, beta, gamma = hp.act_margin
    optimizer = torch.optim.SGD([delta], lr=hp.lr, weight_decay=1e-5)
    module = ctx.sites.module(Site("mlp_down_weight", layer))
    handle = module.register_forward_hook(through_side_memory)
    losses: list[float] = []
    try:
        with frozen(model), torch.enable_grad():
            for _ in range(hp.num_steps):
                optimizer.zero_grad()
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll = -target_log_probs(logits[:1], rows[:1], ids[:1])[0].mean()
                edit_gap, other = seen["gap"][0], seen["gap"][1:]
                margin = (torch.relu(other - edit_gap + gamma).mean() + torch.relu(other - alpha).mean()
                          + torch.relu(beta - edit_gap))
                loss = nll + margin
                losses.append(float(loss.detach()))
                loss.backward()
                optimizer.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        delta.clamp_(-hp.norm_constraint, hp.norm_constraint)
        with torch.no_grad():
            seen["mask"] = mask[:1, : len(rows[0].ids)]
            model(input_ids=ids[:1, : len(rows[0].ids)], use_cache=False)  # the edit alone, unpadded
            own_gap = float(seen["gap"][0])
            seen["mask"] = mask
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            other_gaps = [float(g) for g in seen["gap"][1:]]
    finally:
        handle.remove()
    memory = SideMemory(layer, (delta.detach() * entry_mask).cpu(), hp.act_ratio * own_gap, act)
    return MethodOutput({}, {"layer": layer, "losses": losses, "gap": own_gap, "irrelevant_gaps": other_gaps,
                             "threshold": memory.threshold, "mask": entry_mask.cpu()}, adapters=[memory])


METHODS = (
    EditMethod("wise", WISEHparams, apply_wise, batched=False, needs_stats=False,
               description="a masked side memory at one layer, routed to by its activation gap (Wang et al., 2024)",
               needs_subject=False),
)
