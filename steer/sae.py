"""Sparse autoencoders in the sae-lens folder format: load, encode, decode, measure.

    sae = steer.sae.load_sae("library:smollm2-135m-res6-topk")   # or a folder, or saelens:RELEASE:SAE_ID
    feats = sae.encode(hidden)                                   # [..., d_sae]
    direction = sae.direction(1234)                              # unit decoder direction of feature 1234
    site = sae.site_for(model)                                   # where its activations live (a steer Site)

A folder holds `cfg.json` and `sae_weights.safetensors` as sae-lens writes them
(`SAE.save_inference_model`), so SAEs trained with sae-lens, or downloaded by it, load
here without sae-lens installed: steering needs two matrices, and sae-lens pulls in
transformer-lens, wandb and datasets (a 9-minute install), which a runtime should not
require. Supported architectures: standard (ReLU), topk and jumprelu, with sae-lens's
exact encode/decode arithmetic (tests compare against sae-lens when it is installed).
A release name (`saelens:RELEASE:SAE_ID`, e.g. Gemma Scope's
`saelens:gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical`) is looked up in
sae-lens's own directory and read from the local Hugging Face cache, with no network
(sae-lens's cfg.json + safetensors, Gemma Scope's params.npz and Gemma Scope 2's
params.safetensors layouts); `allow_download=True` hands other cases to sae-lens.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steer.errors import ConfigError, SiteError, VectorError
from steer.io.tensors import read_tensors
from steer.sites.hooks import ForwardState, intervene
from steer.sites.resolve import Site, SiteMap

LIBRARY_PREFIX = "library:"
SAELENS_PREFIX = "saelens:"
ARCHITECTURES = ("standard", "topk", "jumprelu")
# TransformerLens hook names that sae-lens SAEs for HookedTransformer models use
_TL_HOOKS = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_mlp_out": "mlp_out",
             "hook_attn_out": "attn_out"}


class SAEError(VectorError):
    """An SAE that cannot be found, read or used with this model."""


@dataclass
class SparseAutoencoder:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_in]
    b_dec: torch.Tensor  # [d_in]
    architecture: str
    hook_name: str
    k: int | None = None  # topk
    threshold: torch.Tensor | None = None  # jumprelu, [d_sae]
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    model_name: str | None = None
    source: str = ""
    cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def to(self, device: torch.device | str) -> SparseAutoencoder:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    # ---- arithmetic (sae-lens's, for the supported architectures) -------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pre = x @ self.W_enc + self.b_enc
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        if self.architecture == "topk":
            assert self.k is not None
            values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold) * (pre > 0)
        return pre.relu()

    def features_to_residual(self, acts: torch.Tensor) -> torch.Tensor:
        """What feature activations add to the reconstruction (decode without b_dec)."""
        acts = acts.to(self.W_dec.dtype)
        if self.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        return acts @ self.W_dec

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return self.features_to_residual(acts) + self.b_dec

    def direction(self, feature: int) -> torch.Tensor:
        """Feature `feature`'s decoder direction, scaled to unit norm."""
        self.check_feature(feature)
        row = self.W_dec[feature].float()
        return row / row.norm().clamp_min(1e-12)

    def check_feature(self, feature: int) -> None:
        if not 0 <= feature < self.d_sae:
            raise SAEError(f"Feature {feature} does not exist: this SAE ({self.source}) has features 0..{self.d_sae - 1}.")

    # ---- where it reads the model -----------------------------------------------------------
    def site_for(self, model: nn.Module) -> Site:
        """The steer site of the SAE's hook on `model` (checked against the model's width)."""
        sites = SiteMap(model)
        site = _site_from_hook(self.hook_name, self.cfg, sites)
        site = sites.normalise(site)
        if self.d_in != sites.hidden_size:
            raise SAEError(f"The SAE {self.source} reads {self.d_in}-wide activations but this model's hidden size is "
                           f"{sites.hidden_size}: it was trained for another model ({self.model_name or 'unknown'}).")
        return site


def _site_from_hook(hook_name: str, cfg: dict[str, Any], sites: SiteMap) -> Site:
    recorded = (cfg.get("metadata") or {}).get("steer_site")
    if recorded:
        return Site.parse(recorded)
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", hook_name)
    if match and match.group(2) in _TL_HOOKS:
        return Site(_TL_HOOKS[match.group(2)], int(match.group(1)))
    # HookedProxyLM (sae-lens on a Hugging Face model) names hooks by module path
    for name in ("resid_post", "attn_out", "mlp_out"):
        for layer in range(sites.num_layers):
            try:
                if sites.module_path(Site(name, layer)) == hook_name:
                    return Site(name, layer)
            except SiteError:  # this family has no such site
                break
    raise SAEError(f"Cannot tell which site the SAE hook {hook_name!r} reads on this {sites.model_type} model. "
                   "Set metadata.steer_site in its cfg.json (for example \"resid_post.6\").")


# ---- loading --------------------------------------------------------------------------------
def library_sae_folders() -> list[Path]:
    """saes/ under every library folder, in search order (user folders first)."""
    from steer.library import search_path

    return [folder / "saes" for folder, _ in search_path()]


def _library_folder(name: str) -> Path:
    found: list[str] = []
    for folder in library_sae_folders():
        candidate = folder / name
        if (candidate / "cfg.json").is_file():
            return candidate
        if folder.is_dir():
            found += [p.name for p in folder.iterdir() if (p / "cfg.json").is_file()]
    close = difflib.get_close_matches(name, found, n=3, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise SAEError(f"No library SAE named {name!r}.{hint} Available: {', '.join(sorted(set(found))) or 'none'}.")


def require_sae(method: str, ref: str | None) -> str:
    """The SAE reference a method's hparams name; the shipped default YAMLs leave it to the user."""
    if not ref:
        raise ConfigError(f"{method}: name the SAE, e.g. sae=library:smollm2-135m-res6-topk or sae=path/to/folder.")
    return ref


def load_sae(ref: str | os.PathLike[str], *, device: str | torch.device = "cpu",
             allow_download: bool = False) -> SparseAutoencoder:
    """An SAE from a sae-lens folder, `library:NAME`, or `saelens:RELEASE:SAE_ID`.

    A release name is looked up in sae-lens's directory and read from the local Hugging
    Face cache ($HF_HUB_CACHE) without any network access; `allow_download=True` lets
    sae-lens fetch what the cache lacks.
    """
    text = str(ref)
    if text.startswith(SAELENS_PREFIX):
        return _from_saelens_release(text[len(SAELENS_PREFIX):], allow_download).to(device)
    folder = _library_folder(text[len(LIBRARY_PREFIX):]) if text.startswith(LIBRARY_PREFIX) else Path(text)
    return read_sae_folder(folder).to(device)


def read_sae_folder(folder: Path) -> SparseAutoencoder:
    if not folder.is_dir():
        raise SAEError(f"SAE folder {folder} does not exist. Give a sae-lens folder (cfg.json + sae_weights.safetensors), "
                       "library:NAME or saelens:RELEASE:SAE_ID.")
    cfg_path, weights_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise SAEError(f"SAE folder {folder} lacks {path.name}; a sae-lens folder has cfg.json and "
                           "sae_weights.safetensors.")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SAEError(f"{cfg_path} is not valid JSON: {exc}") from None
    _, tensors = read_tensors(weights_path, error=SAEError, what="SAE weights",
                              fix="Re-download or re-train the SAE (the file may be truncated).")
    return from_state(cfg, tensors, source=str(folder))


def from_state(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> SparseAutoencoder:
    """Validate a sae-lens config and state dict and build the SAE."""
    architecture = str(cfg.get("architecture", "standard"))
    if architecture not in ARCHITECTURES:
        raise SAEError(f"{source}: SAE architecture {architecture!r} is not supported; steer reads "
                       f"{', '.join(ARCHITECTURES)}.")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise SAEError(f"{source}: normalize_activations={norm!r} needs run-time statistics steer does not apply; "
                       "fold the normalisation into the weights (sae-lens: fold_activation_norm_scaling_factor) first.")
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in tensors]
    if architecture == "jumprelu" and "threshold" not in tensors:
        missing.append("threshold")
    if missing:
        raise SAEError(f"{source}: the SAE weights lack {', '.join(missing)}.")
    w_enc, w_dec = tensors["W_enc"].float(), tensors["W_dec"].float()
    d_in, d_sae = w_enc.shape
    if w_dec.shape != (d_sae, d_in) or tensors["b_enc"].shape != (d_sae,) or tensors["b_dec"].shape != (d_in,):
        raise SAEError(f"{source}: inconsistent SAE shapes (W_enc {tuple(w_enc.shape)}, W_dec {tuple(w_dec.shape)}).")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SAEError(f"{source}: SAE tensor {name} contains NaN or infinite values; the file is corrupt.")
    for key, expected in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and int(cfg[key]) != expected:
            raise SAEError(f"{source}: cfg.json says {key}={cfg[key]} but the weights have {expected}.")
    metadata = cfg.get("metadata") or {}
    hook_name = metadata.get("hook_name") or cfg.get("hook_name")
    if not hook_name:
        raise SAEError(f"{source}: cfg.json names no hook (metadata.hook_name); steer cannot tell where it reads.")
    k = cfg.get("k")
    if architecture == "topk" and (not isinstance(k, int) or not 0 < k <= d_sae):
        raise SAEError(f"{source}: a topk SAE needs an integer k in 1..{d_sae} in cfg.json (got {k!r}).")
    return SparseAutoencoder(
        W_enc=w_enc, b_enc=tensors["b_enc"].float(), W_dec=w_dec, b_dec=tensors["b_dec"].float(),
        architecture=architecture, hook_name=str(hook_name), k=k if architecture == "topk" else None,
        threshold=tensors["threshold"].float() if architecture == "jumprelu" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        model_name=metadata.get("model_name") or cfg.get("model_name"), source=source, cfg=cfg,
    )


def from_saelens(sae: Any, source: str) -> SparseAutoencoder:
    """Convert an in-memory sae-lens SAE (inference or training class)."""
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    state = {k: v.detach().cpu() for k, v in sae.state_dict().items()}
    return from_state(json.loads(json.dumps(cfg, default=str)), state, source)


# sae-lens release formats steer reads from the local Hugging Face cache, with the files each needs
_CACHE_FORMATS = {
    "sae_lens": ("cfg.json", "sae_weights.safetensors"),
    "gemma_2": ("params.npz",),  # Gemma Scope (Gemma 2)
    "gemma_3": ("params.safetensors",),  # Gemma Scope 2 (Gemma 3)
}


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read at call time: $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


@dataclass(frozen=True)
class SAERelease:
    """Where sae-lens's directory (its pretrained_saes.yaml) says a release's SAE lives."""

    release: str
    sae_id: str
    repo_id: str
    path: str  # folder inside the repo
    conversion_func: str  # "sae_lens" for sae-lens's own cfg.json + safetensors layout
    config_overrides: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{SAELENS_PREFIX}{self.release}:{self.sae_id}"

    def files(self) -> tuple[str, ...]:
        return tuple(f"{self.path}/{name}" for name in _CACHE_FORMATS.get(self.conversion_func, ()))


def find_release(release: str, sae_id: str) -> SAERelease:
    """Look a release and SAE id up in sae-lens's own directory (needs sae-lens, no network)."""
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        raise SAEError("Loading an SAE by release name needs sae-lens, whose directory maps release names to "
                       "Hugging Face repositories: pip install 'steer[sae]'. Or give a local sae-lens folder.") from None
    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise SAEError(f"sae-lens knows no release {release!r}.{hint} (sae_lens.loading.pretrained_saes_directory "
                       "lists all of them.)")
    info = directory[release]
    if sae_id not in info.saes_map:
        close = difflib.get_close_matches(sae_id, list(info.saes_map), n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else f" It has {len(info.saes_map)} SAEs, e.g. {next(iter(info.saes_map))}."
        raise SAEError(f"Release {release!r} has no SAE {sae_id!r}.{hint}")
    overrides = dict(info.config_overrides or {})
    return SAERelease(release, sae_id, info.repo_id, str(info.saes_map[sae_id]).strip("/"),
                      info.conversion_func or "sae_lens", overrides)


def _cached_file(repo_id: str, filename: str, cache: Path) -> Path | None:
    """A file of a model repo in a Hugging Face cache (refs/main -> snapshots/<commit>/filename), or None."""
    repo_folder = cache / f"models--{repo_id.replace('/', '--')}"
    ref = repo_folder / "refs" / "main"
    snapshots: list[Path] = []
    if ref.is_file():
        snapshots.append(repo_folder / "snapshots" / ref.read_text(encoding="utf-8").strip())
    if (repo_folder / "snapshots").is_dir():  # a cache filled for a pinned revision has no refs/main
        snapshots += sorted((repo_folder / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snapshot in snapshots:
        candidate = snapshot / filename
        if candidate.is_file():
            return candidate
    return None


def _from_saelens_release(spec: str, allow_download: bool = False) -> SparseAutoencoder:
    release, sep, sae_id = spec.partition(":")
    if not sep or not release or not sae_id:
        raise SAEError(f"Write a sae-lens release as saelens:RELEASE:SAE_ID (got saelens:{spec}).")
    where = find_release(release, sae_id)
    cache = hf_cache_dir()
    if where.conversion_func in _CACHE_FORMATS:
        found = [_cached_file(where.repo_id, name, cache) for name in where.files()]
        if all(found):
            return _read_cached_release(where, [p for p in found if p is not None])
        if not allow_download:
            missing = [name for name, path in zip(where.files(), found) if path is None]
            raise SAEError(
                f"{where.ref} is not in the local Hugging Face cache ({cache}): it is {', '.join(missing)} in the "
                f"repository {where.repo_id}. Fetch it where the hub is reachable (huggingface-cli download "
                f"{where.repo_id} --include '{where.path}/*') and copy the cache here or point HF_HUB_CACHE at it; "
                "or allow downloads (load_sae(..., allow_download=True))."
            )
    elif not allow_download:
        raise SAEError(
            f"{where.ref} is stored in sae-lens's {where.conversion_func!r} format, which steer reads only through "
            f"sae-lens with a reachable hub (load_sae(..., allow_download=True)); steer reads "
            f"{', '.join(_CACHE_FORMATS)} releases from the cache. Or load it with sae-lens, save it with "
            "save_inference_model(folder), and give the folder."
        )
    from sae_lens import SAE

    try:
        loaded = SAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as exc:  # hub errors come in many types  # noqa: BLE001
        raise SAEError(f"sae-lens could not load {release}/{sae_id}: {exc}. Offline, download it elsewhere and "
                       "give the folder.") from None
    sae = loaded[0] if isinstance(loaded, tuple) else loaded
    return from_saelens(sae, f"saelens:{spec}")


def _read_cached_release(where: SAERelease, files: list[Path]) -> SparseAutoencoder:
    source = f"{where.ref} ({files[0].parent})"
    if where.conversion_func == "sae_lens":
        cfg_path, weights = files
        sae = read_sae_folder(cfg_path.parent) if cfg_path.parent == weights.parent else None
        if sae is None:
            raise SAEError(f"{source}: cfg.json and the weights are in different folders of the cache.")
        if not where.config_overrides:
            return sae
        cfg = {**sae.cfg, **where.config_overrides}
        _, tensors = read_tensors(weights, error=SAEError, what="SAE weights", fix="Re-download the SAE.")
        return from_state(cfg, tensors, source)
    if where.conversion_func == "gemma_2":
        return _gemma_scope(where, files[0], source)
    return _gemma_scope_2(where, files[0], source)


def _gemma_scope(where: SAERelease, npz: Path, source: str) -> SparseAutoencoder:
    """Gemma Scope (Gemma 2): params.npz; the config comes from sae-lens's own reading of the names."""
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_CONFIG_GETTERS

    try:
        cfg = NAMED_PRETRAINED_SAE_CONFIG_GETTERS["gemma_2"](where.repo_id, where.path, "cpu", False,
                                                              where.config_overrides or None)
    except ValueError as exc:
        raise SAEError(f"{source}: {exc}") from None
    return from_state(cfg, gemma_scope_tensors(npz, embedding="embedding" in where.path, source=source), source)


def gemma_scope_tensors(npz: Path, *, embedding: bool = False, source: str = "") -> dict[str, torch.Tensor]:
    """Gemma Scope's params.npz as sae-lens names its tensors (w_enc -> W_enc); never unpickles."""
    import numpy as np

    try:
        with np.load(npz, allow_pickle=False) as data:
            tensors = {("W_" + key[2:] if key.startswith("w_") else key): torch.tensor(data[key], dtype=torch.float32)
                       for key in data.files}
    except (OSError, ValueError) as exc:
        raise SAEError(f"{source or npz}: cannot read {npz.name} ({exc}); re-download it.") from None
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise SAEError(f"{source or npz}: a fine-tuning scaling factor other than 1 is not supported.")
    if embedding and "W_enc" in tensors:  # trained on embeddings scaled by sqrt(d_model), as sae-lens corrects
        d_in = tensors["W_enc"].shape[0]
        tensors["W_enc"] = tensors["W_enc"] / math.sqrt(d_in)
        tensors["W_dec"] = tensors["W_dec"] * math.sqrt(d_in)
    return tensors


def _gemma_scope_2(where: SAERelease, weights: Path, source: str) -> SparseAutoencoder:
    """Gemma Scope 2 (Gemma 3): params.safetensors with w_enc [d_in, d_sae], w_dec, b_enc, b_dec, threshold."""
    layer = re.search(r"layer_(\d+)", where.path)
    kind = next((k for k in ("resid_post", "mlp_out") if k in where.path), None)
    if layer is None or kind is None:
        raise SAEError(f"{source}: steer reads Gemma Scope 2 residual (resid_post) and MLP-output (mlp_out) SAEs; "
                       f"{where.path!r} is another kind (transcoder, attention or crosscoder).")
    _, raw = read_tensors(weights, error=SAEError, what="SAE weights", fix="Re-download the SAE.")
    missing = [k for k in ("w_enc", "w_dec", "b_enc", "b_dec", "threshold") if k not in raw]
    if missing:
        raise SAEError(f"{source}: params.safetensors lacks {', '.join(missing)}.")
    d_in, d_sae = raw["w_enc"].shape
    cfg: dict[str, Any] = {
        "architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae),
        "hook_name": f"blocks.{int(layer.group(1))}.hook_{kind}", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "model_name": where.release, "release": where.release, "sae_id": where.sae_id,
    }
    cfg.update(where.config_overrides)
    tensors = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
               "threshold": raw["threshold"]}
    return from_state(cfg, tensors, source)


# ---- measuring ----------------------------------------------------------------------------
@dataclass
class _Replace:
    """Replace the activation at `site` by fn(activation) (for the spliced / zero-ablated LM loss)."""

    site: Site
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        return self.fn(hidden)


def measure_sae(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: list[str],
                max_tokens: int = 256) -> dict[str, float]:
    """Reconstruction quality on `texts`: explained variance, L0, dead share, LM loss clean/spliced/zeroed."""
    from steer.sites.hooks import record

    site = sae.site_for(model)
    sites = SiteMap(model)
    device = next(sites.model.parameters()).device
    sae.to(device)
    sq_err = total_var = 0.0
    l0_sum, tokens, predicted = 0.0, 0, 0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=device)
    losses = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0}

    spliced_in = _Replace(site, lambda h: sae.decode(sae.encode(h.float())).to(h.dtype))
    zeroed = _Replace(site, torch.zeros_like)
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)["input_ids"].to(device)
            if ids.shape[1] < 2:
                continue
            with record(sites.model, [site]) as rec:
                clean = sites.model(input_ids=ids, labels=ids, use_cache=False).loss
            x = rec[site].values[0][0].float()
            acts = sae.encode(x)
            recon = sae.decode(acts)
            sq_err += float(((x - recon) ** 2).sum())
            total_var += float(((x - x.mean(0)) ** 2).sum())
            l0_sum += float((acts > 0).sum())
            tokens += x.shape[0]
            fired |= (acts > 0).any(0)
            with intervene(sites.model, [spliced_in]):
                spliced = sites.model(input_ids=ids, labels=ids, use_cache=False).loss
            with intervene(sites.model, [zeroed]):
                ablated = sites.model(input_ids=ids, labels=ids, use_cache=False).loss
            for key, value in (("clean", clean), ("spliced", spliced), ("zero_ablated", ablated)):
                losses[key] += float(value) * (ids.shape[1] - 1)
            predicted += ids.shape[1] - 1
    if tokens == 0:
        raise SAEError("No text long enough to measure the SAE on.")
    ce = {k: v / predicted for k, v in losses.items()}
    recovered = (ce["zero_ablated"] - ce["spliced"]) / (ce["zero_ablated"] - ce["clean"])
    return {
        "tokens": tokens,
        "explained_variance": round(1.0 - sq_err / total_var, 4),
        "l0": round(l0_sum / tokens, 2),
        "dead_feature_share": round(float((~fired).float().mean()), 4),
        "ce_loss_clean": round(ce["clean"], 4),
        "ce_loss_spliced": round(ce["spliced"], 4),
        "ce_loss_zero_ablated": round(ce["zero_ablated"], 4),
        "ce_loss_recovered": round(recovered, 4) if math.isfinite(recovered) else float("nan"),
    }



def top_features(model: nn.Module, tokenizer: Any, sae: SparseAutoencoder, texts: list[str],
                 baseline: list[str] | None = None, n: int = 10) -> list[dict[str, float]]:
    """The SAE features that fire most on `texts` (mean over their tokens), or most above `baseline`.

    A starting point for sae_feature steering: features that fire on texts showing a
    concept, ranked by mean activation (minus the baseline texts' mean when given).
    """
    from steer.sites.read import Span, pooled_activations

    site = sae.site_for(model)
    sae.to(next(SiteMap(model).model.parameters()).device)

    def encode(_: Site, hidden: torch.Tensor) -> torch.Tensor:
        return sae.encode(hidden.float())

    def mean_acts(batch: list[str]) -> torch.Tensor:
        spans = [Span(t) for t in batch]
        return pooled_activations(model, tokenizer, spans, [site], templated=False, transform=encode,
                                  desc="SAE features")[site]

    acts = mean_acts(texts)
    score = acts.mean(0) - (mean_acts(baseline).mean(0) if baseline else 0.0)
    order = torch.argsort(score, descending=True)[:n]
    return [{"feature": int(i), "score": round(float(score[i]), 4), "mean_activation": round(float(acts[:, i].mean()), 4),
             "firing_share": round(float((acts[:, i] > 0).float().mean()), 4)} for i in order]
