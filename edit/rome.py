"""ROME (Meng et al., 2022): a rank-one update of one MLP down-projection.

With k* the key of the subject's last token (averaged over context prefixes), C the
second moment of the layer's keys, and v* the optimised value at the plain prompt:
    u  = C^-1 k* / |C^-1 k*|
    dW = (v* - W k) u^T / (u . k)      k = the key at the plain prompt
so the layer maps k to v* exactly and keys orthogonal to u under C^-1 are untouched.

R-ROME (Gupta et al., 2024, "Rebuilding ROME") solves the update at k* instead, with a value
optimised for that update: edit/r_rome.py. (The authors' published form, dW = (v* - W k*) u^T /
(u . k*) with v* the plain prompt's output + delta, rewrote 0.51 of 10 ZsRE edits on SmolLM2
where ROME reached 0.97; benchmarks/r_rome_diagnosis.py computes it for comparison.)

`update_keys` chooses the keys ROME's update is solved for (benchmarks/rome_locality.py
measures them on neighbours of the same relation):
    'rome'          u = C^-1 k*, exact at k (the paper's form, above)
    'prompt'        u = C^-1 k,  exact at k: the smallest change under C that maps k to v*
    'every_prefix'  dW = (v* - W k) c^T with c the smallest vector under C with c . k_i = 1
                    for the key k_i of every context row (plain prompt and prefixes):
                    c = C^-1 K^T (K C^-1 K^T)^+ 1, so every row gets the same change the value
                    optimisation added there. Still rank one.
With u built from k* but the update solved at k (ROME), the change is larger under C than
needed whenever k and k* differ (by 1 / cos^2 of their angle under C^-1; a subject at the
prompt's first token is the extreme case), and it spills onto neighbours of the same relation.

Two options (both 0 = off) add keys of other subjects to C, so the update stays exact at the
edit's keys but is smaller along theirs: `preserve_weight` w adds w * mean(k k^T) over the
request's own prompt with each subject of steer's generic list (edit/data/generic-subjects.txt)
in place of its subject, built from the request alone; `mom2_entity_weight` w adds w * C_entity,
the second moment at the ends of capitalised word runs in the corpus (steer.edit.stats).
README_2 section 10 ("ROME's locality") has what they measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources

import torch

from steer.edit.context import EditContext
from steer.edit.errors import EditError
from steer.edit.hparams import ROMEHparams
from steer.edit.lowrank import LowRank
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.stats import entity_second_moments, second_moments
from steer.edit.templates import context_prefixes
from steer.edit.tokens import encode
from steer.edit.value import optimise_value
from steer.sites.resolve import Site


def rank_one_delta(c: torch.Tensor | None, k_star: torch.Tensor, k: torch.Tensor, v_star: torch.Tensor,
                   w_k: torch.Tensor) -> tuple[LowRank, torch.Tensor]:
    """(dW [out, in] as a rank-one LowRank, u): ROME's closed form, solved in float64."""
    k_star, k, v_star, w_k = (t.double() for t in (k_star, k, v_star, w_k))
    u = torch.linalg.solve(c.double(), k_star) if c is not None else k_star
    u = u / u.norm()
    denominator = torch.dot(u, k)
    if denominator.abs() < 1e-12:
        raise EditError("ROME's key is orthogonal to its covariance-adjusted direction; try another layer.")
    return LowRank(((v_star - w_k) / denominator).unsqueeze(1).float(), u.unsqueeze(0).float()), u


def every_key_delta(c: torch.Tensor | None, keys: torch.Tensor, v_star: torch.Tensor,
                    w_k: torch.Tensor) -> tuple[LowRank, torch.Tensor]:
    """(dW [out, in] as a rank-one LowRank, c): dW = (v* - W k) c^T, c = argmin c^T C c s.t. K c = 1.

    `keys` [n, d_in] holds the plain prompt's key first; solved in float64 (pseudo-inverse, so
    repeated keys are fine)."""
    keys, v_star, w_k = keys.double(), v_star.double(), w_k.double()
    c_inv_k = torch.linalg.solve(c.double(), keys.T) if c is not None else keys.T  # [d_in, n]
    gram = keys @ c_inv_k
    if float(torch.linalg.matrix_norm(gram)) < 1e-12:
        raise EditError("ROME's keys are zero at this layer; try another layer.")
    direction = c_inv_k @ (torch.linalg.pinv(gram, hermitian=True) @ torch.ones(len(keys), dtype=gram.dtype))
    return LowRank((v_star - w_k).unsqueeze(1).float(), direction.unsqueeze(0).float()), direction


GENERIC_SUBJECTS = "generic-subjects.txt"


@cache
def generic_subjects() -> tuple[str, ...]:
    """steer's fixed list of named subjects of several kinds (edit/data/generic-subjects.txt)."""
    text = resources.files("steer.edit.data").joinpath(GENERIC_SUBJECTS).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def preserve_prompts(request: EditRequest, subjects: Sequence[str]) -> list[tuple[str, str]]:
    """(prompt, subject) for each of `subjects` put into the request's prompt in place of its subject
    (capitalised at the start of the prompt); the request's own subject is skipped."""
    assert request.subject is not None
    start = request.prompt.lower().find(request.subject.lower())
    if start < 0:
        raise EditError(f"The subject {request.subject!r} does not occur in the prompt {request.prompt!r}.")
    end = start + len(request.subject)
    out = []
    for subject in subjects:
        if subject.lower() == request.subject.lower():
            continue
        written = subject[0].upper() + subject[1:] if start == 0 else subject
        out.append((request.prompt[:start] + written + request.prompt[end:], written))
    return out


def preserve_keys(ctx: EditContext, request: EditRequest, layer: int) -> torch.Tensor:
    """[n, d_in] float64: the key at the subject's last token of the request's prompt with each generic
    subject in place of its own. Built from the request alone, never from evaluation probes."""
    pairs = preserve_prompts(request, generic_subjects())
    rows = [encode(ctx.tokenizer, prompt, None, subject) for prompt, subject in pairs]
    site = Site("mlp_key", layer)
    return ctx.read_at(rows, [r.subject_last for r in rows], [site])[site].double()  # type: ignore[misc]


def key_covariance(ctx: EditContext, request: EditRequest, layer: int, hp: ROMEHparams) -> tuple[torch.Tensor | None, int]:
    """(C the update is solved under, or None without `mom2_adjustment`; how many preserved keys went into it).

    C = E[k k^T] over the corpus + mom2_entity_weight * C_entity + preserve_weight * mean k k^T
    of the generic subjects in the request's prompt (ROME and R-ROME alike)."""
    if not hp.mom2_adjustment:
        if hp.mom2_entity_weight or hp.preserve_weight:
            raise EditError("mom2_entity_weight and preserve_weight add to the key statistics; they need "
                            "mom2_adjustment: true.")
        return None, 0
    c = second_moments(ctx, [layer], hp)[layer].to(ctx.device)
    if hp.mom2_entity_weight:
        c = c + hp.mom2_entity_weight * entity_second_moments(ctx, [layer], hp)[layer].to(ctx.device)
    if not hp.preserve_weight:
        return c, 0
    others = preserve_keys(ctx, request, layer)
    return c + hp.preserve_weight * (others.T @ others) / len(others), len(others)


def apply_rome(ctx: EditContext, requests: Sequence[EditRequest], hp: ROMEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("ROME edits one fact at a time; use MEMIT or AlphaEdit for batches.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    c, preserved = key_covariance(ctx, request, layer, hp)
    value = optimise_value(ctx, request, Site("mlp_out", layer), hp)
    # every context row's key and output at the subject's last token; row 0 is the plain prompt
    rows = ctx.subject_rows([request], prefixes)
    key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
    read = ctx.read_at(rows, [r.subject_last for r in rows], [key_site, out_site])  # type: ignore[misc]
    keys, outs = read[key_site], read[out_site]
    k_star = keys.mean(0)
    k, w_k = keys[0], outs[0]  # the update is exact at the plain prompt's key
    if hp.update_keys == "every_prefix":
        delta, u = every_key_delta(c, keys, value.target, w_k)
    else:
        delta, u = rank_one_delta(c, k if hp.update_keys == "prompt" else k_star, k, value.target, w_k)
    info = {"layer": layer, "k_star": k_star, "k": k, "v_star": value.target, "v_orig": w_k, "u": u,
            "nll": value.nll, "steps": value.steps, "update_keys": hp.update_keys,
            "preserved_keys": preserved}
    return MethodOutput({layer: delta}, info)


METHODS = (
    EditMethod("rome", ROMEHparams, apply_rome, batched=False, needs_stats=True,
               description="rank-one update of one MLP down-projection (Meng et al., 2022)"),
)  # r_rome: edit/r_rome.py
