"""Perplexity: of generations (per sample and pooled), and of a text corpus (sliding windows).

Generations are scored the DExperts way: the continuation's tokens given the prompt
(plain text, no chat template), so a fluent answer to an odd prompt is not penalised
for the prompt. A corpus (e.g. WikiText-2 test) catches models broken by an edit or a
vector: slide a window of `window` tokens by `stride`, score only the tokens a window
adds, and start every window with BOS when the tokenizer uses one (Gemma needs it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.errors import ConfigError, DataError
from steer.sites.backend import forward as backend_forward
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, TextGroup, mean

VERSION = "1"


@dataclass
class PerplexitySettings:
    model: str | None = None  # default: --model, else the model named in the rows, else the bundled one
    batch_size: int = 8
    condition_on_prompt: bool = True
    corpus: str | None = None  # a UTF-8 text file scored with sliding windows
    window: int = 512
    stride: int = 256
    max_tokens: int | None = None  # score only the corpus's first N tokens (CPU budgets)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("ppl.batch_size must be at least 1.")
        if not 0 < self.stride <= self.window:
            raise ConfigError("ppl: need 0 < stride <= window (e.g. window=512 stride=256).")


def bos_token(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts one in front of plain text, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def sequence_nll(model: Any, sequences: Sequence[list[int]], starts: Sequence[int], batch_size: int = 8,
                 pad_id: int = 0) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, tokens scored) of tokens [start:] of each sequence."""
    import torch

    out: list[tuple[float, int]] = []
    device = _device(model)
    with torch.inference_mode():
        for begin in range(0, len(sequences), batch_size):
            chunk = sequences[begin : begin + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            scored = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, (seq, start) in enumerate(zip(chunk, starts[begin : begin + batch_size])):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
                scored[row, max(start, 1) : len(seq)] = True  # token 0 has no context to predict it from
            # through the backend layer: a steering block may run on nnsight (--backend nnsight)
            logits = backend_forward(model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)},
                                     use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            target = ids[:, 1:].to(device)
            token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            keep = scored[:, 1:].to(device)
            for row in range(len(chunk)):
                out.append((float(-(token_lp[row][keep[row]]).sum()), int(keep[row].sum())))
    return out


def generation_nll(model: Any, tokenizer: Any, texts: Sequence[str], prompts: Sequence[str] | None = None,
                   *, batch_size: int = 8) -> list[tuple[float, int]]:
    """NLL of each text's tokens given its prompt (and BOS where the tokenizer uses one)."""
    from steer.prompts import max_positions, pad_id

    bos = bos_token(tokenizer)
    limit = max_positions(model)
    sequences, starts = [], []
    for index, text in enumerate(texts):
        prompt = prompts[index] if prompts else ""
        head = ([bos] if bos is not None else []) + (
            tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
        body = tokenizer((" " if prompt else "") + text, add_special_tokens=False)["input_ids"] if text else []
        seq = head + body
        if limit and len(seq) > limit:  # keep the end: drop the oldest context first
            seq = seq[len(seq) - limit :]
        sequences.append(seq)
        starts.append(max(len(seq) - len(body), 0) if body else len(seq))
    return sequence_nll(model, sequences, starts, batch_size, pad_id(tokenizer))


def corpus_perplexity(model: Any, tokenizer: Any, text: str, *, window: int = 512, stride: int = 256,
                      max_tokens: int | None = None, batch_size: int = 4) -> tuple[float, int]:
    """(perplexity, tokens scored) of a long text with sliding windows (Hugging Face's recipe)."""
    from steer.prompts import max_positions, pad_id

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise DataError("The corpus has fewer than two tokens; nothing to score.")
    bos = bos_token(tokenizer)
    limit = max_positions(model)
    span = min(window, limit) if limit else window
    span -= 1 if bos is not None else 0
    stride = min(stride, span)
    sequences, starts = [], []
    scored_until = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + span, len(ids))
        new = end - scored_until  # tokens no earlier window scored
        seq = ([bos] if bos is not None else []) + ids[begin:end]
        sequences.append(seq)
        starts.append(len(seq) - new)
        scored_until = end
        if end == len(ids):
            break
    results = sequence_nll(model, sequences, starts, batch_size, pad_id(tokenizer))
    nll = sum(r[0] for r in results)
    count = sum(r[1] for r in results)
    return math.exp(nll / count), count


def _model_name(settings: PerplexitySettings, ctx: EvalContext, group_model: str | None) -> str | None:
    return settings.model or ctx.override_model or group_model


def _score_texts(group: TextGroup, settings: PerplexitySettings, ctx: EvalContext) -> Result:
    name = _model_name(settings, ctx, group.model)
    model, tokenizer = ctx.model(name)
    prompts = group.prompts if settings.condition_on_prompt and group.prompts else None
    nll = generation_nll(model, tokenizer, group.texts, prompts, batch_size=settings.batch_size)
    per_sample: list[float | None] = [math.exp(s / n) if n else None for s, n in nll]
    total_tokens = sum(n for _, n in nll)
    pooled = math.exp(sum(s for s, _ in nll) / total_tokens) if total_tokens else math.nan
    return Result({"ppl": mean(per_sample), "ppl-pooled": pooled}, {"ppl": per_sample},
                  {"model": name or ctx.default_model, "conditioned_on_prompt": prompts is not None,
                   "empty_texts": sum(1 for _, n in nll if n == 0)})


def _score_model(settings: PerplexitySettings, ctx: EvalContext) -> dict[str, Result]:
    if not settings.corpus:
        return {}
    from steer.application import steering

    path = Path(settings.corpus)
    if not path.is_file():
        raise DataError(f"No corpus file at {path}; give ppl.corpus=PATH to a UTF-8 text file (or --corpus).")
    text = path.read_text(encoding="utf-8")
    name = _model_name(settings, ctx, None)
    model, tokenizer = ctx.model(name)
    runs: list[tuple[float | None, list[Any]]] = [(None, [])]
    if ctx.steers:
        runs.append((float(ctx.steers[0].multiplier), ctx.steers))
    results: dict[str, Result] = {}
    for multiplier, steers in runs:
        context = steering(model, *steers, tokenizer=tokenizer) if steers else nullcontext()
        with context:
            ppl, count = corpus_perplexity(model, tokenizer, text, window=settings.window, stride=settings.stride,
                                           max_tokens=settings.max_tokens)
        results[ctx.group_name(multiplier)] = Result(
            {"corpus-ppl": ppl}, {}, {"model": name or ctx.default_model, "corpus": str(path),
                                      "corpus_tokens": count, "bos_per_window": bos_token(tokenizer) is not None})
    return results


EVALUATORS.register("ppl", Evaluator(
    "ppl", VERSION, "perplexity of generations and of a text corpus (--corpus)", PerplexitySettings,
    score_texts=_score_texts, score_model=_score_model, needs_model=True))
