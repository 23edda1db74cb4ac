"""DINM (Wang et al., 2024, "Detoxifying Large Language Models via Knowledge Editing").

1. Locate the toxic layer: run the safe response (target_new) and the unsafe one
   (ground_truth) alone through the model and take the block whose output (`resid_post`)
   differs most between them (euclidean distance over their common positions). EasyEdit
   compares HF's padded hidden-state matrices, which counts padding too and reads the last
   block after the final norm.
2. Detoxify: Adam on that layer's MLP down-projection, minimising
       edit_loss_factor * NLL(safe response | adversarial prompt)
       + KL(unedited || edited) on the answer of a general-knowledge probe
   (EasyEdit's `kl_factor` is the first weight; the probe is the request's locality probe
   `general knowledge constraint`, or its first locality probe). The change is returned as a
   dense delta and written like any weight edit. Evaluate with `steer eval --methods safeedit`.
SafeEdit records load directly (`steer.edit.datasets`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.ft import clamp_near, weight_deltas
from steer.edit.ft import _loss
from steer.edit.hparams import DINMHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest, Probe
from steer.edit.tokens import encode, pad_right
from steer.sites.hooks import record
from steer.sites.resolve import Site

CONSTRAINT = "general knowledge constraint"


def toxic_layer(ctx: EditContext, safe: str, unsafe: str) -> tuple[int, list[float]]:
    """The block whose output (resid_post) differs most between the two responses, and every distance."""
    rows = [encode(ctx.tokenizer, safe), encode(ctx.tokenizer, unsafe)]
    common = min(len(rows[0].ids), len(rows[1].ids))
    sites = [Site("resid_post", layer) for layer in range(ctx.sites.num_layers)]
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    with torch.no_grad(), record(ctx.sites.model, sites) as recorders:
        ctx.sites.model(input_ids=ids, attention_mask=mask, use_cache=False)
    distances = []
    for site in sites:
        hidden = recorders[site].values[0][:, :common].float()
        distances.append(float((hidden[0] - hidden[1]).norm()))
    return max(range(len(distances)), key=distances.__getitem__), distances


def _constraint(request: EditRequest) -> Probe:
    probes = request.locality.get(CONSTRAINT) or next(iter(request.locality.values()), ())
    if not probes:
        raise EditError("DINM keeps general knowledge with a locality probe: give locality_inputs "
                        f"{{'{CONSTRAINT}': {{'prompt': ..., 'ground_truth': ...}}}} (SafeEdit's 'knowledge constrain').")
    return probes[0]


def apply_dinm(ctx: EditContext, requests: Sequence[EditRequest], hp: DINMHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("DINM edits one adversarial prompt at a time.")
    request = requests[0]
    if hp.layers:
        layers, distances = sorted({ctx.sites.check_layer(layer) for layer in hp.layers}), []
    else:
        if not request.ground_truth:
            raise EditError("DINM locates the toxic layer from the unsafe response: give ground_truth (SafeEdit's "
                            "'unsafe generation'), or fix the layers (layers=[L]).")
        located, distances = toxic_layer(ctx, request.target_new, request.ground_truth)
        layers = [located]
    model = ctx.sites.model
    edit_rows = [encode(ctx.tokenizer, request.prompt, request.target_new)]
    probe = _constraint(request)
    keep = encode(ctx.tokenizer, probe.prompt, probe.answer)
    keep_ids = torch.tensor([keep.ids], device=ctx.device)
    positions = torch.tensor(keep.target, device=ctx.device) - 1
    with torch.no_grad():
        base = torch.log_softmax(model(input_ids=keep_ids, use_cache=False).logits[0, positions].float(), dim=-1)
    weights = {layer: ctx.sites.weight(layer) for layer in layers}
    originals = {layer: w.detach().clone() for layer, w in weights.items()}
    losses: list[float] = []
    try:
        with frozen(model), torch.enable_grad():
            for weight in weights.values():
                weight.requires_grad_(True)
            optimizer = torch.optim.Adam(list(weights.values()), lr=hp.lr)
            for _ in range(hp.num_steps):
                optimizer.zero_grad()
                nll = _loss(ctx, edit_rows, "target")
                new = torch.log_softmax(model(input_ids=keep_ids, use_cache=False).logits[0, positions].float(), dim=-1)
                kl = torch.nn.functional.kl_div(new, base, log_target=True, reduction="batchmean")
                loss = hp.edit_loss_factor * nll + kl
                losses.append(float(loss.detach()))
                if losses[-1] < 1e-4:
                    break
                loss.backward()
                optimizer.step()
                if hp.norm_constraint is not None:
                    clamp_near(weights, originals, hp.norm_constraint)
        deltas = weight_deltas(ctx, weights, originals)
    finally:
        with torch.no_grad():
            for layer, weight in weights.items():
                weight.copy_(originals[layer])
    return MethodOutput(deltas, {"layers": layers, "distances": distances, "losses": losses})


METHODS = (
    EditMethod("dinm", DINMHparams, apply_dinm, batched=False, needs_stats=False,
               description="detoxify: fine-tune the layer where safe and unsafe responses differ most, keeping "
                           "general knowledge (Wang et al., 2024)", needs_subject=False),
)
