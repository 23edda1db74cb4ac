"""STA, Steering Target Atoms (Wang et al., 2025): CAA restricted to the SAE features that carry it.

From contrastive data read where CAA reads it, at the SAE's site:
  a_j = mean over items of (SAE activation of feature j on the matching input
                            - on the opposite input)              (activation difference)
  f_j = share of matching inputs where feature j fires
        - share of opposite inputs where it fires                 (firing-frequency difference)
Both are signed-min-max normalised (x -> sign(x) * (|x| - min|x|) / (max|x| - min|x|)).
A feature is selected
  - by frequency when a_j and f_j have the same sign and |f_j| is in the top (1 - trim) share;
  - by activation when |a_j| is in the top (1 - trim) share;
and `mode` keeps the features selected by both (act_and_freq, the paper's default), by
activation only (act_only) or by frequency only (freq_only). The vector is the decoded
contribution of the kept activation differences, sum_j a_j * W_dec[j] (with the SAE's
own decoder scaling), rescaled to the norm of the CAA vector of the same data and site
(as the authors do) so multipliers mean the same as CAA's.

"Top share" follows the reference implementation: the threshold is the value at rank
floor((1 - trim) * d_sae) of the scores sorted in descending order, and ties at the
threshold are kept. Features with a zero score are never selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from steer.errors import ConfigError, DataError
from steer.io.datasets import ContrastiveData
from steer.methods import SteeringMethod
from steer.methods.caa import read_contrastive
from steer.sae import SparseAutoencoder, load_sae, require_sae
from steer.sites.resolve import Site, SiteMap
from steer.vector import SteeringVector, VectorMeta

Mode = Literal["act_and_freq", "act_only", "freq_only"]


@dataclass
class STAHparams:
    sae: str | None = None  # folder, library:NAME or saelens:RELEASE:SAE_ID
    mode: Mode = "act_and_freq"
    trim: float = 0.65  # each criterion keeps the top (1 - trim) share of features
    scale_to_caa: bool = True  # rescale to the CAA vector's norm (same data, same site)
    # reading the data, as CAA does
    token: Literal["auto", "answer", "mean", "last"] = "auto"
    batch_size: int = 8
    chat_template: bool = True
    system_prompt: str | None = None
    max_items: int | None = None

    def validate(self) -> None:
        if not 0.0 <= self.trim < 1.0:
            raise ConfigError(f"sta: trim must be in [0, 1) (the share of features dropped); got {self.trim}.")
        if self.batch_size < 1:
            raise ConfigError("sta: batch_size must be at least 1.")


def signed_min_max(x: torch.Tensor) -> torch.Tensor:
    magnitude = x.abs()
    low, high = magnitude.min(), magnitude.max()
    if high <= low:
        return torch.zeros_like(x)
    return x.sign() * (magnitude - low) / (high - low)


def _top_share(scores: torch.Tensor, trim: float) -> torch.Tensor:
    magnitude = scores.abs()
    ordered = torch.sort(magnitude, descending=True, stable=True).values
    threshold = ordered[min(int((1.0 - trim) * len(ordered)), len(ordered) - 1)]
    return (magnitude >= threshold) & (magnitude > 0)


def select_atoms(act_diff: torch.Tensor, freq_diff: torch.Tensor, mode: Mode, trim: float) -> torch.Tensor:
    """Boolean mask [d_sae] of the features STA keeps."""
    norm_act, norm_freq = signed_min_max(act_diff), signed_min_max(freq_diff)
    agree = ((norm_act > 0) & (norm_freq > 0)) | ((norm_act < 0) & (norm_freq < 0))
    by_freq = _top_share(torch.where(agree, norm_freq, torch.zeros_like(norm_freq)), trim)
    by_act = _top_share(act_diff, trim)
    if mode == "act_and_freq":
        return by_freq & by_act
    if mode == "act_only":
        return by_act
    return by_freq


def sta_direction(sae: SparseAutoencoder, pos_acts: torch.Tensor, neg_acts: torch.Tensor, paired: bool,
                  mode: Mode, trim: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(direction [d_in], kept mask [d_sae], statistics) from pooled SAE activations [items, d_sae]."""
    act_diff = (pos_acts - neg_acts).mean(0) if paired else pos_acts.mean(0) - neg_acts.mean(0)
    freq_diff = (pos_acts > 0).float().mean(0) - (neg_acts > 0).float().mean(0)
    kept = select_atoms(act_diff, freq_diff, mode, trim)
    if not kept.any():
        raise DataError(f"sta: no SAE feature passed the {mode} selection at trim={trim}; lower trim or use more data.")
    direction = sae.features_to_residual(torch.where(kept, act_diff, torch.zeros_like(act_diff)).to(sae.W_dec.device))
    return direction.float().cpu(), kept, {"act_diff": act_diff, "freq_diff": freq_diff}


def make_sta(model: Any, tokenizer: Any, data: ContrastiveData, hp: STAHparams,
             model_id: str | None = None) -> SteeringVector:
    sae_ref = require_sae("sta", hp.sae)
    sites = SiteMap(model)
    sae = load_sae(sae_ref, device=next(sites.model.parameters()).device)
    site = sae.site_for(model)
    d_in = sae.d_in

    def raw_and_encoded(_: Site, hidden: torch.Tensor) -> torch.Tensor:
        # one read gives both: the raw activation (for the CAA norm) and its SAE encoding
        return torch.cat([hidden.float(), sae.encode(hidden.float())], dim=-1)

    reads = read_contrastive(model, tokenizer, data, hp, [site], transform=raw_and_encoded, label="STA")
    pos, neg = reads.pos[site], reads.neg[site]
    direction, kept, stats = sta_direction(sae, pos[:, d_in:], neg[:, d_in:], reads.paired, hp.mode, hp.trim)
    caa = (pos[:, :d_in] - neg[:, :d_in]).mean(0) if reads.paired else pos[:, :d_in].mean(0) - neg[:, :d_in].mean(0)
    if hp.scale_to_caa:
        direction = direction * (caa.norm() / direction.norm().clamp_min(1e-12))
    top = torch.argsort(stats["act_diff"].abs() * kept, descending=True)[: min(20, int(kept.sum()))]
    meta = VectorMeta(
        method="sta", model_id=model_id, hidden_size=sites.hidden_size, num_layers=sites.num_layers,
        data_hash=data.source_hash,
        extra={"hparams": hp.__dict__.copy(), "sae": sae.source, "sae_hook": sae.hook_name, "items": reads.count,
               "data_kind": data.kind, "features_kept": int(kept.sum()), "d_sae": sae.d_sae,
               "top_features": [int(i) for i in top], "caa_norm": float(caa.norm()),
               "cosine_with_caa": float(torch.nn.functional.cosine_similarity(direction, caa, dim=0))},
    )
    return SteeringVector({site: direction}, meta)


METHOD = SteeringMethod(
    name="sta",
    hparams=STAHparams,
    make=make_sta,
    description="Steering Target Atoms: CAA restricted to SAE features whose activation and firing differences agree.",
)
