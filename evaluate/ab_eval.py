"""`ab` in the evaluator registry: CAA A/B behaviour probability (the scorer lives in ab.py,
shared with `steer apply`), unsteered and, when vectors are given, steered."""

from __future__ import annotations

from dataclasses import dataclass

from steer.errors import ConfigError
from steer.evaluate.base import EVALUATORS, EvalContext, Evaluator, Result, mean

VERSION = "1"


@dataclass
class ABSettings:
    data: str | None = None  # an A/B dataset (question, answer_matching_behavior, answer_not_matching_behavior)
    batch_size: int = 8
    chat_template: bool = True
    system_prompt: str | None = None


def _score_model(settings: ABSettings, ctx: EvalContext) -> dict[str, Result]:
    from steer.evaluate.ab import ab_scores
    from steer.io.datasets import file_hash, load_ab
    from steer import Steer

    if not settings.data:
        raise ConfigError("The ab evaluator needs an A/B dataset: --data FILE (or ab.data=FILE).")
    items = load_ab(settings.data)
    model, tokenizer = ctx.model(ctx.override_model)
    runs: list[tuple[float | None, list[Steer]]] = [(None, [])]
    if ctx.steers:
        # CAA scores with the vector acting from the end of the instruction on, as `steer apply` does.
        runs.append((float(ctx.steers[0].multiplier),
                     [Steer(s.vector, s.multiplier, "after_instruction", s.layer_multipliers) for s in ctx.steers]))
    results = {}
    for multiplier, steers in runs:
        scores = ab_scores(model, tokenizer, items, steers=steers, chat_template=settings.chat_template,
                           system_prompt=settings.system_prompt, batch_size=settings.batch_size,
                           progress=ctx.progress)
        results[ctx.group_name(multiplier)] = Result(
            {"ab-p(matching)": mean(scores)}, {"ab-p(matching)": list(scores)},
            {"dataset": settings.data, "dataset_hash": file_hash(settings.data), "items": len(items)})
    return results


EVALUATORS.register("ab", Evaluator(
    "ab", VERSION, "CAA A/B behaviour probability (--data, optional --vector)", ABSettings,
    score_model=_score_model, needs_model=True))
