"""DoLa: Decoding by Contrasting Layers (Chuang et al., ICLR 2024).

next-token logits = log p_final - log p_premature on the tokens the final layer finds
plausible (relative-top filter), where the premature layer is, per step and per row,
the candidate whose early-exit distribution is furthest from the final one.

Semantics follow the reference code (the DoLa repository, Hugging Face transformers
4.4x `_dola_decoding`), with two deliberate differences, both documented in
README_2.md (Contrastive decoding):
- the premature layer is chosen per batch row (HF averages the divergence over the
  batch, so one row's choice depends on the others; identical at batch size 1);
- early-exit logits go through the model's final norm before the LM head (HF 4.4x
  applies only the head; the DoLa repository and DeCo apply the norm too).
  `early_exit_norm: false` drops the norm and reproduces HF's tokens exactly at batch 1
  (tests/data/dola_reference).
The divergence is the reference's: 0.5 * (KL(M||P) + KL(M||Q)) averaged over the
vocabulary, M = (P + Q) / 2. (Textbook JSD puts M second; the reference is kept so
published layer choices reproduce.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from steer.decoding.early_exit import explicit_layers
from steer.errors import ConfigError, SteerError

#: Buckets bigger than this many layers use fixed-size buckets (HF: 20 layers at each end).
_DEEP = 40


@dataclass
class DolaHParams:
    """DoLa hyper-parameters. Layers are hidden-state indices (0 = embedding output)."""

    layers: str | list[int] = "high"  # "low", "high", or explicit candidate premature layers
    premature_layer: int | None = None  # static DoLa: always contrast with this one layer
    relative_top: float = 0.1  # keep tokens with p >= relative_top * max p (log-space filter)
    min_tokens_to_keep: int = 1
    # Applied by steer's generation path after the contrast, as in HF DoLa (the DoLa
    # authors recommend 1.2). `--repetition-penalty` / GenerationSettings win over it.
    repetition_penalty: float | None = 1.2
    # Early exits through the model's final norm, then the head (the DoLa authors' code;
    # DeCo does the same). False: the head alone, as HF transformers <= 4.55 does, which
    # reproduces its tokens exactly at batch 1 (CLI: --dola-no-final-norm).
    early_exit_norm: bool = True

    def validate(self) -> None:
        if isinstance(self.layers, str) and self.layers not in ("low", "high"):
            raise ConfigError(f"dola layers: {self.layers!r} must be 'low', 'high' or a list of layer indices.")
        if isinstance(self.layers, list) and not self.layers:
            raise ConfigError("dola layers: the list of candidate layers is empty.")
        if not 0.0 <= self.relative_top <= 1.0:
            raise ConfigError(f"dola relative_top: {self.relative_top} must be in [0, 1] (0 turns the filter off).")
        if self.min_tokens_to_keep < 1:
            raise ConfigError("dola min_tokens_to_keep must be at least 1.")
        if not isinstance(self.early_exit_norm, bool):
            raise ConfigError(f"dola early_exit_norm: {self.early_exit_norm!r} must be true or false.")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise ConfigError("dola repetition_penalty must be positive (1.0 means none), or null.")


def candidate_layers(spec: str | list[int], num_layers: int, tied_embeddings: bool) -> list[int]:
    """HF's buckets: 'low' = [start, N/2), 'high' = [N/2, N), every 2nd layer, final layer excluded.

    With tied embeddings the embedding output read through the head is nearly the
    identity, so 'low' starts at layer 2 (1 for 2-layer models), as in HF. Models with
    more than 40 layers use [start, 20) and [N - 20, N).
    """
    n = num_layers
    if isinstance(spec, list):
        return explicit_layers(spec, n, "DoLa candidate layers")
    if not tied_embeddings:
        start = 0
    else:
        start = 2 if n > 2 else (1 if n == 2 else 0)
    if spec == "low":
        if start == n // 2:
            layers = [start]
        else:
            layers = list(range(start, n // 2, 2)) if n <= _DEEP else list(range(start, 20, 2))
    elif spec == "high":
        layers = list(range(n // 2, n, 2)) if n <= _DEEP else list(range(n - 20, n, 2))
    else:
        raise ConfigError(f"dola layers: {spec!r} must be 'low', 'high' or a list of layer indices.")
    if not layers:
        raise SteerError(f"The {spec!r} DoLa bucket is empty for this {n}-layer model; give explicit layers.")
    return layers


def reference_divergence(final_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """[C, B] divergence of each candidate's distribution from the final one, written as the reference does.

    Kept as the readable definition (and for tests); `candidate_divergences` computes the
    same quantity several times faster.
    """
    log_p = F.log_softmax(final_logits, dim=-1)[None]  # [1, B, V]
    log_q = F.log_softmax(premature_logits, dim=-1)  # [C, B, V]
    mean = 0.5 * (F.softmax(final_logits, dim=-1)[None] + F.softmax(premature_logits, dim=-1))
    kl1 = F.kl_div(log_p, mean, reduction="none").mean(-1)
    kl2 = F.kl_div(log_q, mean, reduction="none").mean(-1)
    return 0.5 * (kl1 + kl2)


def candidate_divergences(
    log_p: torch.Tensor, early_logits: torch.Tensor, p: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-softmaxes [C, B, V], divergences [C, B]) of the early-exit logits [C, B, V] against the final layer.

    `log_p` [B, V] is the final layer's log-softmax and `p` its softmax (computed here when
    not given). 0.5 * (KL(M||P) + KL(M||Q)) = mean_v(m log m - m (log p + log q) / 2),
    M = (P + Q) / 2: one log over the vocabulary per candidate instead of two KL passes
    (`F.kl_div` with reduction="none" is an order of magnitude slower than a plain log on
    CPU) and a product-sum for the mean. P and Q come from softmax, as in the reference
    (torch's CPU softmax is faster than exp of the log-softmax). m = 0 contributes 0, as
    in kl_div: log m is taken of max(m, tiny), and 0 * finite = 0.

    One candidate at a time into reused buffers: the temporaries of one candidate stay
    in cache (1.7x faster at batch 8 than the whole [C, B, V] at once; README_2 §9).
    """
    if p is None:
        p = log_p.exp()
    candidates, vocab = early_logits.shape[0], early_logits.shape[-1]
    log_q = torch.empty_like(early_logits)
    divergences = early_logits.new_empty(early_logits.shape[:2])
    m, log_m = torch.empty_like(log_p), torch.empty_like(log_p)
    tiny = torch.finfo(m.dtype).tiny
    for index in range(candidates):
        logits = early_logits[index]
        if not logits.is_contiguous():  # a view of the head's output: copy once, not inside both softmaxes
            logits = log_m.copy_(logits)
        torch.softmax(logits, dim=-1, out=m)
        torch.log_softmax(logits, dim=-1, out=log_q[index])
        m.add_(p).mul_(0.5)  # (Q + P) / 2, rounded as the reference rounds it
        torch.clamp_min(m, tiny, out=log_m).log_()
        log_m.mul_(2.0).sub_(log_q[index]).sub_(log_p)  # 2 log m - log p - log q
        divergences[index] = torch.linalg.vecdot(m, log_m)  # sum_v m (2 log m - log p - log q)
    return log_q, divergences.mul_(0.5 / vocab)


def relative_top_mask(final_norm: torch.Tensor, relative_top: float, min_tokens_to_keep: int) -> torch.Tensor:
    """[B, V] True where a token is implausible: log p < log(max p) + log(relative_top), except the top ones."""
    kth_best = final_norm.topk(min_tokens_to_keep, dim=-1).values[..., -1:]
    threshold = torch.minimum(kth_best, final_norm.amax(dim=-1, keepdim=True) + math.log(relative_top))
    return final_norm < threshold


def relative_top_filter(
    final_logits: torch.Tensor,
    base_logits: torch.Tensor,
    relative_top: float = 0.1,
    min_tokens_to_keep: int = 1,
    base_filter_value: float = -1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-normalised (final, base) with implausible tokens masked: -inf in final, a constant in base.

    A token is implausible when log p_final < log(max p_final) + log(relative_top),
    except that the `min_tokens_to_keep` most likely ones always stay. New tensors.
    """
    final_norm = final_logits.log_softmax(dim=-1)
    base_norm = base_logits.log_softmax(dim=-1)
    if relative_top <= 0:
        return final_norm, base_norm
    implausible = relative_top_mask(final_norm, relative_top, min_tokens_to_keep)
    return (final_norm.masked_fill(implausible, float("-inf")),
            base_norm.masked_fill(implausible, base_filter_value))


class Dola:
    """One DoLa step: (final [B, V], early-exit [C, B, V]) -> (logits [B, V], chosen layer [B])."""

    def __init__(self, hparams: DolaHParams, num_layers: int, tied_embeddings: bool) -> None:
        self.hparams = hparams
        self.early_exit_norm = hparams.early_exit_norm
        if hparams.premature_layer is not None:
            self.layers = candidate_layers([hparams.premature_layer], num_layers, tied_embeddings)
        else:
            self.layers = candidate_layers(hparams.layers, num_layers, tied_embeddings)

    def __call__(self, final_logits: torch.Tensor, early_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(final_logits.shape[0], device=final_logits.device)
        # One log-softmax of each input, shared by the divergence and the relative-top filter.
        log_p = final_logits.log_softmax(dim=-1)  # [B, V]
        if len(self.layers) == 1:
            chosen = torch.zeros_like(rows)
            log_base = early_logits[0].log_softmax(dim=-1)
        else:
            with record_function("steer.decoding.divergence"):
                log_q, divergences = candidate_divergences(log_p, early_logits, final_logits.softmax(dim=-1))
                chosen = divergences.argmax(dim=0)
            log_base = log_q[chosen, rows]  # [B, V]: each row's own premature layer
        contrast = log_p - log_base
        if self.hparams.relative_top > 0:
            implausible = relative_top_mask(log_p, self.hparams.relative_top, self.hparams.min_tokens_to_keep)
            # the reference's -inf - (-1e-3): -inf wherever the final layer finds a token implausible
            contrast.masked_fill_(implausible, float("-inf"))
        layers = torch.tensor(self.layers, device=chosen.device)
        return contrast, layers[chosen]
