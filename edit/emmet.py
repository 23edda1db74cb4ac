"""EMMET (Gupta et al., 2024, "A Unified Framework for Model Editing"): batched edits as equality constraints.

MEMIT asks the edited keys to map to their targets in a least-squares sense, traded off
against the preserved keys (lambda C). EMMET asks for the targets exactly and, among the
updates that reach them, takes the one that disturbs the preserved keys least:
    minimise |dW K0|^2   subject to   (W + dW) k_i = z_i for every edited key k_i
whose closed form, with C' = mom2_update_weight * C + update_norm_lambda * I and the
edited keys as rows of K, is
    dW = R^T (K C'^-1 K^T + emmet_lambda * I)^-1 K C'^-1
(emmet_lambda regularises nearly dependent keys). The residual R is spread over the
layers exactly as in MEMIT (`distributed_update`), so only the per-layer solve differs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext
from steer.edit.hparams import EMMETHparams
from steer.edit.lowrank import LowRank
from steer.edit.memit import distributed_update
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments


def emmet_delta(c: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor, weight: float, norm_lambda: float,
                emmet_lambda: float) -> LowRank:
    """R^T (K C'^-1 K^T + emmet_lambda I)^-1 K C'^-1, solved in float64, kept as R^T and the [n, d_in] rest."""
    keys, resid = keys.double(), resid.double()
    eye = torch.eye(c.shape[0], dtype=torch.float64, device=c.device)
    scaled = weight * c.double() + norm_lambda * eye
    c_inv_k = torch.linalg.solve(scaled, keys.T)  # C'^-1 K^T  [d_in, n]
    d = keys @ c_inv_k + emmet_lambda * torch.eye(keys.shape[0], dtype=torch.float64, device=keys.device)
    return LowRank(resid.T, torch.linalg.solve(d, c_inv_k.T))


def apply_emmet(ctx: EditContext, requests: Sequence[EditRequest], hp: EMMETHparams) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    stats = second_moments(ctx, layers, hp)

    def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> LowRank:
        return emmet_delta(stats[layer].to(keys.device), keys, resid, hp.mom2_update_weight, hp.update_norm_lambda,
                           hp.emmet_lambda)

    return distributed_update(ctx, requests, hp, solve)


METHODS = (
    EditMethod("emmet", EMMETHparams, apply_emmet, batched=True, needs_stats=True,
               description="batched edits as equality constraints, least disturbance of preserved keys "
                           "(Gupta et al., 2024)"),
)
