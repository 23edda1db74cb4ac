"""EasyEdit's editing API on steer's Editor: scripts written for EasyEdit run after changing the import.

    from steer.edit.easyedit import BaseEditor, ROMEHyperParams     # was: from easyeditor import ...
    hparams = ROMEHyperParams.from_hparams("./hparams/ROME/llama-7b")
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, weights_copy = editor.edit(prompts=..., target_new=..., subject=...)

What maps onto what:
- `XHyperParams.from_hparams(path)` reads EasyEdit's YAML (".yaml" is added when missing,
  as EasyEdit does) and checks `alg_name`. `alg_name` picks steer's method (ROME -> rome, R-ROME ->
  r_rome, MEMIT -> memit, EMMET -> emmet, AlphaEdit -> alphaedit, LoRA -> lora, KN -> kn, GRACE -> grace, WISE -> wise,
  PMET -> pmet, IKE -> ike (whose `train_ds` becomes the demonstration pool), FT -> ft_l for `objective_optimization:
  prompt_last` and ft_m for `target_new`, also "FT-L"/"FT-M"). `model_name` is loaded with
  `steer.load_model` (a hub id from the local cache, a folder or a .gguf file), or is an
  already loaded `(model, tokenizer)` pair, as in EasyEdit.
- The keys in `RENAMED` become steer's hyper-parameters for the method; every other
  setting comes from steer's own file for this model (`hparams/<method>/<model>.yaml`,
  else the depth-relative `default.yaml`), so an EasyEdit file only overrides what it says.
  Keys of steer's own dataclass are accepted too (e.g. `corpus`, `mom2_seq_len`).
- The keys in `IGNORED` are accepted and have no effect, each for the reason given there
  (a module path steer's site layer finds by itself, a device setting, statistics that
  need a data set that is not available offline). A value that would change the
  algorithm (`fact_token` other than subject_last, a `rewrite_module_tmp` that is not the
  MLP down-projection) is an error instead. Any other key is an error naming the closest
  known key.
- `edit(...)` returns `(metrics, edited_model, weights_copy)` with EasyEdit's layout: per
  edit `{'case_id', 'requested_rewrite', 'time', 'pre', 'post'}`, where pre/post hold
  `rewrite_acc` and `rephrase_acc` as lists, `locality` as `{key}_output` (argmax tokens)
  plus, after the edit, `{key}_acc` (agreement with the unedited predictions), and
  `portability` as `{key}_acc` lists (one value per probe, the best of its aliases).
  As in EasyEdit, `sequential_edit=False` restores the weights after measuring each edit
  (the returned model is unedited) and `sequential_edit=True` keeps every edit.
  `weights_copy` maps parameter names to their values before the call's first edit, so
  copying them back undoes the call (EasyEdit's undoes only its last edit); steer's
  `editor.editor.rollback()` does the same bitwise.
- `keep_original_weight` is accepted and ignored, as in current EasyEdit (restoring is
  decided by `sequential_edit`). `subject` may be left out for methods that do not edit at
  the subject (FT). EasyEdit's `./logs/results.json` is not written: the summary it logs
  is printed (verbose=True) and returned by `summary_metrics(metrics)`.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steer.config import read_yaml
from steer.edit.editor import AppliedEdit, Editor
from steer.edit.errors import EditError
from steer.edit.methods import edit_methods
from steer.edit.requests import EditRequest, build_requests
from steer.errors import ConfigError, closest

# EasyEdit key -> steer key, per steer method ("layers" becomes ROME's single `layer`)
_VALUE = {"v_num_grad_steps": "v_num_grad_steps", "v_lr": "v_lr", "v_weight_decay": "v_weight_decay",
          "clamp_norm_factor": "clamp_norm_factor", "kl_factor": "kl_factor",
          "context_template_length_params": "context_template_lengths", "layers": "layers"}
RENAMED: dict[str, dict[str, str]] = {
    "rome": {**_VALUE, "layers": "layer", "mom2_adjustment": "mom2_adjustment"},
    "memit": {**_VALUE, "mom2_update_weight": "mom2_update_weight"},
    "alphaedit": {**_VALUE, "mom2_update_weight": "mom2_update_weight", "nullspace_threshold": "nullspace_threshold",
                  "L2": "L2"},
    "ft_l": {"layers": "layers", "lr": "lr", "num_steps": "num_steps", "norm_constraint": "norm_constraint"},
}
RENAMED["ft_m"] = RENAMED["ft_l"]
RENAMED["r_rome"] = RENAMED["rome"]
RENAMED["kn"] = {"steps": "steps", "adaptive_threshold": "adaptive_threshold"}
RENAMED["grace"] = {"inner_params": "layer", "edit_lr": "lr", "n_iter": "num_steps", "eps": "eps"}
RENAMED["wise"] = {"inner_params": "layer", "edit_lr": "lr", "n_iter": "num_steps", "mask_ratio": "mask_ratio",
                   "norm_constraint": "norm_constraint", "act_margin": "act_margin", "act_ratio": "act_ratio"}
RENAMED["lora"] = {"layers": "layers", "num_steps": "num_steps", "lr": "lr", "rank": "rank", "lora_alpha": "lora_alpha",
                   "lora_dropout": "lora_dropout"}
RENAMED["emmet"] = {**RENAMED["memit"], "update_norm_lambda": "update_norm_lambda", "emmet_lambda": "emmet_lambda"}
RENAMED["pmet"] = dict(RENAMED["memit"])
RENAMED["ike"] = {"k": "k"}

IGNORED: dict[str, str] = {
    "device": "steer places the model itself (load_model's device choice)",
    "model_parallel": "steer loads one device unless given device_map (steer.load_model(..., device_map='auto'))",
    "fp16": "read when loading model_name (float16 weights); no effect on an already loaded model",
    "stats_dir": "steer caches key statistics under $STEER_CACHE/stats",
    "mom2_dataset": "EasyEdit's Wikipedia dump is not available offline; steer reads `corpus` (a local text file)",
    "mom2_n_samples": "counts Wikipedia articles in EasyEdit; steer's own mom2_n_samples (chunks of text) comes from its YAML",
    "mom2_dtype": "steer accumulates statistics in float64",
    "rewrite_module_tmp": "steer's site layer finds each architecture's MLP down-projection (checked to name one)",
    "layer_module_tmp": "found by steer's site layer",
    "mlp_module_tmp": "found by steer's site layer",
    "attn_module_tmp": "found by steer's site layer",
    "ln_f_module": "found by steer's site layer",
    "lm_head_module": "found by steer's site layer",
    "v_loss_layer": "steer always reads the loss at the final layer's output (EasyEdit sets the last layer too)",
    "fact_token": "steer edits at the subject's last token (only subject_last is accepted)",
    "layer_selection": "steer edits all the given layers (only 'all' is accepted)",
    "P_loc": "steer computes AlphaEdit's null-space projector from the key statistics",
    "max_length": "steer does not truncate prompts",
    "batch_size": "read by batch_edit (edits per batch)",
    "weight_decay": "FT: steer's Adam has no weight decay (only 0 is accepted)",
    "objective_optimization": "FT: picks ft_l (prompt_last) or ft_m (target_new); WISE: steer's loss is the label's NLL",
    "kl_factor": "FT: steer's FT has no KL term (only 0 is accepted); ROME/MEMIT/AlphaEdit read it",
    "mom2_adjustment": "MEMIT/AlphaEdit always use the key covariance (only true is accepted); ROME reads it",
    "enable_random_prefix_keys": "R-ROME: steer's r_rome always averages the key over the prefixes (only true)",
    "enable_prompt_keys": "R-ROME: not supported (only false)",
    "original_implementation": "R-ROME: use alg_name ROME for the original (only false)",
    "lora_type": "LoRA: steer trains plain LoRA (only 'lora'; EasyEdit's files often say 'adalora')",
    "target_modules": "LoRA: steer's adapters sit on the MLP down-projection (checked to name one)",
    "norm_constraint": "LoRA: no bound on the update (only false); FT reads it",
    "lr_scale": "KN: not used by the knowledge-neurons edit steer implements",
    "n_toks": "KN: generation length of EasyEdit's own KN evaluation",
    "refine": "KN: refining neurons over paraphrases is not implemented (only false)",
    "p": "KN: the refine step's share (unused without refine)",
    "dist_fn": "GRACE: steer's codebook uses the euclidean distance (only 'euc')",
    "val_init": "GRACE: steer starts the value from the layer's output (EasyEdit's 'warm'); 'cold' is read as warm",
    "val_train": "GRACE: EasyEdit's files name 'sgd' and its GRACE code trains the values with Adam at edit_lr; steer does the same (only 'sgd' is read)",
    "val_reg": "GRACE: no value regularisation",
    "reg": "GRACE: training stops early at nll_stop (EasyEdit's early_stop)",
    "replacement": "GRACE: steer keeps one entry per answer-predicting position; the prompt's entry replaces a position within eps of it and each answer entry only the position right after its edit's previous entry fired (answer_after_prompt); replace_last and replace_all are both read so",
    "eps_expand": "GRACE: radii are fixed (no expansion)",
    "num_pert": "GRACE: only for perturbation training, which steer does not do",
    "dropout": "GRACE: no dropout (only 0)",
    "save_freq": "WISE: steer keeps one side memory per edit (no shards)",
    "merge_freq": "WISE: side memories are not merged",
    "merge_alg": "WISE: side memories are not merged",
    "densities": "WISE: side memories are not merged",
    "weights": "WISE: side memories are not merged",
    "retrieve": "WISE: each edit's side memory routes by its own threshold",
    "replay": "WISE: no replay of earlier edits (only false)",
    "save_path": "WISE: keep the model in memory (side memories are not exported)",
    "load_path": "WISE: side memories are not loaded from files",
    "rewrite_module_tmps": "PMET: steer writes the MLP down-projections (checked to name only those, as EasyEdit's "
                           "PMET files do); attention output projections are not written",
    "nll_loss_factor": "PMET: the target NLL has weight 1 (only 1 is accepted, EasyEdit's files set 1)",
    "sentence_model_name": "IKE: no sentence-transformers model is available offline; steer ranks the pool by TF-IDF "
                           "cosine similarity (steer.edit.ike)",
    "results_dir": "IKE: EasyEdit caches the pool's embeddings there; steer builds its TF-IDF index in memory and "
                   "writes nothing",
    "use_icl_examples": "IKE: true retrieves k demonstrations; false is read as k=0 (the new fact only)",
    "alg_name": "picks the method",
    "model_name": "the model to load",
}
_DOWN_PROJECTIONS = ("down_proj", "c_proj", "fc_out", "dense_4h_to_h", "fc2", "w2")
_METHODS = {"ROME": "rome", "R-ROME": "r_rome", "MEMIT": "memit", "EMMET": "emmet", "AlphaEdit": "alphaedit",
            "FT-L": "ft_l", "FT-M": "ft_m", "LoRA": "lora", "KN": "kn", "GRACE": "grace", "WISE": "wise",
            "PMET": "pmet", "IKE": "ike"}
# EasyEdit methods steer does not implement yet: a clear error instead of a silent substitute
_NOT_YET = ("QLoRA", "ICE", "DINM", "MEND",
            "SERAC", "MELO", "DEFER", "InstructEdit", "MALMEN", "AlphaEdit-FE", "MEMIT-FE", "UltraEdit")
_EDIT_KWARGS = {"train_ds", "test_generation", "eval_metric", "pre_file", "pre_edit", "target_neg", "keep_original_weight",
                "subject", "verbose"}


class HyperParams:
    """An EasyEdit hyper-parameter file: its keys as attributes, as in EasyEdit."""

    alg_name: str | None = None  # subclasses fix it; the base class takes any supported alg_name

    def __init__(self, **values: Any) -> None:
        if "alg_name" not in values:
            raise ConfigError("EasyEdit hyper-parameters need alg_name (ROME, MEMIT, AlphaEdit, FT).")
        self.__dict__.update({key: _number(value) for key, value in values.items()})

    @classmethod
    def from_hparams(cls, hparams_name_or_path: str | Path) -> HyperParams:
        path = Path(hparams_name_or_path)
        if path.suffix not in (".yaml", ".yml"):
            path = path.with_name(path.name + ".yaml")
        values = read_yaml(path)
        expected = cls.alg_name
        found = values.get("alg_name")
        if expected is not None and found not in (expected, *_aliases(expected)):
            raise ConfigError(f"{path}: alg_name is {found!r}, but {cls.__name__} reads {expected!r} files; use the "
                              f"hyper-parameter class of {found!r} or HyperParams.from_hparams.")
        values.setdefault("alg_name", expected)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__!r})"


_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _number(value: Any) -> Any:
    """'5e-1' -> 0.5: YAML 1.1 (PyYAML) reads exponents without a dot as strings; EasyEdit's files use them."""
    return float(value) if isinstance(value, str) and _EXPONENT.match(value.strip()) else value


def _aliases(alg_name: str) -> tuple[str, ...]:
    return ("FT-L", "FT-M") if alg_name == "FT" else ()


class ROMEHyperParams(HyperParams):
    alg_name = "ROME"


class MEMITHyperParams(HyperParams):
    alg_name = "MEMIT"


class AlphaEditHyperParams(HyperParams):
    alg_name = "AlphaEdit"


class FTHyperParams(HyperParams):
    alg_name = "FT"


class R_ROMEHyperParams(HyperParams):
    alg_name = "R-ROME"


class EMMETHyperParams(HyperParams):
    alg_name = "EMMET"


class LoRAHyperParams(HyperParams):
    alg_name = "LoRA"


class KNHyperParams(HyperParams):
    alg_name = "KN"


class GraceHyperParams(HyperParams):
    alg_name = "GRACE"


class WISEHyperParams(HyperParams):
    alg_name = "WISE"


def _not_yet(name: str) -> type[HyperParams]:
    def from_hparams(cls: type[HyperParams], hparams_name_or_path: str | Path) -> HyperParams:
        own = name.lower()
        if own in edit_methods().names():
            raise EditError(f"steer.edit.easyedit does not read EasyEdit's {name} files yet; use steer's own {own!r} "
                            f"method: steer.edit.Editor(model, tokenizer, {own!r}) or `steer edit --method {own}`.")
        raise EditError(f"{name} is not in steer yet; steer.edit.easyedit runs {', '.join(sorted(_METHODS))} and FT "
                        f"(steer methods: {', '.join(edit_methods().names())}).")

    return type(f"{name.replace('-', '')}HyperParams", (HyperParams,),
                {"alg_name": name, "from_hparams": classmethod(from_hparams)})


class PMETHyperParams(HyperParams):
    alg_name = "PMET"


class IKEHyperParams(HyperParams):
    alg_name = "IKE"


DINMHyperParams = _not_yet("DINM")


def steer_method(hparams: HyperParams) -> str:
    alg = getattr(hparams, "alg_name", None)
    if alg == "FT":
        objective = getattr(hparams, "objective_optimization", "prompt_last")
        if objective not in ("prompt_last", "target_new"):
            raise ConfigError(f"FT: objective_optimization is {objective!r}; use prompt_last (FT-L) or target_new (FT-M).")
        return "ft_l" if objective == "prompt_last" else "ft_m"
    if alg in _METHODS:
        return _METHODS[alg]
    if alg in _NOT_YET:
        _not_yet(alg).from_hparams("")
    raise ConfigError(f"Unknown alg_name {alg!r}.{closest(str(alg), [*_METHODS, 'FT'])} Supported: "
                      f"{', '.join(sorted(_METHODS))}, FT.")


def steer_overrides(hparams: HyperParams, method: str) -> dict[str, Any]:
    """EasyEdit's values as steer hyper-parameter overrides for `method` (checked, see module doc)."""
    spec = edit_methods().get(method)
    native = {f for f in spec.hparams.__dataclass_fields__ if not f.startswith("_")}
    renamed = RENAMED[method]
    out: dict[str, Any] = {}
    for key, value in hparams.to_dict().items():
        if key in renamed:
            target = renamed[key]
            if target == "layer":
                layers = value if isinstance(value, (list, tuple)) else [value]
                if len(layers) != 1:
                    raise ConfigError(f"ROME edits one layer; layers is {value!r}. Give one layer, e.g. layers: [5].")
                value = layers[0]
            if key == "norm_constraint" and value is False:
                value = None
            if key == "inner_params":
                value = _inner_layer(value, method)
            if key == "layers" and method == "lora" and not value:
                raise ConfigError("LoRA: layers is empty (EasyEdit: every layer); give the layers whose MLP "
                                  "down-projection steer's LoRA should train, e.g. layers: [5].")
            out[target] = value
        elif key == "use_icl_examples" and method == "ike":
            if value is False:
                out["k"] = 0
        elif key in IGNORED:
            _check_ignored(key, value, method)
        elif key in native:
            out[key] = value
        else:
            known = [*renamed, *IGNORED, *native]
            raise ConfigError(f"EasyEdit hyper-parameters for {hparams.alg_name}: unknown key {key!r}."
                              f"{closest(key, known)} Keys steer reads: {', '.join(sorted(renamed))}; accepted and "
                              "ignored: see steer.edit.easyedit.IGNORED.")
    return out


def _inner_layer(value: Any, method: str) -> int:
    """EasyEdit's inner_params (['model.layers[27].mlp.down_proj.weight']) -> 27, checked to be a down-projection."""
    names = value if isinstance(value, (list, tuple)) else [value]
    if len(names) != 1:
        raise ConfigError(f"inner_params {value!r}: steer's {method} edits one layer; give one parameter.")
    name = str(names[0])
    match = re.search(r"(?:layers|h|layer)\W*(\d+)\W", name)
    if match is None or not any(part in name for part in _DOWN_PROJECTIONS):
        raise ConfigError(f"inner_params {name!r}: steer's {method} acts at an MLP down-projection, e.g. "
                          "model.layers[27].mlp.down_proj.weight.")
    return int(match.group(1))


def _check_ignored(key: str, value: Any, method: str) -> None:
    if key == "fact_token" and value != "subject_last":
        raise ConfigError(f"fact_token {value!r}: steer edits at the subject's last token only (subject_last).")
    if key == "layer_selection" and value != "all":
        raise ConfigError(f"layer_selection {value!r}: steer edits all the given layers (use 'all').")
    if key == "rewrite_module_tmps" and not all(any(n in str(m) for n in _DOWN_PROJECTIONS) for m in value or []):
        raise ConfigError(f"rewrite_module_tmps {value!r}: steer's pmet writes the MLP down-projections (as EasyEdit's "
                          "PMET files); attention output projections are not supported.")
    if key == "nll_loss_factor" and value != 1:
        raise ConfigError(f"nll_loss_factor {value!r}: steer's pmet weighs the target NLL by 1; use 1.")
    if key == "rewrite_module_tmp" and not any(name in str(value) for name in _DOWN_PROJECTIONS):
        raise ConfigError(f"rewrite_module_tmp {value!r}: steer's {method} edits the MLP down-projection "
                          "(e.g. model.layers.{}.mlp.down_proj); other modules are not supported.")
    if key == "weight_decay" and value not in (0, 0.0, None):
        raise ConfigError(f"weight_decay {value!r}: steer's FT has no weight decay; use 0.")
    if key == "kl_factor" and value not in (0, 0.0, None):
        raise ConfigError(f"kl_factor {value!r}: steer's FT has no KL term; use 0.")
    if key in ("enable_prompt_keys", "original_implementation") and value:
        raise ConfigError(f"{key} {value!r}: not supported by steer's r_rome (use false; alg_name ROME is the original).")
    if key == "enable_random_prefix_keys" and value is not True:
        raise ConfigError(f"{key} {value!r}: steer's r_rome averages the key over the prefixes; use alg_name ROME "
                          "for the prompt-only key.")
    if key == "lora_type" and value != "lora":
        raise ConfigError(f"lora_type {value!r}: steer trains plain LoRA; use lora_type: lora.")
    if key == "target_modules" and not all(any(n in str(m) for n in _DOWN_PROJECTIONS) for m in value or []):
        raise ConfigError(f"target_modules {value!r}: steer's LoRA trains the MLP down-projection (e.g. "
                          "['down_proj']) of the given layers; attention projections are not supported.")
    if key == "norm_constraint" and value not in (False, None):
        raise ConfigError(f"norm_constraint {value!r}: steer's LoRA has no bound on the update; use false.")
    if key == "dist_fn" and value != "euc":
        raise ConfigError(f"dist_fn {value!r}: steer's GRACE uses the euclidean distance; use euc.")
    if key == "val_train" and value != "sgd":
        raise ConfigError(f"val_train {value!r}: steer's GRACE trains its values as EasyEdit's code does (Adam at "
                          "edit_lr), which EasyEdit's files call sgd; use sgd.")
    if key in ("dropout",) and value not in (0, 0.0, None):
        raise ConfigError(f"{key} {value!r}: not supported by steer's GRACE; use 0.")
    if key == "replay" and value:
        raise ConfigError("replay: true: steer's WISE does not replay earlier edits; use false.")
    if key == "refine" and value:
        raise ConfigError("refine: true: steer's kn does not refine neurons over paraphrases; use false.")
    if key == "mom2_adjustment" and value is not True:
        raise ConfigError(f"mom2_adjustment {value!r}: steer's {method} always uses the key covariance; use true.")


def _load(hparams: HyperParams) -> tuple[Any, Any]:
    name = getattr(hparams, "model_name", None)
    if isinstance(name, (tuple, list)) and len(name) == 2:
        return name[0], name[1]
    if not isinstance(name, (str, Path)):
        raise ConfigError("model_name must be a model id, a folder, a .gguf file or a (model, tokenizer) pair.")
    from steer.models.loading import load_model

    return load_model(str(name), dtype=torch.float16 if getattr(hparams, "fp16", False) else torch.float32)


class BaseEditor:
    """EasyEdit's BaseEditor over steer's `Editor` (reachable as `.editor`)."""

    @classmethod
    def from_hparams(cls, hparams: HyperParams, *, backend: Any = None) -> BaseEditor:
        """`backend="nnsight"`: the edits' reads and value optimisation run through nnsight (steer's option)."""
        return cls(hparams, backend=backend)

    def __init__(self, hparams: HyperParams, *, progress: bool = True, backend: Any = None) -> None:
        if not isinstance(hparams, HyperParams):
            raise ConfigError("BaseEditor needs hyper-parameters from XHyperParams.from_hparams(path).")
        self.hparams = hparams
        self.alg_name = hparams.alg_name
        self.model_name = hparams.model_name
        self.method = steer_method(hparams)
        overrides = steer_overrides(hparams, self.method)
        self.model, self.tok = _load(hparams)
        self.editor = Editor(self.model, self.tok, self.method, overrides, progress=progress, backend=backend)

    # ---- editing ---------------------------------------------------------------------
    def edit(self, prompts: str | Sequence[str], target_new: str | Sequence[str],
             ground_truth: str | Sequence[str] | None = None, rephrase_prompts: Any = None,
             locality_inputs: dict[str, Any] | None = None, portability_inputs: dict[str, Any] | None = None,
             sequential_edit: bool = False, verbose: bool = True, **kwargs: Any) -> tuple[list[dict[str, Any]], Any, dict[str, torch.Tensor]]:
        """One edit per prompt, measured before and after (EasyEdit's `BaseEditor.edit`)."""
        requests = self._requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
                                  portability_inputs, kwargs)
        return self._run([[r] for r in requests], sequential_edit, verbose)

    def batch_edit(self, prompts: Sequence[str], target_new: Sequence[str], ground_truth: Sequence[str] | None = None,
                   rephrase_prompts: Any = None, locality_inputs: dict[str, Any] | None = None,
                   portability_inputs: dict[str, Any] | None = None, sequential_edit: bool = False,
                   verbose: bool = True, **kwargs: Any) -> tuple[list[dict[str, Any]], Any, dict[str, torch.Tensor]]:
        """Batches of `hparams.batch_size` edits (all at once when unset), one update per batch."""
        if not self.editor.spec.batched:
            raise EditError(f"The method {self.alg_name} can not batch edit examples; use edit(...), or MEMIT, "
                            "AlphaEdit or FT.")
        requests = self._requests(prompts, target_new, ground_truth, rephrase_prompts, locality_inputs,
                                  portability_inputs, kwargs)
        size = int(getattr(self.hparams, "batch_size", None) or len(requests))
        return self._run([requests[i : i + size] for i in range(0, len(requests), size)], sequential_edit, verbose)

    def _requests(self, prompts: Any, target_new: Any, ground_truth: Any, rephrase_prompts: Any,
                  locality_inputs: Any, portability_inputs: Any, kwargs: dict[str, Any]) -> list[EditRequest]:
        for key, value in kwargs.items():
            if key not in _EDIT_KWARGS:
                raise TypeError(f"edit() got an unexpected keyword argument {key!r}.{closest(key, _EDIT_KWARGS)}")
        train_ds = kwargs.get("train_ds")
        if train_ds is not None:
            if self.method != "ike":
                raise EditError(f"train_ds is IKE's demonstration pool; {self.alg_name} does not read it.")
            records = [train_ds[i] for i in range(len(train_ds))] if hasattr(train_ds, "__len__") else list(train_ds)
            self.editor.hparams = dataclasses.replace(self.editor.hparams, pool=records)
        if kwargs.get("test_generation"):
            raise EditError("test_generation is not supported; measure fluency with `steer eval --methods fluency`.")
        if kwargs.get("eval_metric", "token_em") not in ("token_em", "exact match"):
            raise EditError(f"eval_metric {kwargs['eval_metric']!r}: steer measures EasyEdit's token accuracy (token_em).")
        if kwargs.get("target_neg") is not None or kwargs.get("pre_file") or kwargs.get("pre_edit") is not None:
            raise EditError("target_neg, pre_file and pre_edit are not supported.")
        return build_requests(prompts, target_new, ground_truth, kwargs.get("subject"), rephrase_prompts,
                              locality_inputs, portability_inputs)

    def _run(self, batches: list[list[EditRequest]], sequential: bool,
             verbose: bool) -> tuple[list[dict[str, Any]], Any, dict[str, torch.Tensor]]:
        editor = self.editor
        metrics: list[dict[str, Any]] = []
        weights_copy: dict[str, torch.Tensor] = {}
        total = sum(len(b) for b in batches)
        with tqdm(total=total, desc=f"{self.alg_name}: edits", unit="edit", disable=not editor.ctx.progress) as bar:
            for batch in batches:
                pres = [editor.evaluate(r) for r in batch]
                start = time.perf_counter()
                applied = editor.apply(batch)
                seconds = time.perf_counter() - start
                for name, tensor in self._originals(applied).items():
                    weights_copy.setdefault(name, tensor)
                for request, pre in zip(batch, pres):
                    post = editor.evaluate(request, before=pre)
                    record = {"case_id": len(metrics), "requested_rewrite": _request_dict(request), "time": seconds,
                              "pre": _layout(pre, None), "post": _layout(post, pre)}
                    metrics.append(record)
                    if verbose:
                        tqdm.write(f"{record['case_id']} editing: {request.prompt} -> {request.target_new}")
                if not sequential:
                    editor.rollback(applied.id)
                bar.update(len(batch))
        if verbose:
            print(f"Metrics Summary: {summary_metrics(metrics)}")
        return metrics, self.model, weights_copy

    def _originals(self, applied: AppliedEdit) -> dict[str, torch.Tensor]:
        names = {id(p): name for name, p in self.model.named_parameters()}
        before = self.editor.weights_before(applied.id)
        return {names[id(self.editor.sites.weight(layer))]: original for layer, original in before.items()}


def _request_dict(request: EditRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": request.prompt, "target_new": request.target_new,
                           "ground_truth": request.ground_truth, "subject": request.subject}
    if request.rephrase_prompts:
        out["rephrase_prompt"] = list(request.rephrase_prompts)
    for kind in ("locality", "portability"):
        out[kind] = {key: {"prompt": [p.prompt for p in probes], "ground_truth": [list(p.answers) for p in probes]}
                     for key, probes in getattr(request, kind).items()}
    return out


def _layout(result: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """steer's metrics -> EasyEdit's pre/post dict."""
    per = result["_per_probe"]
    out: dict[str, Any] = {"rewrite_acc": list(per["rewrite"])}
    if per["rephrase"]:
        out["rephrase_acc"] = list(per["rephrase"])
    out["locality"] = {f"{key}_output": value for key, value in result["_locality_predictions"].items()}
    if before is not None:
        out["locality"].update({f"{key}_acc": list(values) for key, values in per["locality"].items()})
    out["portability"] = {f"{key}_acc": list(values) for key, values in per["portability"].items()}
    return out


def summary_metrics(all_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Means as EasyEdit logs them: rewrite/rephrase per stage, locality/portability per key."""
    summary: dict[str, Any] = {}
    for stage in ("pre", "post"):
        block: dict[str, Any] = {}
        for key in ("rewrite_acc", "rephrase_acc"):
            values = [statistics.fmean(m[stage][key]) for m in all_metrics if m[stage].get(key)]
            if values:
                block[key] = statistics.fmean(values)
        for section in ("locality", "portability"):
            keys = sorted({k for m in all_metrics for k in m[stage][section] if k.endswith("_acc")})
            if keys:
                block[section] = {k: statistics.fmean(statistics.fmean(m[stage][section][k]) for m in all_metrics
                                                      if m[stage][section].get(k)) for k in keys}
        summary[stage] = block
    return summary
