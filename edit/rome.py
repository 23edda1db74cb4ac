"""ROME (Meng et al., 2022): a rank-one update of one MLP down-projection.

With k* the key of the subject's last token (averaged over context prefixes), C the
second moment of the layer's keys, and v* the optimised value at the plain prompt:
    u  = C^-1 k* / |C^-1 k*|
    dW = (v* - W k) u^T / (u . k)      k = the key at the plain prompt
so the layer maps k to v* exactly and keys orthogonal to u under C^-1 are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext
from steer.edit.errors import EditError
from steer.edit.hparams import ROMEHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments
from steer.edit.templates import context_prefixes
from steer.edit.value import optimise_value
from steer.sites.resolve import Site


def rank_one_delta(c: torch.Tensor | None, k_star: torch.Tensor, k: torch.Tensor, v_star: torch.Tensor,
                   w_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dW [out, in], u): ROME's closed form, in float64."""
    k_star, k, v_star, w_k = (t.double() for t in (k_star, k, v_star, w_k))
    u = torch.linalg.solve(c.double(), k_star) if c is not None else k_star
    u = u / u.norm()
    denominator = torch.dot(u, k)
    if denominator.abs() < 1e-12:
        raise EditError("ROME's key is orthogonal to its covariance-adjusted direction; try another layer.")
    return torch.outer((v_star - w_k) / denominator, u), u


def apply_rome(ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("ROME edits one fact at a time; use MEMIT or AlphaEdit for batches.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    k_star = ctx.mean_keys([request], layer, prefixes)[0]
    c = second_moments(ctx, [layer], hp)[layer].to(ctx.device) if hp.mom2_adjustment else None
    value = optimise_value(ctx, request, Site("mlp_out", layer), hp)
    plain = ctx.subject_rows([request], [""])
    key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
    read = ctx.read_at(plain, [plain[0].subject_last], [key_site, out_site])  # type: ignore[list-item]
    delta, u = rank_one_delta(c, k_star, read[key_site][0], value.target, read[out_site][0])
    info = {"layer": layer, "k_star": k_star, "k": read[key_site][0], "v_star": value.target,
            "v_orig": read[out_site][0], "u": u, "nll": value.nll, "steps": value.steps}
    return MethodOutput({layer: delta.float()}, info)


METHODS = (
    EditMethod("rome", ROMEHparams, apply_rome, batched=False, needs_stats=True,
               description="rank-one update of one MLP down-projection (Meng et al., 2022)"),
)
