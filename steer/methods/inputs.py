"""Make any registered method's artifact from the inputs it declares (`SteeringMethod.inputs`).

Contrastive methods go through `steer.api.make_vector`; the others get prompts
(`--data`), vectors (`--vectors`) or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steer.config import load_hparams
from steer.errors import DataError
from steer.methods import steering_methods


def make_artifact(
    model: Any,
    tokenizer: Any,
    method: str,
    *,
    data: str | Path | None = None,
    positive: str | Path | None = None,
    negative: str | Path | None = None,
    vectors: list[str] | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    model_id: str | None = None,
) -> Any:
    spec = steering_methods().get(method)
    num_layers = None
    if model is not None:
        from steer.application import model_id_of
        from steer.sites import SiteMap

        model_id = model_id_of(model)
        num_layers = SiteMap(model).num_layers
    if vectors:
        if "vectors" not in spec.inputs:
            raise DataError(f"--vectors is for methods that combine vectors (merge, ablation), not {method}.")
        from steer.vector import SteeringVector

        hparams = load_hparams(spec.hparams, method, model_id=model_id, config=config, overrides=overrides,
                               num_layers=num_layers)
        return spec.make(model, tokenizer, [SteeringVector.load(v) for v in vectors], hparams, model_id)
    if "contrastive" in spec.inputs:
        from steer.api import make_vector

        return make_vector(model, tokenizer, method, data, positive=positive, negative=negative,
                           config=config, overrides=overrides)
    hparams = load_hparams(spec.hparams, method, model_id=model_id, config=config, overrides=overrides,
                           num_layers=num_layers)
    if "prompts" in spec.inputs:
        if data is None:
            raise DataError(f"{method} needs --data FILE of prompts (question/prompt/input items).")
        from steer.io.datasets import load_prompts

        return spec.make(model, tokenizer, load_prompts(data), hparams, model_id)
    if "vectors" in spec.inputs:
        raise DataError(f"{method} needs --vectors FILE FILE ...")
    return spec.make(model, tokenizer, None, hparams, model_id)
