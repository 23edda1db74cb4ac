"""The same sites on an nnsight model, for nnsight's remote (NDIF) and vLLM backends.

steer's own generation path uses plain torch hooks: they cost less per step and leave
a user's model untouched (wrapping a model in nnsight replaces each module's
`forward` with a controller). When a model lives behind nnsight instead, because it
runs remotely or on vLLM, these functions read and steer it by the same site names,
resolved from the same architecture table.

    from nnsight import LanguageModel
    nn_model = LanguageModel(hf_model, tokenizer=tok)
    tokens = steered_generate(nn_model, batch, [(vector, 2.0)], max_new_tokens=32)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from steer.application import Steer, SteerLike, as_steer, model_id_of, operation_of
from steer.errors import SteerError
from steer.prompts import forward_inputs
from steer.sites.resolve import Site, SiteMap, unwrap_model


def envoy_at(nn_model: Any, path: str) -> Any:
    """Walk a dotted module path ("model.layers.12.mlp") on an nnsight envoy."""
    envoy = nn_model
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _site_map(nn_model: Any) -> SiteMap:
    if isinstance(nn_model, torch.nn.Module):
        raise SteerError("Expected an nnsight model (nnsight.LanguageModel(hf_model, tokenizer=tok)); "
                         "for a plain model use steer.steering / steer.record.")
    return SiteMap(unwrap_model(nn_model))


def _value(envoy: Any, side: str) -> Any:
    if side == "input":
        return envoy.input
    output = envoy.output
    return output[0] if isinstance(output, tuple) else output


def read(nn_model: Any, inputs: dict[str, torch.Tensor], sites: Sequence[Site | str], **trace_kwargs: Any) -> dict[Site, torch.Tensor]:
    """Activations at `sites` for one forward pass (pass remote=True to run on NDIF)."""
    site_map = _site_map(nn_model)
    wanted = [site_map.normalise(s) for s in sites]
    # nnsight requires modules to be visited in execution order within one trace
    ordered = sorted(wanted, key=lambda s: (s.layer if s.layer is not None else (-1 if s.name == "embed" else 10**6),
                                            ("resid_pre", "attn_out", "mlp_key", "mlp_out", "resid_post").index(s.name)
                                            if s.layer is not None else 0))
    if "attention_mask" in inputs and "position_ids" not in inputs:
        inputs = forward_inputs(inputs)  # left padding: positions from the mask, as steer's own reads do
    saved: dict[Site, Any] = {}
    with nn_model.trace(inputs, **trace_kwargs):
        for site in ordered:
            path, side = site_map.nnsight_path(site)
            saved[site] = _value(envoy_at(nn_model, path), side).save()
    return {site: saved[site] for site in wanted}


def steered_generate(
    nn_model: Any, inputs: dict[str, torch.Tensor], steers: Sequence[SteerLike], **generate_kwargs: Any
) -> torch.Tensor:
    """`generate` with vectors added at their sites on every step (all positions).

    Extra keyword arguments go to nnsight's `generate` (Hugging Face generation
    arguments, and `remote=True` for NDIF).
    """
    site_map = _site_map(nn_model)
    deltas: dict[Site, torch.Tensor] = {}
    for item in steers:
        spec = as_steer(item)
        if not isinstance(spec, Steer) or operation_of(spec.vector) != "add":
            raise SteerError("The nnsight backend applies additive steering vectors only; ablation and "
                             "LM-Steer need the local hook path (steer.steering).")
        if spec.positions != "all" or not isinstance(spec.multiplier, (int, float)):
            raise SteerError("The nnsight backend steers all positions with one multiplier per vector; "
                             "use steer.steering on a local model for position policies and per-row multipliers.")
        spec.vector.validate(site_map, model_id_of(site_map.model))
        for site, direction in spec.vector.directions.items():
            site = site_map.normalise(site)
            delta = float(spec.multiplier) * direction
            deltas[site] = deltas[site] + delta if site in deltas else delta
    device = next(site_map.model.parameters()).device
    dtype = next(site_map.model.parameters()).dtype
    with nn_model.generate(**generate_kwargs) as tracer:
        with tracer.invoke(inputs):
            with tracer.all():  # every decoding step, not only the first forward pass
                for site in sorted(deltas, key=lambda s: (s.layer or 0, s.name)):
                    path, side = site_map.nnsight_path(site)
                    if side != "output":
                        raise SteerError(f"The nnsight backend steers output sites; {site} is an input site.")
                    _value(envoy_at(nn_model, path), side)[:] += deltas[site].to(device, dtype)
        with tracer.invoke():  # a separate invoke: code after an open-ended .all() never runs
            result = tracer.result.save()
    return result
