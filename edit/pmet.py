"""PMET (Li et al., AAAI 2024, "PMET: Precise Model Editing in a Transformer").

MEMIT optimises one target for the residual stream at its last layer, a vector that holds
what the attention and the MLP of that layer add together. PMET optimises the two shares
jointly but separately, and updates the MLP weights with the MLP's share only:

1. For each request, two vectors are added at the subject's last token of the last edited
   layer L, one to the attention output (site `attn_out.L`) and one to the MLP output
   (`mlp_out.L`), and optimised together over the same prompts and loss as steer's other
   methods (`steer/edit/value.py`: target NLL averaged over the context prefixes +
   kl_factor x KL on "{subject} is a"), except PMET's weight decay,
       v_weight_decay * (|d_attn| / |a|^2 + |d_mlp| / |m|^2)     (a, m: the original outputs)
   Each vector is clamped to clamp_norm_factor x the norm of its original output.
   z = m + d_mlp is the MLP output layer L should produce. The attention's optimised output
   is not written anywhere: the paper updates only the FFN weights, and EasyEdit's PMET
   files list only the MLP down-projections in `rewrite_module_tmps`.
2. For each edited layer l, in order, with the earlier layers already updated:
       K    = keys (`mlp_key.l`) at the subject's last token, averaged over the context prefixes
       R    = (z - the current `mlp_out.L` at the plain prompt) / sqrt(layers left, this one included)
       dW_l = R^T K (mom2_update_weight C_l + K^T K)^-1
   MEMIT divides the residual by the number of layers left; PMET (and EasyEdit's code) by its
   square root, and its residual is the MLP output's, not the residual stream's.

Like every weight method, the change is returned as low-rank factors of each layer's
down-projection (`mlp_down_weight.l`), written and rolled back by the Editor. Targets are not
kept in the Editor's value cache (a PMET target pair is not a MEMIT/ROME value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from steer.edit.context import EditContext
from steer.edit.hparams import PMETHparams
from steer.edit.lowrank import LowRank
from steer.edit.memit import memit_delta, spread_over_layers
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments
from steer.edit.templates import context_prefixes
from steer.edit.value import optimise_shifts
from steer.sites.resolve import Site


@dataclass(frozen=True)
class JointTargets:
    attn: torch.Tensor  # [hidden] a + d_attn: the attention output PMET optimised (not written)
    mlp: torch.Tensor  # [hidden] z = m + d_mlp: the MLP output the update aims for
    attn_original: torch.Tensor
    mlp_original: torch.Tensor
    nll: float
    steps: int


def optimise_joint(ctx: EditContext, request: EditRequest, layer: int, hp: PMETHparams) -> JointTargets:
    """PMET's step 1 at layer `layer`: the attention and MLP output vectors, optimised together."""
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    found = optimise_shifts(ctx, request, [Site("attn_out", layer), Site("mlp_out", layer)], hp, prefixes,
                            decay_power=1, desc=f"PMET targets at attn_out.{layer} + mlp_out.{layer}")
    (attn, mlp), (d_attn, d_mlp) = found.originals, found.deltas
    return JointTargets(attn + d_attn, mlp + d_mlp, attn, mlp, found.nll, found.steps)


def apply_pmet(ctx: EditContext, requests: Sequence[EditRequest], hp: PMETHparams) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    stats = second_moments(ctx, layers, hp)
    top = layers[-1]
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    targets = [
        optimise_joint(ctx, r, top, hp)
        for r in tqdm(requests, desc="PMET targets", disable=not ctx.progress or len(requests) < 2, leave=False)
    ]
    z = torch.stack([t.mlp for t in targets]).double()
    def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> LowRank:
        return memit_delta(stats[layer].to(keys.device), keys, resid, hp.mom2_update_weight)

    deltas, per_layer, preserved = spread_over_layers(ctx, requests, layers, prefixes, z, Site("mlp_out", top), solve,
                                                      divisor=math.sqrt)
    info = {"layers": layers, "z": z.float(), "z_attn": torch.stack([t.attn for t in targets]),
            "mlp_orig": torch.stack([t.mlp_original for t in targets]),
            "attn_orig": torch.stack([t.attn_original for t in targets]), "per_layer": per_layer,
            "nll": [t.nll for t in targets], "steps": [t.steps for t in targets]}
    return MethodOutput(deltas, info, preserved)


METHODS = (
    EditMethod("pmet", PMETHparams, apply_pmet, batched=True, needs_stats=True,
               description="attention and MLP outputs optimised jointly, the MLP's share spread over several "
                           "down-projections (Li et al., 2024)"),
)
