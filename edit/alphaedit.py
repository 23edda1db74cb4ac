"""AlphaEdit (Fang et al., 2025): MEMIT's update projected onto the null space of preserved keys.

P projects onto the eigenvectors of C (the second moment of ordinary keys) whose
eigenvalues are below `nullspace_threshold`: directions ordinary text barely uses.
Per layer, with K, R as in MEMIT and S the K^T K of edits already applied:
    dW^T = (P (K^T K + S) + L2 I)^-1 P K^T R
The solution lies in the range of P, so dW k0 = 0 for every preserved key k0 (P k0 = 0):
the outputs of preserved knowledge do not move. S comes from the Editor's applied edits
(rolled back with them), not from a global cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext
from steer.edit.hparams import AlphaEditHparams
from steer.edit.lowrank import LowRank
from steer.edit.memit import distributed_update
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import second_moments


def null_space_projector(c: torch.Tensor, threshold: float) -> torch.Tensor:
    """U_small U_small^T over the eigenvectors of symmetric C with eigenvalue < threshold."""
    eigenvalues, eigenvectors = torch.linalg.eigh(c.double())
    small = eigenvectors[:, eigenvalues < threshold]
    return small @ small.T


def alphaedit_delta(projector: torch.Tensor, keys: torch.Tensor, resid: torch.Tensor, previous: torch.Tensor | None,
                    l2: float) -> LowRank:
    """((P (K^T K + S) + L2 I)^-1 P K^T R)^T, kept as R^T and ((...)^-1 P K^T)^T (rank <= n)."""
    keys, resid = keys.double(), resid.double()
    gram = keys.T @ keys + (previous.double() if previous is not None else 0.0)
    lhs = projector @ gram + l2 * torch.eye(projector.shape[0], dtype=torch.float64, device=projector.device)
    return LowRank(resid.T, torch.linalg.solve(lhs, projector @ keys.T).T)


def apply_alphaedit(ctx: EditContext, requests: Sequence[EditRequest], hp: AlphaEditHparams) -> MethodOutput:
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    stats = second_moments(ctx, layers, hp)
    projectors = {layer: null_space_projector(stats[layer], hp.nullspace_threshold) for layer in layers}

    def solve(layer: int, keys: torch.Tensor, resid: torch.Tensor) -> LowRank:
        previous = ctx.preserved.get(layer)
        projector = projectors[layer].to(keys.device)
        return alphaedit_delta(projector, keys, resid, None if previous is None else previous.to(keys.device), hp.L2)

    output = distributed_update(ctx, requests, hp, solve)
    output.info["null_space_dims"] = {layer: int(round(float(p.trace()))) for layer, p in projectors.items()}
    return output


METHODS = (
    EditMethod("alphaedit", AlphaEditHparams, apply_alphaedit, batched=True, needs_stats=True,
               description="MEMIT projected onto the null space of preserved keys (Fang et al., 2025)"),
)
