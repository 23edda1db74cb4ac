"""R-ROME (Gupta et al., 2024, "Rebuilding ROME"): ROME's rank-one update solved at the prefix-averaged key.

ROME builds its direction u from k*, the subject's key averaged over the plain prompt and the
context prefixes, but solves the update at the plain prompt's key k: dW = (v* - W k) u^T / (u . k).
When k and k* differ, u . k can be small and the update large, and sequential edits collapse the
model. R-ROME solves at k* in numerator and denominator alike.

What steer computes, with row 0 the plain prompt and rows 1.. the prompt behind each prefix:
    k_i, o_i = W k_i   the key and output of the edited MLP at the subject's last token of row i
    k* = mean_i k_i,   W k* = mean_i o_i
    u   = C^-1 k* / |C^-1 k*|
    s_i = (u . k_i) / (u . k*)   an update d u^T / (u . k*) changes row i's output by s_i d, no more
    delta: optimised (steer.edit.value) with s_i * delta added in row i and s_KL * delta in the
           "{subject} is a" row, i.e. with the change the update below will really make there
    dW  = delta u^T / (u . k*)   the layer maps k* to W k* + delta
After the edit each row's output is o_i + s_i delta: what the value optimisation saw in every row.

The authors' code (rebuilding-rome and EasyEdit's r_rome, compute_v with
enable_random_prefix_keys) instead solves for the target o_0 + delta: the plain prompt's output
plus delta, minus the prefix average W k*, with delta optimised as if every row got all of it.
Two mismatches follow: the numerator carries o_0 - W k* (as large as 0.7 |delta| on SmolLM2-135M's
ZsRE edits), and the plain prompt, whose key lies shorter along u (s_0 = 0.82-0.92 there, the
prefixed rows 0.95-1.1), gets only part of the delta the optimisation found just sufficient.
On the first 10 ZsRE records that edit rewrote 0.51 where ROME reached 0.97 (README_2 section 10).
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
from steer.edit.rome import key_covariance
from steer.edit.templates import context_prefixes
from steer.edit.tokens import encode
from steer.edit.value import optimise_value
from steer.sites.resolve import Site


def key_direction(c: torch.Tensor | None, k_star: torch.Tensor) -> torch.Tensor:
    """u = C^-1 k* / |C^-1 k*| in float64 (k* itself, normalised, without C)."""
    u = torch.linalg.solve(c.double(), k_star.double()) if c is not None else k_star.double()
    norm = u.norm()
    if norm < 1e-12:
        raise EditError("R-ROME's averaged key is zero at this layer; try another layer.")
    return u / norm


def apply_r_rome(ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("R-ROME edits one fact at a time; use MEMIT, EMMET or AlphaEdit for batches.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    if hp.update_keys != "rome":
        raise EditError(f"r_rome always solves its update at the prefix-averaged key; update_keys={hp.update_keys!r} "
                        "applies to rome (use method rome, or leave update_keys unset).")
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    c, preserved = key_covariance(ctx, request, layer, hp)
    # the keys and outputs of the rows the value is optimised in: every context row, then the KL row
    assert request.subject is not None
    kl_row = encode(ctx.tokenizer, f"{request.subject} is a", None, request.subject)
    rows = [*ctx.subject_rows([request], prefixes), kl_row]
    key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
    read = ctx.read_at(rows, [r.subject_last for r in rows], [key_site, out_site])  # type: ignore[misc]
    keys, outs = read[key_site].double(), read[out_site].double()
    k_star, w_k_star = keys[:-1].mean(0), outs[:-1].mean(0)
    u = key_direction(c, k_star)
    along = torch.dot(u, k_star)
    if along.abs() < 1e-12:
        raise EditError("R-ROME's averaged key is orthogonal to its covariance-adjusted direction; try another layer.")
    scales = keys @ u / along  # row i changes by scales[i] * delta under the update below
    value = optimise_value(ctx, request, Site("mlp_out", layer), hp, scales=scales.tolist())
    delta = (value.target - value.original).double()
    change = LowRank((delta / along).unsqueeze(1).float(), u.unsqueeze(0).float())
    info = {"layer": layer, "k_star": k_star.float(), "k": keys[0].float(), "v_star": (w_k_star + delta).float(),
            "v_orig": w_k_star.float(), "u": u, "delta": delta.float(), "scales": scales.float(), "nll": value.nll,
            "steps": value.steps, "update_keys": "prefix_mean", "preserved_keys": preserved}
    return MethodOutput({layer: change}, info)


METHODS = (
    EditMethod("r_rome", ROMEHparams, apply_r_rome, batched=False, needs_stats=True,
               description="ROME solved at the prefix-averaged key, its value optimised for that update "
                           "(Gupta et al., 2024)"),
)
