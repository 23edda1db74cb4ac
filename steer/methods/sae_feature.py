"""SAE-feature steering: add chosen features' decoder directions, each with its own strength.

    vector[site of the SAE] = sum_i strength_i * W_dec[feature_i] / |W_dec[feature_i]|

The SAE comes from a local sae-lens folder, `library:NAME` (SAEs shipped in
vector_library/saes/) or `saelens:RELEASE:SAE_ID` (needs sae-lens and a hub). With unit
directions a strength is a residual-stream norm, comparable across features and SAEs;
`normalize: false` uses the raw decoder rows (what some tools call the feature's own scale).
The vector is an ordinary SteeringVector, so `steer apply` multipliers, position
policies and composition with other methods apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from steer.errors import ConfigError
from steer.methods import SteeringMethod
from steer.sae import load_sae, require_sae
from steer.sites.resolve import SiteMap
from steer.vector import SteeringVector, VectorMeta


@dataclass
class SAEFeatureHparams:
    sae: str | None = None  # folder, library:NAME or saelens:RELEASE:SAE_ID
    features: list[int] = field(default_factory=list)
    # one per feature, or a single value used for every feature
    strengths: list[float] = field(default_factory=lambda: [1.0])
    normalize: bool = True

    def validate(self) -> None:
        if len(self.strengths) not in (1, len(self.features)):
            raise ConfigError(f"sae_feature: give one strength or one per feature ({len(self.features)}); "
                              f"got {len(self.strengths)}.")
        if len(set(self.features)) != len(self.features):
            raise ConfigError("sae_feature: a feature id is listed twice; give each once with its strength.")

    def check_ready(self) -> None:
        """What a run needs but the shipped YAMLs leave to the user (checked when making the vector)."""
        require_sae("sae_feature", self.sae)
        if not self.features:
            raise ConfigError("sae_feature: give the feature ids to steer along, e.g. features=[1234,56].")

    def per_feature_strengths(self) -> list[float]:
        return self.strengths * len(self.features) if len(self.strengths) == 1 else list(self.strengths)


def make_sae_feature(model: Any, tokenizer: Any, data: None, hp: SAEFeatureHparams,
                     model_id: str | None = None) -> SteeringVector:
    hp.check_ready()
    sae = load_sae(require_sae("sae_feature", hp.sae))
    site = sae.site_for(model)
    direction = torch.zeros(sae.d_in)
    for feature, strength in zip(hp.features, hp.per_feature_strengths()):
        sae.check_feature(feature)
        row = sae.direction(feature) if hp.normalize else sae.W_dec[feature].float()
        direction += strength * row.cpu()
    sites = SiteMap(model)
    meta = VectorMeta(method="sae_feature", model_id=model_id, hidden_size=sites.hidden_size,
                      num_layers=sites.num_layers,
                      extra={"hparams": hp.__dict__.copy(), "sae": sae.source, "sae_hook": sae.hook_name,
                             "sae_architecture": sae.architecture, "d_sae": sae.d_sae})
    return SteeringVector({site: direction}, meta)


METHOD = SteeringMethod(
    name="sae_feature",
    hparams=SAEFeatureHparams,
    make=make_sae_feature,
    description="SAE features: add chosen decoder directions of a sae-lens SAE with per-feature strengths.",
    inputs=("none",),
)
