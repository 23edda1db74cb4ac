"""Prompt steering: no vector, a system prompt or a prefix that asks for the behaviour.

It goes through `steer apply` like a vector so the two can be compared and combined:
`steer apply --steer-prompt "Be very positive."`, or a small JSON "prompt steer" file
written by `steer generate --method prompt text="Be very positive." --out pos.prompt.json`
and passed as `--vector pos.prompt.json` (recognised by its .json extension). Only the
steered run sees the prompt; the unsteered baseline is the bare prompt.

Modes: `system` puts the text in the system message (chat template); `prefix` writes it
before the user's prompt; `auto` is `system` when the chat template is used and `prefix`
otherwise (raw text has no system message).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from steer.errors import ConfigError, VectorError
from steer.io.atomic import write_json_atomic
from steer.methods import SteeringMethod
from steer.vector import VectorMeta

KIND = "prompt_steer"
Mode = Literal["auto", "system", "prefix"]


@dataclass
class PromptHparams:
    text: str = "Be very positive."
    mode: Mode = "auto"

    def validate(self) -> None:
        if not self.text.strip():
            raise ConfigError('prompt: text is empty; give text="Be very positive."')


@dataclass
class PromptSteer:
    """A steering prompt: applied to the inputs, never to activations."""

    text: str
    mode: Mode = "auto"
    meta: VectorMeta = field(default_factory=lambda: VectorMeta(method="prompt"))

    def resolved_mode(self, chat_template: bool) -> Literal["system", "prefix"]:
        if self.mode == "auto":
            return "system" if chat_template else "prefix"
        return self.mode

    def apply(self, prompts: list[str], system_prompt: str | None, chat_template: bool) -> tuple[list[str], str | None]:
        """(prompts, system prompt) as the steered run sees them."""
        if self.resolved_mode(chat_template) == "system":
            return prompts, f"{system_prompt}\n{self.text}" if system_prompt else self.text
        return [f"{self.text} {p}" for p in prompts], system_prompt

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, {"steer.kind": KIND, "text": self.text, "mode": self.mode,
                                        "meta": asdict(self.meta)})

    @classmethod
    def load(cls, path: str | Path) -> PromptSteer:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise VectorError(f"{path} is not a readable prompt-steer JSON file: {exc}") from None
        if not isinstance(raw, dict) or raw.get("steer.kind") != KIND or not isinstance(raw.get("text"), str):
            raise VectorError(f'{path} is not a prompt steer; write one with `steer generate --method prompt '
                              f'text="..." --out {path.name}`.')
        mode = raw.get("mode", "auto")
        if mode not in ("auto", "system", "prefix"):
            raise VectorError(f"{path}: mode {mode!r} is not auto, system or prefix.")
        meta_raw = raw.get("meta") or {}
        meta = VectorMeta(**{k: v for k, v in meta_raw.items() if k in VectorMeta.__dataclass_fields__})
        return cls(raw["text"], mode, meta)


def make_prompt(model: Any, tokenizer: Any, data: None, hp: PromptHparams, model_id: str | None = None) -> PromptSteer:
    return PromptSteer(hp.text, hp.mode, VectorMeta(method="prompt", model_id=model_id, extra={"hparams": hp.__dict__.copy()}))


METHOD = SteeringMethod(
    name="prompt",
    hparams=PromptHparams,
    make=make_prompt,
    description="Prompt steering: a system prompt or prefix, applied by steer apply like a vector (no activations).",
    inputs=("none",),
    needs_model=False,
)
