"""OpenAI-style request parsing, vector lookup and errors for `steer serve`.

Every problem with a request becomes an `ApiError`: an HTTP 4xx status and the JSON
body OpenAI's clients expect, `{"error": {"message", "type", "param", "code"}}`, whose
message says how to fix the request. Vector references go through the one resolver,
`steer.refs.parse_vector_ref`; multipliers through `steer.refs.finite_multiplier`.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steer.errors import SteerError
from steer.refs import MultiplierError, finite_multiplier, parse_vector_ref
from steer.serve.engine import DecodingChoice, Engine, RowSteer, Sampling
from steer.sites.hooks import POSITION_POLICIES
from steer.vector import SteeringVector

MAX_STEERS = 16  # vectors on one request
MAX_STOP = 4  # stop strings, as OpenAI
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ApiError(Exception):
    """A request the server refuses: status, message (with the fix), OpenAI error type, param, code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """Server-wide limits a request is checked against."""

    max_tokens: int = 1024  # the most new tokens one request may ask for
    default_max_tokens: int = 256  # when a request does not say
    max_upload_bytes: int = 64 * 1024 * 1024


@dataclass
class VectorEntry:
    vector: SteeringVector
    source: str  # "library", "file FILE" or "upload"
    default_multiplier: float | None = None


class VectorStore:
    """Named vectors (from --vector NAME=FILE and uploads) and library vectors, validated for the engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.named: dict[str, VectorEntry] = {}
        self._library: dict[str, VectorEntry] = {}
        self._lock = threading.Lock()

    def register(self, name: str, vector: SteeringVector, source: str,
                 default_multiplier: float | None = None) -> VectorEntry:
        if not NAME_PATTERN.match(name):
            raise ApiError(400, f"Vector name {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', "
                                "starting with a letter or digit.", param="name", code="invalid_vector_name")
        try:
            self.engine.validate_vector(vector)
        except SteerError as exc:
            raise ApiError(400, f"Vector {name!r} does not fit the served model {self.engine.model_name}: {exc}",
                           param="file", code="vector_model_mismatch") from None
        with self._lock:
            if name in self.named:
                raise ApiError(409, f"A vector named {name!r} exists already ({self.named[name].source}); "
                                    "upload under another name.", param="name", code="vector_exists")
            entry = VectorEntry(vector, source, default_multiplier)
            self.named[name] = entry
        return entry

    def resolve(self, text: str, where: str) -> tuple[VectorEntry, float | None]:
        """(entry, multiplier written in the reference or None) for `library:NAME[:M]` or `NAME[:M]`."""
        try:
            ref = parse_vector_ref(text)
        except MultiplierError as exc:
            raise ApiError(400, f"{where}: {exc}", param=where, code="invalid_multiplier") from None
        except SteerError as exc:  # an unknown library name: the message lists the available ones
            raise ApiError(400, f"{where}: {exc}", param=where, code="unknown_vector") from None
        if ref.library_name is not None:
            return self._library_entry(ref.library_name, ref.path, where), ref.multiplier
        name = str(ref.path) if ref.multiplier is not None else text
        if name in self.named:
            return self.named[name], ref.multiplier
        known = ", ".join(sorted(self.named)) or "none"
        raise ApiError(
            404, f"{where}: no vector named {text!r}. Use library:NAME (GET /v1/vectors lists them), a vector the "
                 f"server was started with (--vector NAME=FILE; here: {known}), or upload one with "
                 "POST /v1/vectors?name=NAME (a safetensors file).", param=where, code="unknown_vector")

    def _library_entry(self, name: str, path: Path, where: str) -> VectorEntry:
        with self._lock:
            cached = self._library.get(name)
        if cached is not None:
            return cached
        from steer import library

        try:
            vector = SteeringVector.load(path)
            self.engine.validate_vector(vector)
        except SteerError as exc:
            raise ApiError(400, f"{where}: library vector {name!r} cannot steer the served model "
                                f"{self.engine.model_name}: {exc}", param=where, code="vector_model_mismatch") from None
        entry = VectorEntry(vector, "library", library.get(name).recommended_multiplier)
        with self._lock:
            self._library[name] = entry
        return entry


@dataclass
class ParsedRequest:
    kind: Literal["chat", "completion"]
    model: str
    prompt_ids: list[int]
    sampling: Sampling
    steers: tuple[RowSteer, ...]
    decoding: DecodingChoice | None
    stream: bool
    include_usage: bool
    stop: list[str] = field(default_factory=list)
    steer_echo: list[dict[str, Any]] = field(default_factory=list)
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens whatever comes (benchmarks)


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float, *,
            low_open: bool = False) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    try:
        number = finite_multiplier(value, key)
    except MultiplierError:
        raise ApiError(400, f"{key}: {value!r} is not a finite number; give a number in "
                            f"{'(' if low_open else '['}{low}, {high}].", param=key, code="invalid_value") from None
    if number < low or number > high or (low_open and number == low):
        raise ApiError(400, f"{key}: {number} is out of range; give a number in "
                            f"{'(' if low_open else '['}{low}, {high}].", param=key, code="invalid_value")
    return number


def _integer(body: dict[str, Any], key: str, *, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key}: {value!r} is not an integer; give a whole number >= {low}.", param=key,
                       code="invalid_value")
    if value < low:
        raise ApiError(400, f"{key}: {value} is too small; give a whole number >= {low}.", param=key,
                       code="invalid_value")
    return value


def _unsupported(body: dict[str, Any]) -> None:
    n = body.get("n", 1)
    if n not in (None, 1):
        raise ApiError(400, f"n: {n!r} completions per request are not supported; send n=1 (send several requests "
                            "at once instead: the server batches them).", param="n", code="unsupported_value")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise ApiError(400, f"{key} is not supported by steer serve; leave it out (repetition_penalty, a "
                                "Hugging Face style penalty, is).", param=key, code="unsupported_parameter")
    if body.get("logprobs") or body.get("top_logprobs") or body.get("echo"):
        raise ApiError(400, "logprobs and echo are not supported by steer serve; leave them out.",
                       param="logprobs", code="unsupported_parameter")
    if body.get("tools") or body.get("functions") or body.get("response_format") not in (None, {"type": "text"}):
        raise ApiError(400, "tools, functions and response_format are not supported by steer serve; leave them "
                            "out.", param="tools", code="unsupported_parameter")


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ApiError(400, f"messages[{index}].content: only text parts ({{'type': 'text', 'text': ...}}) "
                                    "are supported.", param=f"messages[{index}].content", code="invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of text parts.",
                   param=f"messages[{index}].content", code="invalid_value")


def _chat_prompt(body: dict[str, Any], tokenizer: Any) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {'role': ..., 'content': ...} objects.",
                       param="messages", code="invalid_value")
    plain = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{index}] must be an object with 'role' and 'content'.",
                           param=f"messages[{index}]", code="invalid_value")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{index}].role: {role!r} is not supported; use system, user or assistant.",
                           param=f"messages[{index}].role", code="invalid_value")
        plain.append({"role": role, "content": _message_text(message.get("content"), index)})
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "The served model has no chat template; use POST /v1/completions with a plain prompt.",
                       param="messages", code="no_chat_template")
    try:
        ids = tokenizer.apply_chat_template(plain, tokenize=True, add_generation_prompt=True)
    except Exception as exc:  # a template may refuse a role order (e.g. two system messages)
        raise ApiError(400, f"The model's chat template refused these messages: {exc}", param="messages",
                       code="invalid_value") from None
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _completion_prompt(body: dict[str, Any], tokenizer: Any) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt is empty; give some text.", param="prompt", code="invalid_value")
        return [int(i) for i in tokenizer(prompt)["input_ids"]]
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        vocab = len(tokenizer)
        if any(not 0 <= i < vocab for i in prompt):
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab}).", param="prompt", code="invalid_value")
        return list(prompt)
    raise ApiError(400, "prompt must be one string (or one list of token ids); send several prompts as several "
                        "requests at once (the server batches them).", param="prompt", code="invalid_value")


def _steers(body: dict[str, Any], store: VectorStore, chat_suffix: int) -> tuple[tuple[RowSteer, ...],
                                                                                  list[dict[str, Any]]]:
    raw = body.get("steer")
    if raw is None:
        return (), []
    if isinstance(raw, (dict, str)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ApiError(400, "steer must be a list of {'vector': ..., 'multiplier': ..., 'positions': ...} objects.",
                       param="steer", code="invalid_value")
    if len(raw) > MAX_STEERS:
        raise ApiError(400, f"steer: {len(raw)} vectors on one request; the most is {MAX_STEERS}. Merge vectors "
                            "with `steer generate --method merge` first.", param="steer", code="invalid_value")
    steers, echo = [], []
    for index, item in enumerate(raw):
        where = f"steer[{index}]"
        if isinstance(item, str):
            item = {"vector": item}
        if not isinstance(item, dict) or not isinstance(item.get("vector"), str):
            raise ApiError(400, f"{where} must be an object with a 'vector' string, e.g. "
                                '{"vector": "library:sentiment-positive", "multiplier": 3}.', param=where,
                           code="invalid_value")
        unknown = sorted(set(item) - {"vector", "multiplier", "positions"})
        if unknown:
            raise ApiError(400, f"{where}: unknown keys {unknown}; an item takes vector, multiplier and positions.",
                           param=where, code="invalid_value")
        entry, ref_multiplier = store.resolve(item["vector"], f"{where}.vector")
        if "multiplier" in item and ref_multiplier is not None:
            raise ApiError(400, f"{where}: the multiplier is given twice (in {item['vector']!r} and in 'multiplier'); "
                                "give it once.", param=f"{where}.multiplier", code="invalid_multiplier")
        if "multiplier" in item:
            try:
                multiplier = finite_multiplier(item["multiplier"], f"{where}.multiplier")
            except MultiplierError as exc:
                raise ApiError(400, str(exc), param=f"{where}.multiplier", code="invalid_multiplier") from None
        elif ref_multiplier is not None:
            multiplier = ref_multiplier
        else:
            multiplier = entry.default_multiplier if entry.default_multiplier is not None else 1.0
        positions = item.get("positions", "all")
        if positions not in POSITION_POLICIES:
            raise ApiError(400, f"{where}.positions: {positions!r} is not a position policy; use one of "
                                f"{', '.join(POSITION_POLICIES)}.", param=f"{where}.positions",
                           code="invalid_positions")
        steers.append(RowSteer(entry.vector, multiplier, positions, chat_suffix))
        echo.append({"vector": item["vector"], "multiplier": multiplier, "positions": positions})
    return tuple(steers), echo


def _decoding(body: dict[str, Any], engine: Engine) -> DecodingChoice | None:
    raw = body.get("decoding")
    if raw is None or raw == "plain":
        return None
    if isinstance(raw, str):
        mode, overrides = raw, {}
    elif isinstance(raw, dict) and isinstance(raw.get("mode"), str):
        mode, overrides = raw["mode"], {k: v for k, v in raw.items() if k != "mode"}
        if mode == "plain" and not overrides:
            return None
    else:
        raise ApiError(400, 'decoding must be a mode name ("dola", "deco") or an object such as '
                            '{"mode": "dola", "layers": "high"}.', param="decoding", code="invalid_value")
    try:
        return engine.resolve_decoding(mode, overrides)
    except SteerError as exc:
        raise ApiError(400, f"decoding: {exc}", param="decoding", code="invalid_decoding") from None


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them.",
                       param="stop", code="invalid_value")
    return stop


def parse_request(kind: Literal["chat", "completion"], body: Any, engine: Engine, store: VectorStore,
                  limits: Limits) -> ParsedRequest:
    """Check a /v1/chat/completions or /v1/completions body; an ApiError says what to fix."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    model = body.get("model") or engine.model_name
    if model != engine.model_name:
        raise ApiError(404, f"The model {model!r} is not served here; this server serves {engine.model_name!r} "
                            "(GET /v1/models).", param="model", code="model_not_found")
    _unsupported(body)
    tokenizer = engine.tokenizer
    if kind == "chat":
        prompt_ids = _chat_prompt(body, tokenizer)
        from steer.prompts import instruction_suffix_length

        suffix = instruction_suffix_length(tokenizer)
    else:
        prompt_ids = _completion_prompt(body, tokenizer)
        suffix = 1
    asked = _integer(body, "max_completion_tokens", low=1)
    if asked is None:
        asked = _integer(body, "max_tokens", low=1)
    if asked is not None and asked > limits.max_tokens:
        raise ApiError(400, f"max_tokens: {asked} new tokens asked; this server allows at most {limits.max_tokens} "
                            "per request (steer serve --max-tokens-limit).", param="max_tokens",
                       code="max_tokens_too_large")
    context = engine.context_length
    if context is not None and len(prompt_ids) >= context:
        raise ApiError(400, f"The prompt is {len(prompt_ids)} tokens long; the model's context is {context} tokens. "
                            "Shorten the prompt or the conversation.", param="messages" if kind == "chat" else "prompt",
                       code="context_length_exceeded")
    if asked is None:
        max_new = limits.default_max_tokens if context is None else min(limits.default_max_tokens,
                                                                            context - len(prompt_ids))
    else:
        max_new = asked
        if context is not None and len(prompt_ids) + asked > context:
            raise ApiError(400, f"The prompt ({len(prompt_ids)} tokens) plus max_tokens ({asked}) is more than the "
                                f"model's context of {context} tokens; ask for at most "
                                f"{context - len(prompt_ids)} tokens or shorten the prompt.", param="max_tokens",
                           code="context_length_exceeded")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = _integer(body, "top_k", low=0)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, f"seed: {seed!r} is not an integer.", param="seed", code="invalid_value")
    decoding = _decoding(body, engine)
    penalty_default = getattr(decoding.hparams, "repetition_penalty", None) if decoding else None
    penalty = _number(body, "repetition_penalty", penalty_default or 1.0, 0.0, 10.0, low_open=True)
    steers, echo = _steers(body, store, suffix)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false.", param="stream", code="invalid_value")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, "ignore_eos must be true or false.", param="ignore_eos", code="invalid_value")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    sampling = Sampling(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k or None,
                        seed=seed % (2**63) if seed is not None else None,
                        repetition_penalty=penalty if penalty != 1.0 else None)
    return ParsedRequest(kind, model, prompt_ids, sampling, steers, decoding, stream, include_usage, _stop(body), echo,
                         ignore_eos)
