"""One-file experiments: make vectors, generate over prompt sets and multipliers, evaluate, report.

    steer run examples/experiments/sentiment_caa.yaml            # or: steer.experiment.run_experiment(path)

An experiment file is YAML with steer's keys (`Experiment` below) or EasyEdit2's
top-level keys where they mean the same thing (`alg_name`, `steer_train_dataset`,
`multipliers`, `layers`, `generation_data`, `generation_data_size`, `num_responses`,
`generation_params`, `model_name_or_path`, ...; see `EASYEDIT2_KEYS`). EasyEdit2 keys
with no steer meaning are errors that name the steer key to use instead.

The run writes one report folder, all at once (a failed run leaves no half folder):

    report.json        what was run (resolved config, model, vectors, hparams files, data
                       hashes, steer version) and every metric per prompt set and condition
    generations.jsonl  every generated text with its prompt, vector, layer and multiplier
    summary.md         tables of the metrics, the plots, and the command to run it again
    <metric>.png       each metric against the multiplier, one line per vector and prompt set
    layers_<vector>_<metric>.png   a layer x multiplier heat map (with `sweep_layers: true`)
    vectors/<name>.safetensors     the vectors made (with `save_vectors: true`, the default)

Data names: steer's bundled sets (`DATASETS`) or files, relative to the experiment file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from steer.config import build, config_source, read_yaml
from steer.errors import ConfigError, DataError, SteerError

# ---- what an experiment file holds ----------------------------------------------------------


@dataclass
class VectorSpec:
    """One vector: made by a method from data, or an existing file / library entry."""

    name: str | None = None
    method: str = "caa"
    data: str | None = None  # contrastive data: a bundled name (e.g. sentiment) or a file
    positive: str | None = None  # unpaired texts showing the behaviour (with `negative`)
    negative: str | None = None
    vectors: list[str] = field(default_factory=list)  # inputs of merge / ablation
    vector: str | None = None  # an existing vector: FILE[:MULT] or library:NAME[:MULT]
    config: str | None = None  # hparams YAML (default: hparams/<method>/<model>.yaml)
    hparams: dict[str, Any] = field(default_factory=dict)  # key: value overrides


@dataclass
class PromptSet:
    """Prompts to generate from: a bundled name or a file of prompt/input/question items."""

    data: str = ""
    name: str | None = None
    start: int = 0  # skip the first `start` prompts (e.g. those a vector was made from)
    size: int | None = None  # then take at most `size`


@dataclass
class Experiment:
    """The keys of a steer experiment file (EasyEdit2's equivalents in `EASYEDIT2_KEYS`)."""

    name: str = "experiment"
    model: str | None = None  # None: the bundled default model; "gemma-3-270m"; an HF id, folder or .gguf
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    vectors: list[dict[str, Any]] = field(default_factory=list)  # VectorSpec entries
    method: str | None = None  # shorthand for one vector: method + data/positive/negative/hparams
    data: str | None = None
    positive: str | None = None
    negative: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    layers: list[int | str] | None = None  # where every made vector is read; depth fractions ("40%") allowed
    sweep_layers: bool = False  # also steer each layer of each vector alone: a layer x multiplier grid
    prompts: list[Any] = field(default_factory=list)  # PromptSet entries, or plain names/files
    prompt_size: int | None = None  # default `size` of every prompt set
    multipliers: list[float] = field(default_factory=lambda: [1.0])
    positions: str = "all"  # all, prompt, generated, after_instruction
    baseline: bool = True  # generate unsteered texts too (the reference every table compares with)
    num_responses: int = 1  # texts per prompt and condition (needs do_sample: true above 1)
    generation: dict[str, Any] = field(default_factory=dict)  # steer.generation.GenerationSettings keys
    evaluate: list[str] = field(default_factory=lambda: ["sentiment", "distinctness"])
    evaluate_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # evaluator -> {key: value}
    plot_metrics: list[str] = field(default_factory=list)  # default: the first metric of each evaluator
    save_vectors: bool = True
    output: str | None = None  # the report folder (default: steer-runs/<name>)

    def validate(self) -> None:
        if self.num_responses < 1:
            raise ConfigError("num_responses must be at least 1.")
        if not self.multipliers:
            raise ConfigError("multipliers: give at least one, e.g. [-4, 0, 4].")
        if self.positions not in ("all", "prompt", "generated", "after_instruction"):
            raise ConfigError(f"positions: {self.positions!r} is not one of all, prompt, generated, after_instruction.")
        if not self.evaluate:
            raise ConfigError("evaluate: name at least one evaluator, e.g. [sentiment, distinctness].")


# EasyEdit2 top-level key -> (steer key, how the value maps). None: no steer equivalent (an error).
EASYEDIT2_KEYS: dict[str, str | None] = {
    "alg_name": "method",
    "steer_train_dataset": "vectors[].data",
    "steer_vector_load_dir": "vectors[].vector",
    "model_name_or_path": "model",
    "torch_dtype": "dtype",
    "use_chat_template": "generation.chat_template",
    "system_prompt": "generation.system_prompt",
    "generation_data": "prompts",
    "generation_data_size": "prompt_size",
    "generation_output_dir": "output",
    "generation_params": "generation",
    "generate_orig_output": "baseline",
    "steer_from_end_position": "positions",
    # these name EasyEdit2's own files or folders; steer has no direct equivalent
    "steer_train_hparam_paths": None,
    "apply_steer_hparam_paths": None,
    "steer_vector_output_dir": None,
    "steer_vector_output_dirs": None,
}
_EASYEDIT2_FIX = {
    "steer_train_hparam_paths": "vectors (each entry: method, data, and config: a steer hparams YAML or hparams: {...})",
    "apply_steer_hparam_paths": "multipliers and layers (applying takes no separate hparams file in steer)",
    "steer_vector_output_dir": "output (vectors are saved under <output>/vectors/ when save_vectors is true)",
    "steer_vector_output_dirs": "output (vectors are saved under <output>/vectors/ when save_vectors is true)",
}


def _bundled(name: str) -> Path:
    return Path(str(resources.files("steer.data").joinpath(name)))


def _bundled_datasets() -> dict[str, dict[str, Path]]:
    return {
        "sentiment": {"positive": _bundled("sentiment_positive.jsonl"), "negative": _bundled("sentiment_negative.jsonl")},
        "sentiment_positive": {"prompts": _bundled("sentiment_positive.jsonl")},
        "sentiment_negative": {"prompts": _bundled("sentiment_negative.jsonl")},
        "demo_prompts": {"prompts": _bundled("demo_prompts.jsonl")},
    }


DATASETS = ("sentiment", "sentiment_positive", "sentiment_negative", "demo_prompts")
"""Bundled data names: `sentiment` is contrastive (positive vs negative texts); the others are prompts.
Prompt sets also take the harmful-prompt sets of `steer eval` (advbench, harmbench, donotanswer) when installed."""

# ---- reading the file -----------------------------------------------------------------------


def translate_easyedit2(values: dict[str, Any]) -> dict[str, Any]:
    """EasyEdit2 top-level keys -> steer's, so an EasyEdit2 config runs here where the keys mean the same."""
    out = {k: v for k, v in values.items() if k not in EASYEDIT2_KEYS}
    for key, value in values.items():
        if key not in EASYEDIT2_KEYS:
            continue
        target = EASYEDIT2_KEYS[key]
        if target is None:
            raise ConfigError(f"EasyEdit2 key {key!r} has no steer equivalent; use {_EASYEDIT2_FIX[key]}.")
        if key == "steer_train_dataset":
            names = value if isinstance(value, list) else [value]
            out.setdefault("_datasets", []).extend(str(n) for n in names if n is not None)
        elif key == "steer_vector_load_dir":
            paths = value if isinstance(value, list) else [value]
            out.setdefault("vectors", []).extend({"vector": str(p)} for p in paths if p)
        elif key in ("use_chat_template", "system_prompt"):
            # EasyEdit2 writes system_prompt: '' for none
            out.setdefault("generation", {})[target.split(".", 1)[1]] = None if value == "" else value
        elif key == "generation_params":
            if not isinstance(value, dict):
                raise ConfigError("generation_params must be a mapping of Hugging Face generate arguments.")
            out["generation"] = {**value, **out.get("generation", {})}
        elif key == "steer_from_end_position":
            out["positions"] = "generated" if value else "all"
        elif key == "generation_data":
            out["prompts"] = value if isinstance(value, list) else [value]
        else:
            out[target] = value
    return out


def _easyedit2_vectors(values: dict[str, Any]) -> None:
    """`alg_name` + `steer_train_dataset: [a, b]` -> one vector per dataset, made with that method."""
    datasets = values.pop("_datasets", [])
    if not datasets:
        return
    method = values.pop("method", None) or "caa"
    hparams = values.pop("hparams", {})
    values.setdefault("vectors", [])
    values["vectors"] = [{"name": Path(d).stem, "method": method, "data": d, "hparams": dict(hparams)}
                         for d in datasets] + values["vectors"]


def _all_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(Experiment)] + list(EASYEDIT2_KEYS)


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[Experiment, Path]:
    """The experiment in `path` (steer or EasyEdit2 keys) with `key=value` overrides; returns it and its folder."""
    path = Path(path)
    raw = read_yaml(path)
    raw.update(overrides or {})
    for key in raw:
        if key not in _all_keys():
            close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            mapped = f" ({close[0]} is EasyEdit2's name for steer's {EASYEDIT2_KEYS[close[0]]})" \
                if close and close[0] in EASYEDIT2_KEYS and EASYEDIT2_KEYS[close[0]] else ""
            raise ConfigError(f"{path}: unknown key {key!r}.{hint}{mapped} Steer keys: "
                              f"{', '.join(f.name for f in dataclasses.fields(Experiment))}.")
    values = translate_easyedit2(raw)
    _easyedit2_vectors(values)
    return build(Experiment, values, str(path)), path.resolve().parent


# ---- resolving names and files ---------------------------------------------------------------


def _file(text: str, base: Path, what: str) -> Path:
    candidate = Path(os.path.expanduser(text))
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.exists():
        close = difflib.get_close_matches(text, DATASETS, n=1, cutoff=0.75)
        hint = f" Did you mean the bundled {close[0]!r}?" if close else ""
        extra = "; prompt sets also take advbench, harmbench, donotanswer" if what.startswith("prompts") else ""
        raise DataError(f"{what}: {text!r} is neither a bundled data set ({', '.join(DATASETS)}{extra}) nor a file "
                        f"(looked for {candidate}; paths are relative to the experiment file).{hint}")
    return candidate


def _vector_specs(exp: Experiment) -> list[VectorSpec]:
    entries = list(exp.vectors)
    if exp.method or exp.data or exp.positive:
        entries.insert(0, {"method": exp.method or "caa", "data": exp.data, "positive": exp.positive,
                           "negative": exp.negative, "hparams": dict(exp.hparams)})
    elif exp.hparams:
        raise ConfigError("hparams at the top level go with method/data; inside vectors give each entry its own hparams.")
    if not entries:
        raise ConfigError("The experiment makes no vector: give method and data (e.g. method: caa, data: sentiment), "
                          "a vectors: list, or EasyEdit2's alg_name + steer_train_dataset.")
    specs = []
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"vector": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"vectors[{index}] must be a mapping (method, data, hparams ...) or a vector file name.")
        spec = build(VectorSpec, entry, f"vectors[{index}]")
        if spec.name is None:
            spec.name = _default_name(spec, index)
        specs.append(spec)
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"Two vectors are named {duplicates[0]!r}; give each a different name:.")
    return specs


def _default_name(spec: VectorSpec, index: int) -> str:
    if spec.vector:
        stem = spec.vector.split(":")[1] if spec.vector.startswith("library:") else Path(spec.vector.split(":")[0]).stem
        return stem
    source = spec.data or (Path(spec.positive).stem if spec.positive else f"v{index}")
    return f"{spec.method}-{Path(str(source)).stem}"


def _prompt_sets(exp: Experiment, base: Path) -> list[tuple[PromptSet, list[str], str]]:
    from steer.io.datasets import file_hash, load_prompts

    entries = exp.prompts or ["demo_prompts"]
    out: list[tuple[PromptSet, list[str], str]] = []
    bundled = _bundled_datasets()
    for index, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"data": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"prompts[{index}] must be a data name, a file, or a mapping (data, size, start, name).")
        spec = build(PromptSet, entry, f"prompts[{index}]")
        if not spec.data:
            raise ConfigError(f"prompts[{index}]: give data: a bundled name ({', '.join(DATASETS)}) or a prompt file.")
        size = spec.size if spec.size is not None else exp.prompt_size
        if spec.start < 0 or (size is not None and size < 1):
            raise ConfigError(f"prompts[{index}]: start must be >= 0 and size >= 1.")
        if spec.data in bundled and "prompts" in bundled[spec.data]:
            path = bundled[spec.data]["prompts"]
            prompts, digest = load_prompts(path), file_hash(path)
        elif spec.data in bundled:
            raise DataError(f"prompts[{index}]: {spec.data!r} is contrastive data (for making a vector), not prompts; "
                            "use sentiment_positive, sentiment_negative or demo_prompts.")
        else:
            from steer.evaluate.harmful_prompts import PROMPT_SETS, load_prompt_set

            if spec.data in PROMPT_SETS:
                prompts = load_prompt_set(spec.data)
                digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
            else:
                path = _file(spec.data, base, f"prompts[{index}]")
                prompts, digest = load_prompts(path), file_hash(path)
        prompts = prompts[spec.start:]
        prompts = prompts[:size] if size is not None else prompts
        if not prompts:
            raise DataError(f"prompts[{index}] ({spec.data}) has no prompts after start={spec.start}.")
        spec.name = spec.name or (Path(spec.data).stem if spec.data not in bundled else spec.data)
        out.append((spec, prompts, digest))
    names = [s.name for s, _, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError("Two prompt sets have the same name; give each a name:.")
    return out


# ---- running ---------------------------------------------------------------------------------


@dataclass
class Condition:
    """One column of generations: a vector (or none) at a multiplier, all its layers or one."""

    vector: str | None
    multiplier: float | None
    layer: int | None = None  # None: every layer of the vector

    @property
    def label(self) -> str:
        if self.vector is None:
            return "unsteered"
        where = f" @L{self.layer}" if self.layer is not None else ""
        return f"{self.vector}{where} x{self.multiplier:g}"


def _make_vectors(exp: Experiment, specs: list[VectorSpec], model: Any, tokenizer: Any, base: Path,
                  log: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from steer.methods import steering_methods
    from steer.methods.inputs import make_artifact
    from steer.refs import parse_vector_ref
    from steer.vector import SteeringVector

    bundled = _bundled_datasets()
    vectors: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for spec in specs:
        assert spec.name is not None
        if spec.vector:
            ref = parse_vector_ref(spec.vector)
            file = Path(os.path.expanduser(str(ref.path)))
            if not file.is_absolute() and ref.library_name is None:
                file = base / file  # relative to the experiment file, like every other path in it
            vector = SteeringVector.load(file)
            if ref.multiplier is not None:
                vector = vector * ref.multiplier
            vectors[spec.name] = vector
            records.append({"name": spec.name, "source": spec.vector, "method": vector.meta.method,
                            "layers": vector.layers, "scale": ref.multiplier})
            log(f"vector {spec.name}: loaded {spec.vector} (layers {vector.layers})")
            continue
        method = steering_methods().get(spec.method)  # unknown methods name the closest
        positive = negative = data = None
        if spec.data in bundled and "positive" in bundled[spec.data]:
            positive, negative = bundled[spec.data]["positive"], bundled[spec.data]["negative"]
        elif spec.data in bundled:
            data = bundled[spec.data]["prompts"]  # prompt-input methods (vector_prompt)
        elif spec.data:
            data = _file(spec.data, base, f"vector {spec.name}: data")
        if spec.positive or spec.negative:
            if not (spec.positive and spec.negative):
                raise ConfigError(f"vector {spec.name}: give both positive and negative files.")
            positive = _file(spec.positive, base, f"vector {spec.name}: positive")
            negative = _file(spec.negative, base, f"vector {spec.name}: negative")
        overrides = dict(spec.hparams)
        if exp.layers is not None and "layers" not in overrides:
            overrides["layers"] = list(exp.layers)
        config = str(_file(spec.config, base, f"vector {spec.name}: config")) if spec.config else None
        from steer.application import model_id_of

        source = config_source(spec.method, model_id_of(model), config)
        log(f"vector {spec.name}: {spec.method} (hparams: {source})")
        artifact = make_artifact(model, tokenizer, spec.method, data=data, positive=positive, negative=negative,
                                 vectors=[str(_file(v, base, f"vector {spec.name}: vectors")) for v in spec.vectors] or None,
                                 config=config, overrides=overrides)
        if not isinstance(artifact, SteeringVector):
            raise ConfigError(f"vector {spec.name}: {spec.method} makes a {type(artifact).__name__}, not a steering "
                              "vector; experiments sweep vectors (caa, vector_prompt, sae_feature, sta, merge). "
                              f"Use `steer apply` for {method.name}.")
        vectors[spec.name] = artifact
        records.append({"name": spec.name, "method": spec.method, "hparams_source": source,
                        "hparams_overrides": overrides, "layers": artifact.layers,
                        "data": spec.data or [spec.positive, spec.negative], "data_hash": artifact.meta.data_hash})
    return vectors, records


def _conditions(exp: Experiment, vectors: dict[str, Any]) -> list[Condition]:
    conditions: list[Condition] = [Condition(None, None)] if exp.baseline else []
    for name, vector in vectors.items():
        for multiplier in exp.multipliers:
            conditions.append(Condition(name, float(multiplier)))
        if exp.sweep_layers and len(vector.layers) > 1:
            for layer in vector.layers:
                for multiplier in exp.multipliers:
                    conditions.append(Condition(name, float(multiplier), layer))
    return conditions


def _generation_settings(exp: Experiment) -> Any:
    from steer.generation import GenerationSettings

    values = {"seed": exp.seed, **exp.generation}
    settings = build(GenerationSettings, values, "generation")
    if exp.num_responses > 1 and not settings.do_sample:
        raise ConfigError(f"num_responses: {exp.num_responses} gives identical texts with greedy decoding; "
                          "set generation: {do_sample: true} (and a temperature), or num_responses: 1.")
    return settings


def _score(texts: list[str], prompts: list[str], exp: Experiment, model: Any, tokenizer: Any,
           settings: dict[str, Any]) -> tuple[dict[str, float | None], dict[str, list[float | None]]]:
    from steer.evaluate.base import EVALUATORS, EvalContext, TextGroup

    ctx = EvalContext()
    ctx.add_model(None, model, tokenizer)
    group = TextGroup("texts", texts, prompts)
    metrics: dict[str, float | None] = {}
    per_sample: dict[str, list[float | None]] = {}
    for method in exp.evaluate:
        result = EVALUATORS.get(method).score_texts(group, settings[method], ctx)  # type: ignore[misc]
        for key, value in result.metrics.items():
            metrics[key] = None if isinstance(value, float) and math.isnan(value) else value
        per_sample.update({f"{method}/{k}": v for k, v in result.per_sample.items()})
    return metrics, per_sample


def run_experiment(path: str | Path, *, overrides: dict[str, Any] | None = None, output: str | Path | None = None,
                   overwrite: bool = False, progress: bool = True, model: Any = None, tokenizer: Any = None,
                   log: Callable[[str], None] = print) -> Path:
    """Run the experiment in `path`; returns the report folder. `model`/`tokenizer` skip loading."""
    from tqdm.auto import tqdm

    from steer._version import __version__
    from steer.application import Steer, model_id_of
    from steer.evaluate.base import EVALUATORS
    from steer.evaluate.runner import settings_for
    from steer.generation import generate_texts

    started = time.time()
    exp, base = load_experiment(path, overrides)
    out_dir = Path(output) if output else Path(exp.output) if exp.output else Path("steer-runs") / exp.name
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise SteerError(f"The report folder {out_dir} exists and is not empty; pass --overwrite "
                         "(overwrite=True) or another --out.")
    # everything that can be checked before the model loads, is
    for method in exp.evaluate:
        evaluator = EVALUATORS.get(method)
        if evaluator.score_texts is None:
            raise ConfigError(f"evaluate: {method} scores the model, not generated texts; experiments evaluate "
                              "generations (use `steer apply --data ab.json --multipliers ...` for A/B sweeps).")
    unknown = set(exp.evaluate_settings) - set(exp.evaluate)
    if unknown:
        raise ConfigError(f"evaluate_settings names {sorted(unknown)}, which are not in evaluate: {exp.evaluate}.")
    eval_settings = {m: settings_for(m, exp.evaluate_settings.get(m)) for m in exp.evaluate}
    settings = _generation_settings(exp)
    specs = _vector_specs(exp)
    prompt_sets = _prompt_sets(exp, base)
    bundled = _bundled_datasets()
    for spec in specs:  # data names and files, before paying for the model
        for what, value in (("data", spec.data), ("positive", spec.positive), ("negative", spec.negative),
                            ("config", spec.config), *(("vectors", v) for v in spec.vectors)):
            if value and not (what == "data" and value in bundled):
                _file(value, base, f"vector {spec.name}: {what}")

    if model is None:
        import torch

        from steer.models.loading import load_model

        if exp.device and exp.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {exp.device} but this machine has no CUDA device; set device: cpu "
                              "(or leave device out: cuda when there is one, else the CPU).")
        log(f"loading {exp.model or 'the bundled default model'}")
        model, tokenizer = load_model(exp.model, dtype=exp.dtype, device=exp.device)
    vectors, vector_records = _make_vectors(exp, specs, model, tokenizer, base, log)
    conditions = _conditions(exp, vectors)

    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    total = len(conditions) * len(prompt_sets) * exp.num_responses
    bar = tqdm(total=total, desc="experiment", disable=not progress)
    for set_spec, prompts, _ in prompt_sets:
        baseline_texts: list[list[str]] | None = None
        for condition in conditions:
            texts_per_response: list[list[str]] = []
            for response in range(exp.num_responses):
                run_settings = dataclasses.replace(settings, seed=settings.seed + 10007 * response
                                                   if settings.seed is not None else None)
                if condition.vector is not None and condition.multiplier == 0 and baseline_texts is not None:
                    texts = baseline_texts[response]  # x0 is the unsteered model: generated once
                elif condition.vector is None:
                    texts = generate_texts(model, tokenizer, prompts, run_settings, progress=False)
                else:
                    vector = vectors[condition.vector]
                    if condition.layer is not None:
                        vector = vector.select([condition.layer])
                    steer_ = Steer(vector, condition.multiplier, exp.positions)  # type: ignore[arg-type]
                    texts = generate_texts(model, tokenizer, prompts, run_settings, steers=[steer_], progress=False)
                texts_per_response.append(texts)
                bar.update(1)
            if condition.vector is None:
                baseline_texts = texts_per_response
            flat_texts = [t for texts in texts_per_response for t in texts]
            flat_prompts = [p for _ in texts_per_response for p in prompts]
            metrics, per_sample = _score(flat_texts, flat_prompts, exp, model, tokenizer, eval_settings)
            results.append({"prompt_set": set_spec.name, "condition": condition.label, "vector": condition.vector,
                            "layer": condition.layer, "multiplier": condition.multiplier, "n": len(flat_texts),
                            "metrics": metrics})
            for index, (prompt, text) in enumerate(zip(flat_prompts, flat_texts)):
                rows.append({"prompt_set": set_spec.name, "condition": condition.label, "vector": condition.vector,
                             "layer": condition.layer, "multiplier": condition.multiplier,
                             "response": index // len(prompts), "prompt": prompt, "text": text,
                             **{k: v[index] for k, v in per_sample.items() if index < len(v)}})
        log(f"prompt set {set_spec.name}: {len(prompts)} prompts x {len(conditions)} conditions done")
    bar.close()

    plot_metrics = exp.plot_metrics or _first_metrics(results, exp.evaluate)
    report = {
        "kind": "steer_experiment",
        "steer_version": __version__,
        "experiment_file": str(Path(path)),
        "experiment": dataclasses.asdict(exp),
        "model": model_id_of(model),
        "generation": settings.as_dict(),
        "vectors": vector_records,
        "prompt_sets": [{"name": s.name, "data": s.data, "start": s.start, "n": len(p), "data_hash": d}
                        for s, p, d in prompt_sets],
        "evaluators": {m: {"version": EVALUATORS.get(m).version, "settings": dataclasses.asdict(eval_settings[m])}
                       for m in exp.evaluate},
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    command = " ".join(["steer", "run", str(path), *(f"{k}={v}" for k, v in (overrides or {}).items())])
    _write_report(out_dir, report, rows, vectors if exp.save_vectors else {}, plot_metrics, command, overwrite)
    log(f"wrote {out_dir} ({len(results)} results, {len(rows)} texts, {report['seconds']} s)")
    return out_dir


def _first_metrics(results: list[dict[str, Any]], evaluators: Sequence[str]) -> list[str]:
    """The headline metric of each evaluator (its first), in evaluator order."""
    seen = list(results[0]["metrics"]) if results else []
    headline = {"sentiment": "sentiment", "distinctness": "dist-2", "fluency": "ngram-entropy", "toxicity": "toxicity",
                "ppl": "ppl"}
    chosen = [headline[e] for e in evaluators if headline.get(e) in seen]
    return chosen or seen[:1]


# ---- the report folder -----------------------------------------------------------------------


def _write_report(out_dir: Path, report: dict[str, Any], rows: list[dict[str, Any]], vectors: dict[str, Any],
                  plot_metrics: list[str], command: str, overwrite: bool) -> None:
    """Write every file into a scratch folder beside `out_dir`, then swap it in (no half-written report)."""
    from steer.io.atomic import write_json_atomic, write_jsonl_atomic, write_text_atomic

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        images: list[str] = []
        for metric in plot_metrics:
            if _has_metric(report["results"], metric):
                images.append(plot_curves(scratch / f"{_slug(metric)}.png", report["results"], metric).name)
        for name in {r["vector"] for r in report["results"] if r["layer"] is not None}:
            for metric in plot_metrics:
                if _has_metric(report["results"], metric):
                    images.append(plot_layer_grid(scratch / f"layers_{_slug(name)}_{_slug(metric)}.png",
                                                  report["results"], name, metric).name)
        for name, vector in vectors.items():
            vector.save(scratch / "vectors" / f"{_slug(name)}.safetensors")
        report = {**report, "plots": images}
        write_json_atomic(scratch / "report.json", report)
        write_jsonl_atomic(scratch / "generations.jsonl", rows)
        write_text_atomic(scratch / "summary.md", summary_markdown(report, rows, images, command))
        os.chmod(scratch, 0o777 & ~_umask())
        if out_dir.exists():
            if not overwrite and any(out_dir.iterdir()):
                raise SteerError(f"The report folder {out_dir} appeared during the run; nothing was replaced.")
            old = out_dir.with_name(f".{out_dir.name}-old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(scratch, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(scratch, out_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _umask() -> int:
    from steer.io.atomic import _umask as read_umask

    return read_umask()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "x"


def _has_metric(results: list[dict[str, Any]], metric: str) -> bool:
    return any(r["metrics"].get(metric) is not None for r in results)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_markdown(report: dict[str, Any], rows: list[dict[str, Any]], images: list[str], command: str) -> str:
    """The human-readable page of a report: setup, metric tables per prompt set, plots, examples."""
    exp = report["experiment"]
    lines = [f"# Experiment: {exp['name']}", "",
             f"Model `{report['model']}`, steer {report['steer_version']}, {report['seconds']} s. "
             f"Run again with `{command}`.", "", "## Vectors", "",
             "| name | method | layers | hparams |", "|---|---|---|---|"]
    for v in report["vectors"]:
        lines.append(f"| {v['name']} | {v['method']} | {', '.join(map(str, v['layers']))} | "
                     f"{v.get('hparams_source') or v.get('source')} |")
    gen = report["generation"]
    lines += ["", f"Generation: max_new_tokens {gen['max_new_tokens']}, do_sample {gen['do_sample']}, "
                  f"chat_template {gen['chat_template']}, {exp['num_responses']} response(s) per prompt, "
                  f"positions {exp['positions']}.", ""]
    for prompt_set in report["prompt_sets"]:
        results = [r for r in report["results"] if r["prompt_set"] == prompt_set["name"]]
        metrics = list(dict.fromkeys(k for r in results for k in r["metrics"]))
        lines += [f"## Prompt set {prompt_set['name']} ({prompt_set['n']} prompts from {prompt_set['data']})", "",
                  "| condition | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for r in results:
            lines.append(f"| {r['condition']} | " + " | ".join(_fmt(r["metrics"].get(m)) for m in metrics) + " |")
        lines.append("")
    if images:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    lines += ["## Examples (first prompt of each set, first response)", ""]
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row["prompt_set"], row["condition"])
        if row["response"] or key in seen or row["prompt"] != next(
                r["prompt"] for r in rows if r["prompt_set"] == row["prompt_set"]):
            continue
        seen.add(key)
        text = row["text"].replace("\n", " ").replace("|", "\\|")
        lines.append(f"- **{row['prompt_set']} / {row['condition']}**: {row['prompt']} → {text[:200]}")
    return "\n".join(lines) + "\n"


def plot_curves(path: Path, results: list[dict[str, Any]], metric: str) -> Path:
    """`metric` against the multiplier: one line per (vector, prompt set), the unsteered value dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from steer.io.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    sets = list(dict.fromkeys(r["prompt_set"] for r in results))
    for prompt_set in sets:
        chosen = [r for r in results if r["prompt_set"] == prompt_set]
        color = "grey"
        for name in dict.fromkeys(r["vector"] for r in chosen if r["vector"] and r["layer"] is None):
            points = sorted((r["multiplier"], r["metrics"].get(metric)) for r in chosen
                            if r["vector"] == name and r["layer"] is None and r["metrics"].get(metric) is not None)
            if points:
                label = name if len(sets) == 1 else f"{name} / {prompt_set}"
                (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
                color = line.get_color()
        base = [r["metrics"].get(metric) for r in chosen if r["vector"] is None]
        if base and base[0] is not None:  # dashed, in the colour of the set's (last) curve
            ax.axhline(base[0], linestyle="--", color=color, linewidth=1, alpha=0.7,
                       label="unsteered" if len(sets) == 1 else f"unsteered / {prompt_set}")
    ax.set_xlabel("multiplier")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against the multiplier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def plot_layer_grid(path: Path, results: list[dict[str, Any]], vector: str, metric: str) -> Path:
    """A layer x multiplier heat map of `metric` for one vector steered at one layer at a time (first prompt set)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from steer.io.atomic import atomic_write

    first_set = next(r["prompt_set"] for r in results)
    chosen = [r for r in results if r["vector"] == vector and r["layer"] is not None and r["prompt_set"] == first_set]
    layers = sorted({r["layer"] for r in chosen})
    multipliers = sorted({r["multiplier"] for r in chosen})
    cell = {(r["layer"], r["multiplier"]): r["metrics"].get(metric) for r in chosen}
    grid = [[cell.get((layer, m)) if cell.get((layer, m)) is not None else math.nan for m in multipliers]
            for layer in layers]
    from matplotlib.colors import TwoSlopeNorm

    values = [v for row in grid for v in row if not math.isnan(v)]
    base = next((r["metrics"].get(metric) for r in results if r["vector"] is None and r["prompt_set"] == first_set), None)
    # white at the unsteered value: red cells are above it, blue cells below
    norm = TwoSlopeNorm(vcenter=base, vmin=min(values), vmax=max(values)) \
        if values and base is not None and min(values) < base < max(values) else None
    fig, ax = plt.subplots(figsize=(2.0 + 0.8 * len(multipliers), 1.4 + 0.45 * len(layers)), dpi=100)
    image = ax.imshow(grid, cmap="RdBu_r", aspect="auto", norm=norm)
    ax.set_xticks(range(len(multipliers)), [f"{m:g}" for m in multipliers])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                shade = image.norm(value)
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if shade < 0.15 or shade > 0.85 else "black")
    ax.set_xlabel("multiplier")
    ax.set_ylabel("layer (steered alone)")
    ax.set_title(f"{metric}: vector {vector!r}, prompts {first_set!r}", fontsize=9)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


__all__ = ["DATASETS", "EASYEDIT2_KEYS", "Experiment", "PromptSet", "VectorSpec", "load_experiment",
           "run_experiment", "summary_markdown", "translate_easyedit2"]
