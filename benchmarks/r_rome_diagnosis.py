"""Why R-ROME's published form edits weakly on the default model: the keys and the plain prompt's NLL.

For each of the first N ZsRE records, one value optimisation (steer.edit.value, delta added
alike in every context row, as ROME and the published R-ROME optimise it), then three rank-one
updates computed here from the keys and C, each written, measured and removed:
    rome       u = C^-1 k* / |.|, dW = (v* - W k) u^T / (u . k)      exact at the plain prompt's key k
    published  dW = (o_0 + delta - W k*) u^T / (u . k*)              R-ROME as its authors' code has it
    mean       dW = delta u^T / (u . k*)                             the same with the prefix-mean target
and, with --fixed, steer's r_rome (edit/r_rome.py: delta optimised with the share s_i it gets).
Printed per record: s_i = u . k_i / u . k* for the plain prompt (row 0) and each prefixed row,
|o_0 - W k*| against |delta|, and the target's mean NLL per token at the plain prompt (and at
the first rephrasing) after each update.

    python benchmarks/r_rome_diagnosis.py --n 4 --fixed
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="the first N ZsRE records")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "zsre",
                                                       "zsre_mend_eval_head.json"))
    parser.add_argument("--fixed", action="store_true", help="also run steer's r_rome on each record")
    args = parser.parse_args()

    import torch

    from steer.edit import Editor, load_requests
    from steer.edit.lowrank import LowRank
    from steer.edit.metrics import mean_nll
    from steer.edit.stats import second_moments
    from steer.edit.templates import context_prefixes
    from steer.edit.value import optimise_value
    from steer.models.loading import load_model
    from steer.sites.resolve import Site

    model, tok = load_model(dtype="float32", device="cpu")
    requests = load_requests(args.data, args.n)
    editor = Editor(model, tok, "r_rome", progress=False)
    ctx, hp, layer = editor.ctx, editor.hparams, editor.hparams.layer
    prefixes = context_prefixes(ctx, hp.context_template_lengths, hp.seed)
    c = second_moments(ctx, [layer], hp)[layer].double()
    weight = ctx.sites.down_weight_as_out_in(layer)
    print(f"layer {layer}, {len(prefixes)} context rows: {prefixes}")
    for i, request in enumerate(requests):
        start = time.perf_counter()
        value = optimise_value(ctx, request, Site("mlp_out", layer), hp)
        rows = ctx.subject_rows([request], prefixes)
        key_site, out_site = Site("mlp_key", layer), Site("mlp_out", layer)
        read = ctx.read_at(rows, [r.subject_last for r in rows], [key_site, out_site])
        keys, outs = read[key_site].double(), read[out_site].double()
        k, k_star, o, w_k_star = keys[0], keys.mean(0), outs[0], outs.mean(0)
        delta = (value.target - value.original).double()
        u = torch.linalg.solve(c, k_star)
        u = u / u.norm()
        updates = {"rome": ((o + delta - o) / (u @ k), u),
                   "published": ((o + delta - w_k_star) / (u @ k_star), u),
                   "mean": (delta / (u @ k_star), u)}
        rephrased = [(p, request.target_new) for p in (request.rephrase_prompts or ())[:1]]
        probes = [(request.prompt, request.target_new), *rephrased]
        shares = [round(float(u @ key / (u @ k_star)), 2) for key in keys]
        print(f"[{i}] {request.prompt!r} -> {request.target_new!r}: value NLL {value.nll:.3f} after {value.steps} steps; "
              f"s_i {shares}; |o_0 - W k*| {float((o - w_k_star).norm()):.1f}, |delta| {float(delta.norm()):.1f}")
        print(f"    before: NLL {[round(x, 2) for x in mean_nll(model, tok, probes)]}")
        for name, (left, right) in updates.items():
            change = LowRank(left.unsqueeze(1).float(), right.unsqueeze(0).float()).dense().to(weight.dtype)
            saved = weight.detach().clone()
            with torch.no_grad():
                weight.add_(change)
            try:
                nll = mean_nll(model, tok, probes)
            finally:
                with torch.no_grad():
                    weight.copy_(saved)
            print(f"    {name:9s}: NLL {[round(x, 2) for x in nll]}")
        if args.fixed:
            edit = editor.apply([request])
            nll = mean_nll(model, tok, probes)
            editor.rollback()
            print(f"    r_rome   : NLL {[round(x, 2) for x in nll]} (value NLL {edit.info['nll']:.3f}, "
                  f"|delta| {float(edit.info['delta'].norm()):.1f})")
        print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
