"""Early-exit logits: an intermediate residual stream read through the model's own head.

Layer numbers here follow Hugging Face's `output_hidden_states` (and the DoLa and DeCo
papers): index 0 is the embedding output, index i (1 <= i < N) is the output of block
i - 1, and N is the final layer. Index i < N is exactly the input of block i, so steer
captures it at `Site("resid_pre", i)`: a pre-hook on block i sees the residual stream
after every output hook of block i - 1 (a steering vector there included), whatever
order the hooks were registered in.
"""

from __future__ import annotations

import torch
from torch import nn

from steer.errors import SiteError
from steer.sites.resolve import Site, SiteMap


def hidden_state_site(index: int, num_layers: int) -> Site:
    """The site holding `hidden_states[index]` (0 = embeddings; < num_layers)."""
    if not 0 <= index < num_layers:
        raise SiteError(
            f"Layer {index} cannot be an early-exit layer of this {num_layers}-layer model: use hidden-state "
            f"indices 0..{num_layers - 1} (0 is the embedding output; {num_layers} is the final layer itself)."
        )
    return Site("resid_pre", index)


def explicit_layers(layers: list[int], num_layers: int, what: str) -> list[int]:
    """Sorted, deduplicated hidden-state indices given by a user, each checked to be an early layer."""
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise SiteError(
            f"{what} {bad} are out of range: use hidden-state indices 0..{num_layers - 1} "
            f"(0 is the embedding output; {num_layers} is the final layer, which the early exits are contrasted with)."
        )
    return sorted(set(layers))


class EarlyExitHead:
    """final norm -> LM head -> the model's own logit post-processing, in float32.

    Post-processing matters for the families that change logits after the head:
    Gemma 2/3 soft-cap them (`final_logit_softcapping`), Granite divides them
    (`logits_scaling`). Without it early-exit logits would live on another scale than
    the final logits they are contrasted with.
    """

    def __init__(self, sites: SiteMap) -> None:
        self.norm: nn.Module = sites.module(Site("final_norm"))
        self.head: nn.Module = sites.module(Site("lm_head"))
        config = getattr(sites.model, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.softcap: float | None = getattr(text_config, "final_logit_softcapping", None)
        self.scaling: float | None = getattr(text_config, "logits_scaling", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.norm(hidden))

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """LM head and post-processing of an activation taken after the final norm."""
        return self.postprocess(self.head(normed))

    def postprocess(self, raw_logits: torch.Tensor) -> torch.Tensor:
        """What the model does to its head's output (scaling, soft-capping), in float32."""
        logits = raw_logits.float()
        if self.scaling not in (None, 1, 1.0):
            logits = logits / float(self.scaling)  # type: ignore[arg-type]
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
