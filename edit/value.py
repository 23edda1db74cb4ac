"""The target value an edited layer should output at the subject's last token.

Shared by ROME (site `mlp_out` of the edited layer) and MEMIT/AlphaEdit (site
`resid_post` of the last edited layer): one function, not a copy per method.

A vector `delta` is added to the activation at the subject's last token of every
prompt, and optimised so that
    NLL(target | context + prompt)                      (averaged over the contexts)
  + kl_factor * KL(p_orig || p_new) on "{subject} is a"  (keep what the subject *is*)
  + v_weight_decay * |delta|^2 / |v_orig|^2             (stay small)
with |delta| clamped to clamp_norm_factor * |v_orig|. The target is v_orig + delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.hparams import ValueHparams
from steer.edit.requests import EditRequest
from steer.edit.templates import context_prefixes
from steer.edit.tokens import Encoded, encode, pad_right, target_log_probs
from steer.sites.hooks import ForwardState, intervene
from steer.sites.resolve import Site


@dataclass
class AddAtSubject:
    """Adds `delta` at one (row, column) per batch row; remembers the activation there on the first pass."""

    site: Site
    rows: torch.Tensor
    cols: torch.Tensor
    delta: torch.Tensor
    original: torch.Tensor | None = None

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        if self.original is None:
            self.original = hidden[self.rows[0], self.cols[0]].detach().float().clone()
        add = torch.zeros_like(hidden).index_put((self.rows, self.cols), self.delta.to(hidden.dtype).expand(len(self.rows), -1))
        return hidden + add  # out of place: interventions never modify activations in place


@dataclass(frozen=True)
class ValueResult:
    target: torch.Tensor  # [hidden] v_orig + delta
    original: torch.Tensor  # [hidden] v_orig at the plain prompt
    nll: float  # target NLL at the last step
    steps: int


def _rows(ctx: EditContext, request: EditRequest, prefixes: list[str]) -> tuple[list[Encoded], int]:
    rewrite = [encode(ctx.tokenizer, request.prompt, request.target_new, request.subject, context=p) for p in prefixes]
    kl = [encode(ctx.tokenizer, f"{request.subject} is a", None, request.subject)]
    return rewrite + kl, len(rewrite)


def optimise_value(ctx: EditContext, request: EditRequest, site: Site, hp: ValueHparams) -> ValueResult:
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    rows, n_rewrite = _rows(ctx, request, prefixes)
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    lookup = torch.tensor([r.subject_last for r in rows], device=ctx.device)
    delta = torch.zeros(ctx.sites.hidden_size, device=ctx.device, requires_grad=True)
    add = AddAtSubject(site, torch.arange(len(rows), device=ctx.device), lookup, delta)
    optimizer = torch.optim.Adam([delta], lr=hp.v_lr)
    kl_row = len(rows) - 1
    reference: torch.Tensor | None = None
    nll_value, step = float("inf"), 0
    model = ctx.sites.model
    with frozen(model), torch.enable_grad(), intervene(model, [add]):
        for step in range(1, hp.v_num_grad_steps + 1):
            optimizer.zero_grad()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            nll = torch.stack([-lp.mean() for lp in target_log_probs(logits, rows[:n_rewrite], ids)]).mean()
            kl_log_probs = torch.log_softmax(logits[kl_row, lookup[kl_row]].float(), dim=-1)
            if reference is None:  # delta is zero on the first pass: these are the original predictions
                reference = kl_log_probs.detach()
            kl = torch.nn.functional.kl_div(kl_log_probs, reference, log_target=True, reduction="sum")
            assert add.original is not None
            decay = hp.v_weight_decay * delta.norm() ** 2 / add.original.norm() ** 2
            nll_value = float(nll.detach())
            if nll_value < hp.nll_stop:
                break
            (nll + hp.kl_factor * kl + decay).backward()
            optimizer.step()
            with torch.no_grad():
                limit = hp.clamp_norm_factor * add.original.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    assert add.original is not None
    return ValueResult(add.original + delta.detach(), add.original, nll_value, step)
