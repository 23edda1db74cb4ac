"""The one way steer reads activations: one forward pass, stopped after the deepest site.

Steering reads (CAA, STA, LM-Steer data, SAE measurements, `pooled_activations`) and
editing reads (ROME/MEMIT/AlphaEdit keys, key statistics) all call `read_forward`. It
records the requested sites and then ends the forward pass at the output of the deepest
block it needs: reading layer 6 of a 30-layer model runs 7 blocks, not 30, and never the
LM head (a fifth of a small model). The stop is an exception raised by a hook that only
this call's context sees (hooks are context-local), caught here; nothing else observes a
partial pass, and no KV cache is involved (`use_cache=False`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steer.sites.hooks import ForwardState, Recorder, intervene
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable

# Which sites come later in a forward pass: block sites by layer; embed first; the final
# norm and LM head last.
_ORDER_OUTSIDE_BLOCKS = {"embed": -1, "final_norm": 10**6, "lm_head": 10**6 + 1}


class _DeepestSiteRead(Exception):
    """Raised after the deepest requested site has been recorded; ends the pass early."""


@dataclass
class _StopAfter:
    site: Site

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        raise _DeepestSiteRead


def stop_site(sites: Sequence[Site]) -> Site | None:
    """Where the pass can end once `sites` are read (None: it must run to the end).

    Within the deepest block we stop at its output, not at the deepest site itself, so the
    order of a block's parts (parallel attention and MLP in GPT-NeoX) never matters.
    """
    deepest = max(sites, key=lambda s: s.layer if s.layer is not None else _ORDER_OUTSIDE_BLOCKS[s.name])
    if deepest.layer is not None:
        return Site("resid_post", deepest.layer)
    if deepest.name == "lm_head":
        return None
    return deepest


def read_forward(
    model: nn.Module,
    inputs: Mapping[str, Any],
    sites: Sequence[Site | str],
    *,
    stop_early: bool = True,
    arch: ArchTable | None = None,
) -> dict[Site, torch.Tensor]:
    """Activations [batch, tokens, dim] at `sites` for one forward pass on `inputs`.

    `inputs` are the model's keyword arguments (input_ids, attention_mask, position_ids ...);
    `use_cache=False` is added. Gradients follow the caller's mode (wrap in
    `torch.no_grad()` or `torch.inference_mode()` when reading).
    """
    from steer.sites.backend import reading_backend  # local: backend.py imports this module

    other = reading_backend(model)
    if other is not None:  # inside an nnsight block a plain forward pass is refused: read through it
        return other.read(model, inputs, sites, arch=arch, stop_early=stop_early)
    site_map = SiteMap(model, arch)
    wanted = list(dict.fromkeys(site_map.normalise(s) for s in sites))
    recorders = [Recorder(site) for site in wanted]
    interventions: list[Any] = list(recorders)
    stop = stop_site(wanted) if stop_early else None
    if stop is not None:
        interventions.append(_StopAfter(stop))  # after the recorders: a site's hooks run in order
    with intervene(site_map.model, interventions, arch):
        try:
            site_map.model(**{**inputs, "use_cache": False})
        except _DeepestSiteRead:
            pass
    return {recorder.site: recorder.values[0] for recorder in recorders}
