"""One-call helpers behind the CLI, usable from Python."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steer.config import load_hparams
from steer.io.datasets import ContrastiveData, load_contrastive, load_unpaired
from steer.methods import steering_methods
from steer.application import model_id_of
from steer.sites import SiteMap
from steer.vector import SteeringVector


def make_vector(
    model: Any,
    tokenizer: Any,
    method: str,
    data: ContrastiveData | str | Path | None = None,
    *,
    positive: str | Path | None = None,
    negative: str | Path | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    backend: str | Any | None = None,
) -> SteeringVector:
    """Make a steering vector with a registered method (defaults from hparams/<method>/).

    `backend`: "torch" or "nnsight" (or a Backend): how the method's activation reads
    run; None uses the model's default (`steer.sites.backend.set_default_backend`).
    """
    spec = steering_methods().get(method)
    model_id = model_id_of(model)
    hparams = load_hparams(spec.hparams, method, model_id=model_id, config=config, overrides=overrides,
                           num_layers=SiteMap(model).num_layers)
    if isinstance(data, ContrastiveData):
        contrastive = data
    elif positive is not None and negative is not None:
        contrastive = load_unpaired(positive, negative)
    elif data is not None:
        contrastive = load_contrastive(data)
    else:
        from steer.errors import DataError

        raise DataError("Give --data FILE (contrastive items) or --positive FILE --negative FILE.")
    from steer.sites.backend import get_backend

    chosen = get_backend(backend, model)
    if chosen.name == "torch":
        return spec.make(model, tokenizer, contrastive, hparams, model_id)
    # an nnsight block with no interventions: the reads inside go through nnsight
    with chosen.intervene(model, [], tokenizer=tokenizer):
        return spec.make(model, tokenizer, contrastive, hparams, model_id)
