"""GRACE (Hartvigsen et al., 2023): lifelong editing with a codebook at one layer, no weight change.

Each edit adds a codebook entry at layer L's MLP down-projection (an adapter,
`steer.edit.adapters`): its key is the down-projection's input at the prompt's last token,
its value a vector trained so that the model, with that position's down-projection output
replaced by the value, predicts the target (plain SGD on the target's NLL, as EasyEdit's
`val_train: sgd`, starting from the original output, as its `val_init: warm`; its files use
`cold`, a random start). On later forward passes every
position whose key lies within `eps` (euclidean) of the entry's key gets the value instead of
the down-projection's output; everything else is computed exactly as before. Several
entries at one layer apply in the order they were made (a later edit wins where two
overlap); GRACE's radius splitting between conflicting entries is not implemented.
EasyEdit's files replace the last token only (`replacement: replace_last`); steer replaces
every position within the radius (EasyEdit's `replace_all`), so a prompt embedded in longer
text still hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.hparams import GRACEHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.tokens import encode, pad_right, target_log_probs
from steer.sites.resolve import Site


@dataclass
class CodebookEntry:
    """One GRACE entry: replaces the down-projection output wherever the key is within `radius`."""

    layer: int
    key: torch.Tensor  # [d_in]
    value: torch.Tensor  # [d_out]
    radius: float

    def hits(self, keys: torch.Tensor) -> torch.Tensor:
        """[...] bool: positions whose key is within the radius."""
        distance = (keys.float() - self.key.to(keys.device, torch.float32)).norm(dim=-1)
        return distance <= self.radius

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        hit = self.hits(keys)
        if not bool(hit.any()):
            return values
        return torch.where(hit.unsqueeze(-1), self.value.to(values.device, values.dtype), values)


def apply_grace(ctx: EditContext, requests: Sequence[EditRequest], hp: GRACEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("GRACE adds one codebook entry per edit; edit requests one at a time.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    model = ctx.sites.model
    prompt = encode(ctx.tokenizer, request.prompt)
    last = len(prompt.ids) - 1
    key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
    read = ctx.read_at([prompt], [last], [key_site, out_site])
    key = read[key_site][0]
    # the down-projection's own output (mlp_out is the MLP's output, the same tensor for these MLPs)
    original = _down_output(ctx, layer, prompt.ids, last)
    row = encode(ctx.tokenizer, request.prompt, request.target_new)
    ids, mask = pad_right(ctx.tokenizer, [row], ctx.device)
    value = original.clone().requires_grad_(True)
    entry = CodebookEntry(layer, key, value, hp.eps)
    optimizer = torch.optim.SGD([value], lr=hp.lr)
    module = ctx.sites.module(Site("mlp_down_weight", layer))
    handle = module.register_forward_hook(lambda _m, args, output: entry(args[0], output))
    losses: list[float] = []
    try:
        with frozen(model), torch.enable_grad():
            for _ in range(hp.num_steps):
                optimizer.zero_grad()
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll = -target_log_probs(logits, [row], ids)[0].mean()
                losses.append(float(nll.detach()))
                if losses[-1] < hp.nll_stop:
                    break
                nll.backward()
                optimizer.step()
    finally:
        handle.remove()
    trained = CodebookEntry(layer, key.detach().clone(), value.detach().clone(), hp.eps)
    return MethodOutput({}, {"layer": layer, "key": trained.key, "value": trained.value, "original": original,
                             "losses": losses, "mlp_out": read[out_site][0]}, adapters=[trained])


def _down_output(ctx: EditContext, layer: int, ids: list[int], position: int) -> torch.Tensor:
    """The down-projection's output at `position` (read with a hook on that module)."""
    seen: list[torch.Tensor] = []
    module = ctx.sites.module(Site("mlp_down_weight", layer))
    handle = module.register_forward_hook(lambda _m, _args, output: seen.append(output.detach()))
    try:
        with torch.no_grad():
            ctx.sites.model(input_ids=torch.tensor([ids], device=ctx.device), use_cache=False)
    finally:
        handle.remove()
    return seen[0][0, position].float()


METHODS = (
    EditMethod("grace", GRACEHparams, apply_grace, batched=False, needs_stats=False,
               description="a codebook entry (key, value, radius) at one layer, no weight change "
                           "(Hartvigsen et al., 2023)", needs_subject=False),
)
