"""The target value an edited layer should output at the subject's last token.

Shared by ROME (site `mlp_out` of the edited layer) and MEMIT/AlphaEdit (site
`resid_post` of the last edited layer): one function, not a copy per method.

A vector `delta` is added to the activation at the subject's last token of every
prompt, and optimised so that
    NLL(target | context + prompt)                      (averaged over the contexts)
  + kl_factor * KL(p_orig || p_new) on "{subject} is a"  (keep what the subject *is*)
  + v_weight_decay * |delta|^2 / |v_orig|^2             (stay small)
with |delta| clamped to clamp_norm_factor * |v_orig|. The target is v_orig + delta.

The passes run on the context's backend (`steer.sites.backend`): torch hooks, or inside
nnsight's trace, where the delta is swapped into the site's output and gradients flow back
through the trace to it (nnsight runs the model on real tensors, in the caller's thread).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from steer.decoding.early_exit import EarlyExitHead
from steer.edit.context import EditContext, frozen
from steer.edit.hparams import ValueHparams
from steer.edit.requests import EditRequest
from steer.edit.templates import context_prefixes
from steer.edit.tokens import Encoded, encode, pad_right
from steer.sites import backend as backends
from steer.sites.hooks import ForwardState, Recorder
from steer.sites.resolve import Site


@dataclass
class AddAtSubject:
    """Adds `delta` at one (row, column) per batch row; remembers the activation there on the first pass."""

    site: Site
    rows: torch.Tensor
    cols: torch.Tensor
    delta: torch.Tensor
    original: torch.Tensor | None = None
    scales: torch.Tensor | None = None  # [rows]: row i gets scales[i] * delta (None: delta in every row)

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        if self.original is None:
            self.original = hidden[self.rows[0], self.cols[0]].detach().float().clone()
        per_row = self.delta.to(hidden.dtype).expand(len(self.rows), -1)
        if self.scales is not None:
            per_row = per_row * self.scales.to(hidden.dtype).unsqueeze(1)
        add = torch.zeros_like(hidden).index_put((self.rows, self.cols), per_row)
        return hidden + add  # out of place: interventions never modify activations in place


@dataclass(frozen=True)
class ValueResult:
    target: torch.Tensor  # [hidden] v_orig + delta
    original: torch.Tensor  # [hidden] v_orig at the plain prompt
    nll: float  # target NLL at the last step
    steps: int


def weights_fingerprint(model: nn.Module) -> tuple[float, ...]:
    """Float64 sum and sum of squares of every parameter: changes whenever any weight does.

    About 0.2 s on the default model, against 10-20 s for one value optimisation.
    """
    out: list[float] = []
    with torch.no_grad():
        for p in model.parameters():
            d = p.detach().double()
            out += [float(d.sum()), float((d * d).sum())]
    return tuple(out)


class ValueCache:
    """Optimised target values, reused when the same request is optimised on the same weights.

    MEMIT keeps such a cache of its z vectors on disk for the same reason: the single-edit
    and batched runs of MEMIT and AlphaEdit (same layers and value settings) all optimise
    identical targets on the unedited model. The key holds everything the result depends
    on: the request, the site, every value hyper-parameter, the context prefixes and a
    fingerprint of all weights, so an edited model never reuses an unedited model's value.
    Pass one instance to several `Editor(..., value_cache=cache)` to share it.
    """

    def __init__(self) -> None:
        self._store: dict[tuple[Any, ...], ValueResult] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def key(self, model: nn.Module, request: EditRequest, site: Site, hp: ValueHparams,
            prefixes: list[str]) -> tuple[Any, ...]:
        value_fields = {f.name: getattr(hp, f.name) for f in fields(ValueHparams)}
        # the value depends on the prompt, subject and target only (not on the probes)
        return (request.prompt, request.subject, request.target_new, site,
                json.dumps(value_fields, sort_keys=True), tuple(prefixes), weights_fingerprint(model))

    def get(self, key: tuple[Any, ...]) -> ValueResult | None:
        found = self._store.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: tuple[Any, ...], value: ValueResult) -> None:
        self._store[key] = value


def _rows(ctx: EditContext, request: EditRequest, prefixes: list[str]) -> tuple[list[Encoded], int]:
    rewrite = [encode(ctx.tokenizer, request.prompt, request.target_new, request.subject, context=p) for p in prefixes]
    kl = [encode(ctx.tokenizer, f"{request.subject} is a", None, request.subject)]
    return rewrite + kl, len(rewrite)


def optimise_value(ctx: EditContext, request: EditRequest, site: Site, hp: ValueHparams,
                   scales: Sequence[float] | None = None) -> ValueResult:
    """`scales`: one factor per row (each context prefix's rewrite row in order, then the KL row) that
    delta is multiplied by in that row, for an update that will change each row by that multiple of
    delta (R-ROME: u . k_i / u . k*); None: delta itself in every row. The target stays v_orig + delta."""
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    if scales is not None and len(scales) != len(prefixes) + 1:
        raise ValueError(f"optimise_value: {len(scales)} scales for {len(prefixes) + 1} rows (prefixes + KL row)")
    cache: ValueCache | None = ctx.values
    key = cache.key(ctx.sites.model, request, site, hp, prefixes) if cache is not None else None
    if key is not None and scales is not None:
        key = (*key, tuple(float(s) for s in scales))
    if cache is not None and key is not None and (hit := cache.get(key)) is not None:
        return hit
    result = _optimise(ctx, request, site, hp, prefixes, scales)
    if cache is not None and key is not None:
        cache.put(key, result)
    return result


def _loss_positions(rows: list[Encoded], n_rewrite: int, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(rows, columns) whose logits the loss reads, the target token at each, and its rewrite row.

    Each target token is predicted one column earlier; the KL row's subject token comes last.
    """
    owner = [i for i, row in enumerate(rows[:n_rewrite]) for _ in row.target]
    cols = [t - 1 for row in rows[:n_rewrite] for t in row.target]
    tokens = [int(ids[i, c + 1]) for i, c in zip(owner, cols)]
    kl_row = len(rows) - 1
    device = ids.device
    return (torch.tensor(owner + [kl_row], device=device), torch.tensor(cols + [rows[kl_row].subject_last], device=device),
            torch.tensor(tokens, device=device), torch.tensor(owner, device=device))


def _head_kwargs(model: nn.Module) -> dict[str, Any]:
    """Ask the model for the last position's logits only, where its forward allows it (transformers'
    `logits_to_keep`). The loss reads logits at a few positions per row, which `_optimise` computes
    itself; the full [rows, length, vocabulary] head, forward and backward, made each step 1.2x
    slower on SmolLM2 (49k x 576 head; benchmarks/value_optimisation.py)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@dataclass(frozen=True)
class Shifts:
    """What `optimise_shifts` found: per site, the original activation and the optimised delta."""

    originals: list[torch.Tensor]  # [hidden] each site's activation at the plain prompt's subject, before
    deltas: list[torch.Tensor]  # [hidden] each site's optimised delta (detached)
    nll: float
    steps: int


def optimise_shifts(ctx: EditContext, request: EditRequest, sites: Sequence[Site], hp: ValueHparams,
                    prefixes: list[str], *, scales: Sequence[float] | None = None, decay_power: int = 2,
                    desc: str | None = None) -> Shifts:
    """The loss above, minimised over one delta per site, added together in the same passes.

    ROME, R-ROME, MEMIT and AlphaEdit optimise one site; PMET two (the attention and MLP outputs
    of one layer). The weight decay is v_weight_decay * sum_s |delta_s|^decay_power / |v_s|^2
    (steer's methods: 2; PMET's code: 1), and each delta is clamped to clamp_norm_factor * |v_s|.
    """
    rows, n_rewrite = _rows(ctx, request, prefixes)
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    lookup = torch.tensor([r.subject_last for r in rows], device=ctx.device)
    every_row = torch.arange(len(rows), device=ctx.device)
    factors = None if scales is None else torch.tensor([float(s) for s in scales], device=ctx.device)
    deltas = [torch.zeros(ctx.sites.hidden_size, device=ctx.device, requires_grad=True) for _ in sites]
    adds = [AddAtSubject(site, every_row, lookup, delta, scales=factors) for site, delta in zip(sites, deltas)]
    # The loss reads logits at its own positions, through the head, from the final norm's output.
    normed = Recorder(Site("final_norm"), detach=False)
    head = EarlyExitHead(ctx.sites)
    at_rows, at_cols, tokens, owner = _loss_positions(rows, n_rewrite, ids)
    targets_per_row = torch.bincount(owner, minlength=n_rewrite).float()
    optimizer = torch.optim.Adam(deltas, lr=hp.v_lr)
    reference: torch.Tensor | None = None
    nll_value, step = float("inf"), 0
    model = ctx.sites.model
    head_kwargs = _head_kwargs(model)
    bar = tqdm(total=hp.v_num_grad_steps, desc=desc or f"value optimisation at {' + '.join(map(str, sites))}",
               unit="step", leave=False, disable=not ctx.progress)
    running = backends.intervene(model, [*adds, normed], backend=ctx.backend, arch=ctx.sites.arch,
                                 tokenizer=ctx.tokenizer)
    with bar, frozen(model), torch.enable_grad(), running:
        for step in range(1, hp.v_num_grad_steps + 1):
            optimizer.zero_grad()
            normed.values.clear()
            # through the backend of the active blocks: torch hooks, or nnsight's trace
            backends.forward(model, {"input_ids": ids, "attention_mask": mask}, use_cache=False, **head_kwargs)
            log_probs = torch.log_softmax(head.unembed(normed.values[-1][at_rows, at_cols]), dim=-1)
            target_lp = log_probs[:-1].gather(1, tokens.unsqueeze(1)).squeeze(1)
            # mean over each row's target tokens, then over rows (contexts)
            nll = (torch.zeros(n_rewrite, device=ctx.device).index_add(0, owner, -target_lp) / targets_per_row).mean()
            kl_log_probs = log_probs[-1]
            if reference is None:  # every delta is zero on the first pass: these are the original predictions
                reference = kl_log_probs.detach()
            kl = torch.nn.functional.kl_div(kl_log_probs, reference, log_target=True, reduction="sum")
            originals = [add.original for add in adds]
            assert all(o is not None for o in originals)
            decay = sum(hp.v_weight_decay * d.norm() ** decay_power / o.norm() ** 2  # type: ignore[union-attr]
                        for d, o in zip(deltas, originals))
            nll_value = float(nll.detach())
            bar.set_postfix(nll=f"{nll_value:.3f}", refresh=False)
            bar.update(1)
            if nll_value < hp.nll_stop:
                break
            (nll + hp.kl_factor * kl + decay).backward()
            optimizer.step()
            with torch.no_grad():
                for delta, original in zip(deltas, originals):
                    limit = hp.clamp_norm_factor * original.norm()  # type: ignore[union-attr]
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    originals = [add.original for add in adds]
    assert all(o is not None for o in originals)
    return Shifts(originals, [d.detach() for d in deltas], nll_value, step)  # type: ignore[arg-type]


def _optimise(ctx: EditContext, request: EditRequest, site: Site, hp: ValueHparams, prefixes: list[str],
              scales: Sequence[float] | None = None) -> ValueResult:
    found = optimise_shifts(ctx, request, [site], hp, prefixes, scales=scales, desc=f"value optimisation at {site}")
    original, delta = found.originals[0], found.deltas[0]
    return ValueResult(original + delta, original, found.nll, found.steps)
