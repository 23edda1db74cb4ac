"""The serving engine: batched generation where every row carries its own steering.

The HTTP layer (`steer.serve.app`) and the batcher (`steer.serve.batcher`) only see the
`Engine` protocol below: validate a vector, say which rows may share a batch, and run
one batch of `RowRequest`s while reporting each new token through a callback. Nothing
above this module assumes torch hooks, so another backend (nnsight, issue item 7) is a
second implementation of `Engine`.

`TorchEngine` is that interface over a Hugging Face model in this process, steered through
a `steer.sites.backend` backend: "torch" (hooks, the default) or "nnsight" (every pass
an nnsight trace; tested to give the same tokens). It runs its own decoding
loop over the model's forward pass with a KV cache, rather than Hugging Face
`generate` with a streamer, because a server needs four things `generate` does not
give per row:
- per-row sampling settings and a per-row `torch.Generator`, so a seeded request
  samples the same tokens whatever else shares its batch;
- per-row stop (EOS, length, cancelled): a finished or disconnected row leaves the
  batch at the next step (the KV cache, attention mask and steering shrink with it);
- per-row streaming without splitting a batched streamer;
- per-row steering: each vector becomes one `steer.application.Steer` with a per-row
  multiplier list (0 on rows that did not ask for it), one entry per position policy.

Rows are left-padded and given position ids that start at 0 on their first real token,
so a row's tokens are the ones it gets alone (greedy, or seeded sampling), up to float
rounding of batched matrix products (tested on tiny models and measured on the default
model, README_2 "Server").
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Hashable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from steer.application import Steer, model_id_of, steering
from steer.errors import SteerError
from steer.prompts import max_positions, pad_id
from steer.sites.hooks import Intervention
from steer.sites.resolve import SiteMap
from steer.vector import SteeringVector


@dataclass(frozen=True)
class RowSteer:
    """One vector on one row: its multiplier, position policy and the prompt's instruction suffix."""

    vector: SteeringVector
    multiplier: float
    positions: str = "all"
    instruction_suffix: int = 1


@dataclass(frozen=True)
class Sampling:
    """How a row picks tokens. temperature 0 is greedy (top_p, top_k and seed then do nothing)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class DecodingChoice:
    """A contrastive decoding mode and its resolved hyper-parameters (hashable: rows group by it)."""

    mode: str
    hparams: Any

    def key(self) -> Hashable:
        return (self.mode, repr(self.hparams))


@dataclass
class RowRequest:
    """One request's row: prompt token ids, sampling, steering, decoding, and a cancel flag."""

    prompt_ids: list[int]
    sampling: Sampling
    steers: tuple[RowSteer, ...] = ()
    decoding: DecodingChoice | None = None
    stop_token_ids: frozenset[int] = frozenset()
    cancelled: threading.Event = field(default_factory=threading.Event)


# (row index in the batch, new token id or None, finish reason or None). Finish reasons:
# "stop" (an end-of-sequence token; not reported as a token), "length", "cancelled".
TokenSink = Callable[[int, "int | None", "str | None"], None]


class Engine(Protocol):
    """What the server needs from a backend."""

    model_name: str
    context_length: int | None
    tokenizer: Any  # a Hugging Face tokenizer: the server renders chat templates and detokenizes
    stop_token_ids: frozenset[int]  # end-of-sequence ids that end a row

    def resolve_decoding(self, mode: str, overrides: dict[str, Any]) -> DecodingChoice:
        """A checked decoding choice for this model, or a SteerError saying what to fix."""

    def validate_vector(self, vector: SteeringVector) -> None:
        """Raise a SteerError (saying how to fix it) if `vector` cannot steer this model."""

    def batch_key(self, request: RowRequest) -> Hashable:
        """Rows with equal keys may share one batch."""

    def generate(self, rows: Sequence[RowRequest], sink: TokenSink) -> None:
        """Generate every row to its end, calling `sink` for each token and each finish, in step order."""


class _FixedSuffix:
    """A Steer whose `after_instruction` suffix is its row's own (chat and raw prompts can mix)."""

    def __init__(self, steer: Steer, suffix: int) -> None:
        self.steer = steer
        self.suffix = suffix

    def validate(self, sites: SiteMap, model_id: str | None) -> None:
        # the server validated the vector when it was registered; a model-id mismatch warned then
        self.steer.validate(sites, None)

    def interventions(self, sites: SiteMap, instruction_suffix: int) -> list[Intervention]:
        return self.steer.interventions(sites, self.suffix)


def row_steers(rows: Sequence[RowRequest], *, decode_step: bool = False) -> list[_FixedSuffix]:
    """One Steer per (vector, position policy, suffix) used by any row, with per-row multipliers.

    A row that did not ask for a vector gets multiplier 0 in its entry (adding 0 leaves
    its activations bit-for-bit alone); the same vector listed twice on one row adds up.

    `decode_step`: the steers for passes after the prefill, where every position is a new
    token: `prompt` acts nowhere and `generated` / `after_instruction` act everywhere, so
    they become nothing and `all`. The loop enters these after the prefill, so a batch
    that shrinks (rows finished or cancelled) needs no prompt bookkeeping from the hooks.
    """
    groups: dict[tuple[int, str, int], tuple[SteeringVector, list[float]]] = {}
    for index, row in enumerate(rows):
        for item in row.steers:
            positions = item.positions
            if decode_step:
                if positions == "prompt":
                    continue
                positions = "all"
            key = (id(item.vector), positions, item.instruction_suffix)
            if key not in groups:
                groups[key] = (item.vector, [0.0] * len(rows))
            groups[key][1][index] += item.multiplier
    return [
        _FixedSuffix(Steer(vector, multiplier=multipliers, positions=positions), suffix)  # type: ignore[arg-type]
        for (_, positions, suffix), (vector, multipliers) in groups.items()
    ]


def _apply_repetition_penalty(logits: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's rule on one row: seen tokens' logits divided (positive) or multiplied (negative)."""
    seen = logits.gather(-1, history)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(-1, history, seen)


def _sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token from one row's [V] float32 logits: temperature, top-k, top-p, then a draw."""
    scores = logits / sampling.temperature
    if sampling.top_k is not None and 0 < sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores, descending=True)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass strictly above each token
        drop = before >= sampling.top_p
        drop[0] = False  # always keep the most likely token
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _eos_ids(model: nn.Module, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids: the tokenizer's and the generation config's (chat models end turns there)."""
    ids: set[int] = set()
    for value in (getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(i) for i in value)
    return frozenset(ids)


class TorchEngine:
    """`Engine` over a Hugging Face causal LM in this process, steered through a steer.sites backend."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, model_name: str | None = None,
                 backend: str = "torch") -> None:
        from steer.sites.backend import get_backend

        self.backend = get_backend(backend)  # "torch" (hooks) or "nnsight" (steer.sites.backend)
        self.model = model
        self.tokenizer = tokenizer
        self.sites = SiteMap(model)
        self.model_name = model_name or model_id_of(model) or "steer-model"
        self.context_length = max_positions(model)
        self.device = next(model.parameters()).device
        self.pad_id = pad_id(tokenizer)
        parameters = inspect.signature(model.forward).parameters
        self._takes_logits_to_keep = "logits_to_keep" in parameters
        # transformers >= 5.2x names the KV cache argument `cache`; older ones `past_key_values`
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self._lock = threading.Lock()  # one batch at a time on this model
        self.stop_token_ids = _eos_ids(model, tokenizer)

    # ---- the Engine interface ---------------------------------------------------------
    def validate_vector(self, vector: SteeringVector) -> None:
        vector.validate(self.sites, None)  # hidden size and layers; model id mismatches only warn

    def resolve_decoding(self, mode: str, overrides: dict[str, Any]) -> DecodingChoice:
        from steer.decoding import decoding_modes
        from steer.decoding.base import resolve_hparams

        spec = decoding_modes().get(mode)  # an unknown mode: a SteerError listing the known ones
        hparams = resolve_hparams(mode, model_id=model_id_of(self.model), overrides=dict(overrides) or None)
        config = getattr(self.model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        spec.build(hparams, self.sites.num_layers, bool(getattr(text, "tie_word_embeddings", False)))  # checks layers
        return DecodingChoice(mode, hparams)

    def batch_key(self, request: RowRequest) -> Hashable:
        return request.decoding.key() if request.decoding is not None else ("plain",)

    def generate(self, rows: Sequence[RowRequest], sink: TokenSink) -> None:
        if not rows:
            return
        keys = {self.batch_key(r) for r in rows}
        if len(keys) != 1:
            raise SteerError(f"One batch must share one decoding mode; got {sorted(map(str, keys))}.")
        with self._lock, torch.inference_mode():
            self._generate(list(rows), sink)

    # ---- the decoding loop -------------------------------------------------------------
    def _decoding_context(self, choice: DecodingChoice | None) -> Any:
        if choice is None or choice.mode == "plain":
            return nullcontext()
        from steer.decoding import decoding  # local: decoding modes are only paid for when used

        return decoding(self.model, choice.mode, choice.hparams)

    def _forward(self, cache: Any, **inputs: Any) -> tuple[torch.Tensor, Any]:
        """(last-position logits [B, V], the KV cache) of one forward pass."""
        if self._takes_logits_to_keep:
            inputs["logits_to_keep"] = 1
        if cache is not None:
            inputs[self._cache_arg] = cache
        if self.backend.name == "torch":
            out = self.model(**inputs, use_cache=True, return_dict=True)
        else:  # the backend runs the pass with this context's steering blocks (an nnsight trace)
            from steer.sites.backend import forward

            model_inputs = {k: inputs.pop(k) for k in ("input_ids", "attention_mask")}
            out = forward(self.model, model_inputs, **inputs, use_cache=True, return_dict=True)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1, :].float(), new_cache

    def _generate(self, rows: list[RowRequest], sink: TokenSink) -> None:
        device = self.device
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids, dtype=torch.long)
            mask[i, width - len(row.prompt_ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        generators = []
        for row in rows:
            generator = None
            if row.sampling.temperature > 0:
                generator = torch.Generator(device=device)
                seed = row.sampling.seed if row.sampling.seed is not None else int(torch.seed() % (2**63))
                generator.manual_seed(seed)
            generators.append(generator)
        histories = [list(r.prompt_ids) for r in rows]
        counts = [0] * len(rows)
        active = list(range(len(rows)))  # batch position -> index in `rows`
        any_steer = any(r.steers for r in rows)

        with self._decoding_context(rows[0].decoding), ExitStack() as steer_stack:
            # decoding outside steering, as steer.generation does: steering's hooks act first
            if any_steer:
                steer_stack.enter_context(steering(self.model, *row_steers(rows), tokenizer=self.tokenizer,
                                                            backend=self.backend))
            logits, cache = self._forward(None, input_ids=ids, attention_mask=mask, position_ids=positions)
            reenter = any_steer  # after the prefill: the decode-step steers (see row_steers)
            next_position = positions[:, -1] + 1
            while True:
                tokens = self._choose(logits, [rows[i] for i in active], [generators[i] for i in active],
                                      [histories[i] for i in active])
                keep: list[int] = []
                for slot, index in enumerate(active):
                    row, token = rows[index], tokens[slot]
                    if row.cancelled.is_set():
                        sink(index, None, "cancelled")
                        continue
                    if token in row.stop_token_ids:
                        sink(index, None, "stop")
                        continue
                    counts[index] += 1
                    histories[index].append(token)
                    if counts[index] >= row.sampling.max_new_tokens:
                        sink(index, token, "length")
                        continue
                    sink(index, token, None)
                    keep.append(slot)
                if not keep:
                    return
                step_tokens = torch.tensor([[tokens[s]] for s in keep], dtype=torch.long, device=device)
                if len(keep) < len(active):
                    # finished and disconnected rows leave the batch: cache, mask and steering shrink
                    selection = torch.tensor(keep, dtype=torch.long, device=device)
                    cache.batch_select_indices(selection)
                    mask = mask.index_select(0, selection)
                    next_position = next_position.index_select(0, selection)
                    active = [active[s] for s in keep]
                    reenter = True
                if reenter:
                    steer_stack.close()
                    steers = row_steers([rows[i] for i in active], decode_step=True)
                    if steers:
                        steer_stack.enter_context(steering(self.model, *steers, tokenizer=self.tokenizer,
                                                                backend=self.backend))
                    reenter = False
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                logits, cache = self._forward(cache, input_ids=step_tokens, attention_mask=mask,
                                              position_ids=next_position[:, None])
                next_position = next_position + 1

    def _choose(self, logits: torch.Tensor, rows: list[RowRequest], generators: list[torch.Generator | None],
                histories: list[list[int]]) -> list[int]:
        """The next token of every active row; greedy rows without a penalty in one argmax."""
        greedy = logits.argmax(-1).tolist()
        chosen: list[int] = []
        for slot, row in enumerate(rows):
            sampling = row.sampling
            penalty = sampling.repetition_penalty
            if sampling.temperature <= 0 and (penalty is None or penalty == 1.0):
                chosen.append(int(greedy[slot]))
                continue
            scores = logits[slot]
            if penalty is not None and penalty != 1.0:
                history = torch.tensor(histories[slot], dtype=torch.long, device=scores.device)
                scores = _apply_repetition_penalty(scores, history, penalty)
            if sampling.temperature <= 0:
                chosen.append(int(scores.argmax(-1)))
            else:
                chosen.append(_sample(scores, sampling, generators[slot]))
        return chosen
