"""MEMIT (Meng et al., 2023): many edits spread over several layers.

1. For each request, optimise z_i, the residual stream at the last edited layer
   (`resid_post`) at the subject's last token (shared `optimise_value`).
2. For each edited layer l, in order, with the earlier layers already updated:
     K = keys at the subject's last token (rows, averaged over context prefixes)
     R = (z - current resid_post at the last layer) / (layers left, this one included)
     dW_l = R^T K (lambda C_l + K^T K)^-1        (covariance-weighted least squares)
   so each layer carries an equal share of what is still missing.
AlphaEdit reuses steps 1-2 with a different per-layer solve (`LayerSolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from steer.edit.context import EditContext, scratch_writes
from steer.edit.hparams import MEMITHparams
from steer.edit.lowrank import LowRank
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments
from steer.edit.templates import context_prefixes
from steer.edit.value import optimise_value
from steer.sites.resolve import Site

# (layer, K [n, d_in], R [n, d_out]) -> dW [d_out, d_in] as R^T times an [n, d_in] factor (rank <= n)
LayerSolve = Callable[[int, torch.Tensor, torch.Tensor], LowRank]


def memit_delta(c: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor, weight: float) -> LowRank:
    """R^T K (weight * C + K^T K)^-1, solved in float64, kept as R^T and K (weight C + K^T K)^-1."""
    keys, resid = keys.double(), resid.double()
    gram = weight * c.double() + keys.T @ keys
    return LowRank(resid.T, torch.linalg.solve(gram, keys.T).T)  # gram is symmetric


def spread_over_layers(
    ctx: EditContext, requests: Sequence[EditRequest], layers: list[int], prefixes: list[str], z: torch.Tensor,
    z_site: Site, solve: LayerSolve, divisor: Callable[[int], float],
) -> tuple[dict[int, LowRank], dict[int, dict[str, torch.Tensor]], dict[int, torch.Tensor]]:
    """MEMIT's layer-by-layer spread: each layer, lowest first, takes (z - what `z_site` reads now) / divisor(layers left).

    Each layer's change is written to a scratch copy before the next layer reads, so later
    layers see earlier ones. MEMIT divides by the layers left, PMET by their square root.
    Returns (deltas, per-layer keys/residuals/reads, preserved K^T K per layer).
    """
    plain = ctx.subject_rows(requests, [""])
    positions = [r.subject_last for r in plain]
    deltas: dict[int, LowRank] = {}
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    preserved: dict[int, torch.Tensor] = {}
    with scratch_writes(ctx.sites) as scratch:
        for i, layer in enumerate(layers):
            keys = ctx.mean_keys(requests, layer, prefixes).double()
            current = ctx.read_at(plain, positions, [z_site])[z_site].double()  # type: ignore[arg-type]
            resid = (z.double() - current) / divisor(len(layers) - i)
            delta = solve(layer, keys, resid).to(keys.device)
            scratch.add(layer, delta.dense())  # the same expansion the Editor writes
            deltas[layer] = delta
            per_layer[layer] = {"keys": keys, "resid": resid, "current": current}
            preserved[layer] = (keys.T @ keys).cpu()
    return deltas, per_layer, preserved


def distributed_update(
    ctx: EditContext, requests: Sequence[EditRequest], hp: MEMITHparams, solve: LayerSolve
) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    z_site = Site("resid_post", layers[-1])
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    values = [
        optimise_value(ctx, r, z_site, hp)
        for r in tqdm(requests, desc="target values", disable=not ctx.progress or len(requests) < 2, leave=False)
    ]
    z = torch.stack([v.target for v in values])
    deltas, per_layer, preserved = spread_over_layers(ctx, requests, layers, prefixes, z, z_site, solve,
                                                      divisor=lambda remaining: remaining)
    info = {"layers": layers, "z": z, "z_orig": torch.stack([v.original for v in values]), "per_layer": per_layer,
            "nll": [v.nll for v in values]}
    return MethodOutput(deltas, info, preserved)


def apply_memit(ctx: EditContext, requests: Sequence[EditRequest], hp: MEMITHparams) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    stats = second_moments(ctx, layers, hp)

    def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> LowRank:
        return memit_delta(stats[layer].to(keys.device), keys, resid, hp.mom2_update_weight)

    return distributed_update(ctx, requests, hp, solve)


METHODS = (
    EditMethod("memit", MEMITHparams, apply_memit, batched=True, needs_stats=True,
               description="batched edits spread over several MLP layers (Meng et al., 2023)"),
)
