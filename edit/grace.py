"""GRACE (Hartvigsen et al., 2023): lifelong editing with a codebook at one layer, no weight change.

An edit adds codebook entries at layer L's MLP down-projection (an adapter,
`steer.edit.adapters`). Each entry is a key (the down-projection's input at one position)
and a value (a vector that replaces the down-projection's output there); on every later
forward pass a position whose key lies within `eps` (euclidean) of an entry's key gets that
entry's value instead of the down-projection's output, and everything else is computed
exactly as before.

Multi-token answers: the token after position p is predicted from position p, so an answer
of k tokens is produced at k positions, the prompt's last token and the answer's first k-1
tokens. One value at the prompt's last token (EasyEdit's `replacement: replace_last`) must
then carry the whole answer through attention alone, and in teacher forcing or generation
the later positions are computed by the unedited layer. steer keeps one entry per such
position: the keys are read at those positions of `prompt + target` (they do not depend on
the codebook, which acts after the key is read at the same layer), the k values start from
the layer's own outputs there (EasyEdit's `val_init: warm`) and are trained together with
Adam at `lr` on the target's mean token NLL (EasyEdit's GRACE trains its values with Adam at
`edit_lr`), the entries applied during training exactly as at inference, until the NLL is
below `nll_stop` or after `num_steps` steps. At inference each position is matched on its
own key (the nearest entry of an edit within the radius wins), so the edit fires where the
prompt (or its answer so far) is seen, also inside longer text.

Answer entries follow their prompt (`answer_after_prompt`, on by default): the keys at answer
tokens are those of generic tokens (" the", " of", a name's second piece) that unrelated text
also produces, often within eps (on the first 100 ZsRE records at layer 5 of SmolLM2-135M, 37
of 554 locality positions lay within eps 1.0 of an answer entry of some edit, most at distance
< 0.3, so no smaller radius separates them; after 100 sequential edits locality was 0.32). So
entry j > 0 of an edit fires at a position only if its key is within the radius of key j and
entry j - 1 of the same edit fired at the position before: the chain starts where the prompt's
last token matched, and an answer entry never fires on its own. In incremental decoding (a
pass that continues a sequence from its KV cache) "the position before" is the last position of
this context's (thread's or asyncio task's) previous pass, which the entry keeps per batch row,
together with where that pass ended: the chain carries over only into a pass that starts exactly
there (`steer.edit.adapters.pass_start`), so a new prompt, even of one token, starts a new chain.
Called outside a model pass (a block alone, where the start is unknown), a one-token pass
continues the previous pass and a longer one starts anew. With beam search, whose rows are reordered between passes, a chain can
break early (the answer entries then stop firing; the prompt's entry still fires).

Edits at one layer apply in the order they were made (a later edit wins where two overlap);
GRACE's radius splitting and expansion between conflicting entries are not implemented (radii
are fixed at `eps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from steer.edit.adapters import pass_start
from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.hparams import GRACEHparams
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.tokens import encode, pad_right, target_log_probs
from steer.sites.resolve import Site


# Which entries fired at the last position of each row of this context's previous pass, and where
# that pass ended in its sequence (None if unknown), by entry id. A context variable, not a
# thread-local: two asyncio tasks decoding token by token in one thread (a server) each carry their
# own chain, as steering does; a new thread starts empty.
_FIRED: ContextVar[dict[int, tuple[torch.Tensor, int | None]]] = ContextVar("steer_grace_fired", default={})


@dataclass
class CodebookEntry:
    """One GRACE edit: `n` (key, value) pairs; a position within `radius` of a key gets its value.

    With `chain` (GRACEHparams.answer_after_prompt) key j > 0 only matches right after key j - 1
    matched (module docstring)."""

    layer: int
    keys: torch.Tensor  # [n, d_in]
    values: torch.Tensor  # [n, d_out]
    radius: float
    chain: bool = True

    def nearest(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For keys [..., d_in]: (hit [...] bool, index [...] of the nearest entry key), each key on its own."""
        distance = self._distances(keys)
        smallest, index = distance.min(dim=-1)
        return smallest <= self.radius, index

    def _distances(self, keys: torch.Tensor) -> torch.Tensor:
        flat = keys.reshape(-1, keys.shape[-1]).float()
        stored = self.keys.to(keys.device, torch.float32)
        # exact differences (not the matmul shortcut, which loses precision at small radii)
        distance = torch.cdist(flat, stored, compute_mode="donot_use_mm_for_euclid_dist")
        return distance.reshape(*keys.shape[:-1], stored.shape[0])

    def match(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For keys [..., seq, d_in] of one pass: (hit [..., seq], index [..., seq]) with the chain rule."""
        if not self.chain or self.keys.shape[0] == 1:
            return self.nearest(keys)
        shape = keys.shape[:-1]
        rows = keys.reshape(-1, keys.shape[-2], keys.shape[-1]) if keys.dim() >= 2 else keys.view(1, 1, -1)
        distance = self._distances(rows)  # [B, S, n]
        within = distance <= self.radius
        fired = torch.zeros_like(within)
        fired[..., 0] = within[..., 0]
        batch, length, n = within.shape
        start = pass_start()
        previous = _FIRED.get().get(id(self))
        carried = previous[0] if previous is not None else None
        # known start: continue only the pass that ended where this one starts; unknown: one token continues
        continues = (start > 0 and previous is not None and start == previous[1]) if start is not None else length == 1
        if not continues or carried is None or carried.shape != (batch, n) or carried.device != within.device:
            carried = torch.zeros(batch, n, dtype=torch.bool, device=within.device)  # a new sequence
        for j in range(1, n):
            before = torch.cat([carried[:, j - 1:j], fired[:, :-1, j - 1]], dim=1)  # entry j-1 at t-1
            fired[..., j] = within[..., j] & before
        end = start + length if start is not None else None
        _FIRED.set({**_FIRED.get(), id(self): (fired[:, -1].clone(), end)})  # replaced, never mutated: contexts stay apart
        index = distance.masked_fill(~fired, float("inf")).argmin(dim=-1)
        return fired.any(dim=-1).reshape(shape), index.reshape(shape)

    def hits(self, keys: torch.Tensor) -> torch.Tensor:
        """[...] bool: positions whose key is within the radius of one of the entry's keys (no chain)."""
        return self.nearest(keys)[0]

    def __call__(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        hit, index = self.match(keys)
        if not bool(hit.any()):
            return values
        chosen = self.values.to(values.device, values.dtype)[index]
        return torch.where(hit.unsqueeze(-1), chosen, values)


def apply_grace(ctx: EditContext, requests: Sequence[EditRequest], hp: GRACEHparams) -> MethodOutput:
    if len(requests) != 1:
        raise EditError("GRACE adds one codebook entry per edit; edit requests one at a time.")
    request = requests[0]
    layer = ctx.sites.check_layer(hp.layer)
    model = ctx.sites.model
    row = encode(ctx.tokenizer, request.prompt, request.target_new)
    positions = [t - 1 for t in row.target]  # where each target token is predicted from
    ids, mask = pad_right(ctx.tokenizer, [row], ctx.device)
    module = ctx.sites.module(Site("mlp_down_weight", layer))
    keys, original = _down_io(model, module, ids, mask, positions)
    values = original.clone().requires_grad_(True)
    entry = CodebookEntry(layer, keys, values, hp.eps, hp.answer_after_prompt)
    optimizer = torch.optim.Adam([values], lr=hp.lr)
    handle = module.register_forward_hook(lambda _m, args, output: entry(args[0], output))
    losses: list[float] = []
    try:
        with frozen(model), torch.enable_grad():
            for _ in range(hp.num_steps):
                optimizer.zero_grad()
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
                nll = -target_log_probs(logits, [row], ids)[0].mean()
                losses.append(float(nll.detach()))
                if losses[-1] < hp.nll_stop:
                    break
                nll.backward()
                optimizer.step()
    finally:
        handle.remove()
    trained = CodebookEntry(layer, keys.detach().clone(), values.detach().clone(), hp.eps,
                            hp.answer_after_prompt)
    return MethodOutput({}, {"layer": layer, "positions": positions, "keys": trained.keys, "values": trained.values,
                             "key": trained.keys[0], "value": trained.values[0], "original": original,
                             "losses": losses}, adapters=[trained])


def _down_io(model: torch.nn.Module, module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
             positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The down-projection's input and output at `positions` of row 0 ([n, d_in], [n, d_out], float32)."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = module.register_forward_hook(lambda _m, args, output: seen.append((args[0].detach(), output.detach())))
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
    inputs, outputs = seen[0]
    return inputs[0, positions].float(), outputs[0, positions].float()


METHODS = (
    EditMethod("grace", GRACEHparams, apply_grace, batched=False, needs_stats=False,
               description="codebook entries (key, value, radius) at one layer, one per answer position, "
                           "no weight change (Hartvigsen et al., 2023)", needs_subject=False),
)
