"""DeCo: Dynamic Correction decoding (Wang et al., 2024, "MLLM can see? Dynamic Correction
Decoding for Hallucination Mitigation").

Candidates are the final layer's top-k tokens cut to the top-p nucleus. Among a set of
early layers, the anchor is the layer that puts the highest probability on any
candidate; that probability scales the correction:

    logits = final + alpha * max_prob * anchor_logits, non-candidates set to -inf.

Semantics follow the authors' code (as vendored in EasyEdit); the anchor is chosen per
batch row (the reference handles one row at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer.decoding.early_exit import explicit_layers
from steer.errors import ConfigError


@dataclass
class DecoHParams:
    """DeCo hyper-parameters. Layers are hidden-state indices (0 = embedding output)."""

    # "auto": the band from 62.5% to 87.5% of depth, i.e. the paper's layers 20..28 of 32.
    layers: str | list[int] = "auto"
    alpha: float = 0.6  # strength of the correction
    top_p: float = 0.9  # nucleus of final-layer candidates (threshold_top_p)
    top_k: int = 20  # at most this many candidates (threshold_top_k)

    def validate(self) -> None:
        if isinstance(self.layers, str) and self.layers != "auto":
            raise ConfigError(f"deco layers: {self.layers!r} must be 'auto' or a list of layer indices.")
        if isinstance(self.layers, list) and not self.layers:
            raise ConfigError("deco layers: the list of early layers is empty.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"deco top_p: {self.top_p} must be in (0, 1].")
        if self.top_k < 1:
            raise ConfigError("deco top_k must be at least 1.")


def early_layers(spec: str | list[int], num_layers: int) -> list[int]:
    n = num_layers
    if spec == "auto":
        return list(range(max(1, round(0.625 * n)), min(n - 1, round(0.875 * n)) + 1))
    return explicit_layers(spec, n, "DeCo early layers")


def candidate_mask(final_logits: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, k] of the top-k tokens, keep [B, k] marking those inside the top-p nucleus).

    A row keeps its tokens up to and including the first whose cumulative probability
    reaches top_p (at least one, at most k).
    """
    k = min(top_k, final_logits.shape[-1])
    probs, ids = final_logits.softmax(dim=-1).topk(k, dim=-1)
    cumulative = probs.cumsum(dim=-1)
    threshold = torch.full((final_logits.shape[0], 1), top_p, dtype=cumulative.dtype, device=cumulative.device)
    cutoff = torch.searchsorted(cumulative, threshold, right=False).clamp(max=k - 1)  # [B, 1]
    keep = torch.arange(k, device=ids.device)[None] <= cutoff
    return ids, keep


class Deco:
    """One DeCo step: (final [B, V], early-exit [C, B, V]) -> (logits [B, V], anchor layer [B])."""

    def __init__(self, hparams: DecoHParams, num_layers: int, tied_embeddings: bool) -> None:
        self.hparams = hparams
        self.layers = early_layers(hparams.layers, num_layers)
        self.early_exit_norm = True  # the authors' code reads early layers through the final norm

    def __call__(self, final_logits: torch.Tensor, early_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids, keep = candidate_mask(final_logits, self.hparams.top_k, self.hparams.top_p)
        layers, batch, k = early_logits.shape[0], ids.shape[0], ids.shape[1]
        # Only the k candidates of each row matter after the softmax: each layer's softmax goes
        # into one reused buffer and is gathered there, and the correction is computed at the
        # candidates alone, never over the whole vocabulary (README_2 §9 measures the step).
        probs = torch.empty_like(final_logits)
        early_probs = final_logits.new_empty((layers, batch, k))
        for index in range(layers):
            torch.softmax(early_logits[index], dim=-1, out=probs)
            torch.gather(probs, -1, ids, out=early_probs[index])
        # Tokens outside the nucleus must not pick the anchor: probabilities are >= 0.
        early_probs.masked_fill_(~keep[None], -1.0)
        flat = early_probs.permute(1, 0, 2).reshape(batch, layers * k)
        max_prob, where = flat.max(dim=-1)
        anchor = torch.div(where, k, rounding_mode="floor")
        rows = torch.arange(batch, device=final_logits.device)
        anchor_logits = early_logits[anchor[:, None], rows[:, None], ids]  # [B, k]
        corrected = final_logits.gather(-1, ids) + self.hparams.alpha * max_prob[:, None] * anchor_logits
        # keep[:, 0] is always true, so every row keeps at least one token
        logits = torch.full_like(final_logits, float("-inf"))
        logits.scatter_(-1, ids, corrected.masked_fill(~keep, float("-inf")))
        return logits, torch.tensor(self.layers, device=rows.device)[anchor]
