"""ROME (Meng et al., 2022): a rank-one update of one MLP down-projection.

With k* the key of the subject's last token (averaged over context prefixes), C the
second moment of the layer's keys, and v* the optimised value at the plain prompt:
    u  = C^-1 k* / |C^-1 k*|
    dW = (v* - W k) u^T / (u . k)      k = the key at the plain prompt
so the layer maps k to v* exactly and keys orthogonal to u under C^-1 are untouched.

R-ROME (Gupta et al., 2024, "Rebuilding ROME"): the original code computes u from k*
(averaged over context prefixes) but the update from the plain-prompt key k and its
output W k, a mismatch that makes some edits collapse the model, most of all in
sequential editing. R-ROME uses the prefix-averaged key in both places:
    dW = (v* - W k*) u^T / (u . k*)
so the layer maps k* (not k) to v*. v* is the same optimised value (plain prompt + delta).

`update_keys` chooses the keys ROME's update is solved for (benchmarks/rome_locality.py
measures them on neighbours of the same relation):
    'rome'          u = C^-1 k*, exact at k (the paper's form, above)
    'prompt'        u = C^-1 k,  exact at k: the smallest change under C that maps k to v*
    'every_prefix'  dW = (v* - W k) c^T with c the smallest vector under C with c . k_i = 1
                    for the key k_i of every context row (plain prompt and prefixes):
                    c = C^-1 K^T (K C^-1 K^T)^+ 1, so every row gets the same change the value
                    optimisation added there. Still rank one.
With u built from k* but the update solved at k (ROME), the change is larger under C than
needed whenever k and k* differ (by 1 / cos^2 of their angle under C^-1; a subject at the
prompt's first token is the extreme case), and it spills onto neighbours of the same relation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext
from steer.edit.errors import EditError
from steer.edit.hparams import ROMEHparams
from steer.edit.lowrank import LowRank
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments
from steer.edit.templates import context_prefixes
from steer.edit.value import optimise_value
from steer.sites.resolve import Site


def rank_one_delta(c: torch.Tensor | None, k_star: torch.Tensor, k: torch.Tensor, v_star: torch.Tensor,
                   w_k: torch.Tensor) -> tuple[LowRank, torch.Tensor]:
    """(dW [out, in] as a rank-one LowRank, u): ROME's closed form, solved in float64."""
    k_star, k, v_star, w_k = (t.double() for t in (k_star, k, v_star, w_k))
    u = torch.linalg.solve(c.double(), k_star) if c is not None else k_star
    u = u / u.norm()
    denominator = torch.dot(u, k)
    if denominator.abs() < 1e-12:
        raise EditError("ROME's key is orthogonal to its covariance-adjusted direction; try another layer.")
    return LowRank(((v_star - w_k) / denominator).unsqueeze(1).float(), u.unsqueeze(0).float()), u


def every_key_delta(c: torch.Tensor | None, keys: torch.Tensor, v_star: torch.Tensor,
                    w_k: torch.Tensor) -> tuple[LowRank, torch.Tensor]:
    """(dW [out, in] as a rank-one LowRank, c): dW = (v* - W k) c^T, c = argmin c^T C c s.t. K c = 1.

    `keys` [n, d_in] holds the plain prompt's key first; solved in float64 (pseudo-inverse, so
    repeated keys are fine)."""
    keys, v_star, w_k = keys.double(), v_star.double(), w_k.double()
    c_inv_k = torch.linalg.solve(c.double(), keys.T) if c is not None else keys.T  # [d_in, n]
    gram = keys @ c_inv_k
    if float(torch.linalg.matrix_norm(gram)) < 1e-12:
        raise EditError("ROME's keys are zero at this layer; try another layer.")
    direction = c_inv_k @ (torch.linalg.pinv(gram, hermitian=True) @ torch.ones(len(keys), dtype=gram.dtype))
    return LowRank((v_star - w_k).unsqueeze(1).float(), direction.unsqueeze(0).float()), direction


def apply_rome(ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHparams, *, rebuilt: bool = False) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("ROME edits one fact at a time; use MEMIT or AlphaEdit for batches.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    if rebuilt and hp.update_keys != "rome":
        raise EditError(f"r_rome always solves its update at the prefix-averaged key; update_keys={hp.update_keys!r} "
                        "applies to rome (use method rome, or leave update_keys unset).")
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    c = second_moments(ctx, [layer], hp)[layer].to(ctx.device) if hp.mom2_adjustment else None
    value = optimise_value(ctx, request, Site("mlp_out", layer), hp)
    # every context row's key and output at the subject's last token; row 0 is the plain prompt
    rows = ctx.subject_rows([request], prefixes)
    key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
    read = ctx.read_at(rows, [r.subject_last for r in rows], [key_site, out_site])  # type: ignore[misc]
    keys, outs = read[key_site], read[out_site]
    k_star = keys.mean(0)
    # the key and output the update is solved for: at the plain prompt (ROME) or averaged over
    # the prefixes (R-ROME; the mean output is W k* since the projection is linear)
    k, w_k = (k_star, outs.mean(0)) if rebuilt else (keys[0], outs[0])
    if hp.update_keys == "every_prefix":
        delta, u = every_key_delta(c, keys, value.target, w_k)
    else:
        delta, u = rank_one_delta(c, k if hp.update_keys == "prompt" else k_star, k, value.target, w_k)
    info = {"layer": layer, "k_star": k_star, "k": k, "v_star": value.target, "v_orig": w_k, "u": u,
            "nll": value.nll, "steps": value.steps, "update_keys": "prefix_mean" if rebuilt else hp.update_keys}
    return MethodOutput({layer: delta}, info)


def apply_r_rome(ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHparams) -> MethodOutput:
    return apply_rome(ctx, requests, hp, rebuilt=True)


METHODS = (
    EditMethod("rome", ROMEHparams, apply_rome, batched=False, needs_stats=True,
               description="rank-one update of one MLP down-projection (Meng et al., 2022)"),
    EditMethod("r_rome", ROMEHparams, apply_r_rome, batched=False, needs_stats=True,
               description="ROME with the prefix-averaged key in the update too (Gupta et al., 2024)"),
)
