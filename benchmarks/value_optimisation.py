"""Value optimisation (ROME/MEMIT/AlphaEdit): steer's loop vs the plain full-logits loop.

steer's value optimisation computes the LM head only where its loss reads it (the target
tokens and the KL token) and asks the model for one position's logits
(`logits_to_keep=1`). The plain loop below, `full_logits_value`, is the algorithm as
ROME's authors write it: the loss is read from the model's full [rows, length,
vocabulary] logits, so the head runs, forward and backward, at every position.
tests/test_edit.py checks both find the same target on tiny models; this times them side
by side on the default model, a fixed number of Adam steps per request (no early stop),
best of several repeats.

    python benchmarks/value_optimisation.py --requests 3 --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any

import torch

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre", "zsre_mend_eval_head.json")


def full_logits_value(ctx: Any, request: Any, site: Any, hp: Any) -> torch.Tensor:
    """The target value (v_orig + delta), optimised with the model's full logits."""
    from steer.edit.templates import context_prefixes
    from steer.edit.tokens import encode, pad_right, target_log_probs
    from steer.edit.value import AddAtSubject
    from steer.sites.hooks import intervene

    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    rows = [encode(ctx.tokenizer, request.prompt, request.target_new, request.subject, context=p) for p in prefixes]
    rows.append(encode(ctx.tokenizer, f"{request.subject} is a", None, request.subject))
    ids, mask = pad_right(ctx.tokenizer, rows, ctx.device)
    subject = torch.tensor([r.subject_last for r in rows], device=ctx.device)
    delta = torch.zeros(ctx.sites.hidden_size, device=ctx.device, requires_grad=True)
    add = AddAtSubject(site, torch.arange(len(rows), device=ctx.device), subject, delta)
    optimizer, reference = torch.optim.Adam([delta], lr=hp.v_lr), None
    with torch.enable_grad(), intervene(ctx.sites.model, [add]):
        for _ in range(hp.v_num_grad_steps):
            optimizer.zero_grad()
            logits = ctx.sites.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            nll = torch.stack([-lp.mean() for lp in target_log_probs(logits, rows[:-1], ids)]).mean()
            kl_log_probs = torch.log_softmax(logits[-1, subject[-1]], dim=-1)
            reference = kl_log_probs.detach() if reference is None else reference
            kl = torch.nn.functional.kl_div(kl_log_probs, reference, log_target=True, reduction="sum")
            if float(nll.detach()) < hp.nll_stop:
                break
            (nll + hp.kl_factor * kl + hp.v_weight_decay * delta.norm() ** 2 / add.original.norm() ** 2).backward()
            optimizer.step()
            with torch.no_grad():
                limit = hp.clamp_norm_factor * add.original.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    return add.original + delta.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="Adam steps per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA, help="ZsRE or EasyEdit-style requests")
    args = parser.parse_args()

    from steer.edit import Editor, load_requests
    from steer.edit.context import frozen
    from steer.edit.value import optimise_value
    from steer.models.loading import load_model
    from steer.sites.resolve import Site

    model, tokenizer = load_model(dtype="float32", device="cpu")
    editor = Editor(model, tokenizer, "rome", progress=False)
    editor.ctx.values = None  # no value cache: every run optimises
    hp = dataclasses.replace(editor.hparams, v_num_grad_steps=args.steps, nll_stop=0.0)
    requests = load_requests(args.data, args.requests)
    site = Site("mlp_out", hp.layer)
    loops = {"steer": lambda r: optimise_value(editor.ctx, r, site, hp).target,
             "full logits": lambda r: full_logits_value(editor.ctx, r, site, hp)}
    best = dict.fromkeys(loops, float("inf"))
    targets: dict[str, list[torch.Tensor]] = {}
    with frozen(model):
        for _ in range(args.repeats):
            for name, loop in loops.items():
                start = time.perf_counter()
                targets[name] = [loop(r) for r in requests]
                best[name] = min(best[name], time.perf_counter() - start)
    diff = max(float((a - b).abs().max()) for a, b in zip(targets["steer"], targets["full logits"]))
    print(f"{args.requests} requests x {args.steps} steps, best of {args.repeats}, {torch.get_num_threads()} threads")
    for name, seconds in best.items():
        print(f"  {name:>11}: {seconds / (args.requests * args.steps):.3f} s/step")
    print(f"  speed-up: {best['full logits'] / best['steer']:.2f}x; max |target difference| {diff:.2e}")


if __name__ == "__main__":
    main()
