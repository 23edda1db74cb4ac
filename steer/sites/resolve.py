"""Named sites and their resolution to modules of a concrete model.

A `Site` is an abstract place in the network ("resid_post" at layer 12). `SiteMap`
turns it into the module (and whether its input or output is meant) using the
architecture's `ArchTable`. Every reader and writer of the model goes through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from steer.errors import SiteError, closest
from steer.sites.table import ArchTable, arch_table

# name -> (part of the block or model, which side of the module, needs a layer)
_SITE_KINDS: dict[str, tuple[str, Literal["input", "output", "weight"], bool]] = {
    "embed": ("embed", "output", False),
    "resid_pre": ("block", "input", True),
    "resid_post": ("block", "output", True),
    "attn_out": ("attn", "output", True),
    "mlp_out": ("mlp", "output", True),
    "mlp_key": ("mlp_down", "input", True),
    "mlp_down_weight": ("mlp_down", "weight", True),
    "final_norm": ("final_norm", "output", False),
    "lm_head": ("lm_head", "output", False),
}
SITE_NAMES: tuple[str, ...] = tuple(_SITE_KINDS)
ACTIVATION_SITES: tuple[str, ...] = tuple(n for n, k in _SITE_KINDS.items() if k[1] != "weight")


@dataclass(frozen=True, order=True)
class Site:
    """An abstract site: `Site("resid_post", 12)`, `Site("final_norm")`. String form: "resid_post.12"."""

    name: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.name not in _SITE_KINDS:
            raise SiteError(
                f"Unknown site {self.name!r}.{closest(self.name, SITE_NAMES)} Sites: {', '.join(SITE_NAMES)}."
            )
        needs_layer = _SITE_KINDS[self.name][2]
        if needs_layer and self.layer is None:
            raise SiteError(f"Site {self.name!r} needs a layer, e.g. '{self.name}.12'.")
        if not needs_layer and self.layer is not None:
            raise SiteError(f"Site {self.name!r} has no layer; write just '{self.name}'.")

    @classmethod
    def parse(cls, text: str | Site) -> Site:
        if isinstance(text, Site):
            return text
        name, _, layer = str(text).partition(".")
        if layer:
            try:
                return cls(name, int(layer))
            except ValueError:
                raise SiteError(f"Bad site {text!r}: the part after '.' must be a layer number.") from None
        return cls(name)

    @property
    def side(self) -> Literal["input", "output", "weight"]:
        return _SITE_KINDS[self.name][1]

    def __str__(self) -> str:
        return self.name if self.layer is None else f"{self.name}.{self.layer}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain torch module behind an nnsight wrapper (or the model itself)."""
    if isinstance(model, nn.Module):
        return model
    for attribute in ("_module", "_model"):  # nnsight 0.8 and older
        inner = getattr(model, attribute, None)
        if isinstance(inner, nn.Module):
            return inner
    raise SiteError(f"{type(model).__name__} is neither a torch model nor an nnsight wrapper of one.")


class SiteMap:
    """Resolves sites of one loaded model to its modules."""

    def __init__(self, model: nn.Module, arch: ArchTable | None = None) -> None:
        self.model = unwrap_model(model)
        config = getattr(self.model, "config", None)
        self.model_type: str = getattr(config, "model_type", type(self.model).__name__)
        self.arch = arch or arch_table(self.model_type)
        try:
            self.blocks: nn.ModuleList = self.model.get_submodule(self.arch.layers)  # type: ignore[assignment]
        except AttributeError as exc:
            raise SiteError(
                f"The site table for {self.model_type!r} expects blocks at {self.arch.layers!r}, "
                f"but this model has none there ({exc}). Pass a matching ArchTable."
            ) from None
        self.num_layers = len(self.blocks)
        self.hidden_size: int = self._find_hidden_size(config)

    def _find_hidden_size(self, config: object) -> int:
        # a multimodal config keeps the language model's sizes in its text config
        get_text_config = getattr(config, "get_text_config", None)
        text_config = get_text_config() if callable(get_text_config) else config
        for source in (text_config, config):
            for key in ("hidden_size", "n_embd", "d_model"):
                value = getattr(source, key, None)
                if isinstance(value, int):
                    return value
        weight = getattr(self.model.get_submodule(self._first_existing(self.arch.embed)), "weight", None)
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[-1])
        raise SiteError(f"Cannot tell the hidden size of {self.model_type!r} from its config.")

    def check_layer(self, layer: int) -> int:
        """Normalise a (possibly negative) layer index; error if out of range."""
        resolved = layer + self.num_layers if layer < 0 else layer
        if not 0 <= resolved < self.num_layers:
            raise SiteError(
                f"Layer {layer} is out of range: this {self.model_type} model has {self.num_layers} "
                f"layers (0..{self.num_layers - 1}, or negative from the end)."
            )
        return resolved

    def normalise(self, site: Site | str) -> Site:
        site = Site.parse(site)
        if site.layer is not None:
            layer = self.check_layer(site.layer)
            if layer != site.layer:
                site = Site(site.name, layer)
        return site

    def _part_path(self, site: Site) -> str:
        part = _SITE_KINDS[site.name][0]
        if site.layer is None:
            return self._first_existing(getattr(self.arch, part))
        block = f"{self.arch.layers}.{site.layer}"
        if part == "block":
            return block
        return self._first_existing(getattr(self.arch, part), prefix=f"{block}.")

    def _first_existing(self, paths: str, prefix: str = "") -> str:
        """The first of the "|"-separated alternatives that this model has (else the first)."""
        options = [prefix + p for p in paths.split("|")]
        if len(options) > 1:
            for option in options:
                try:
                    self.model.get_submodule(option)
                    return option
                except AttributeError:
                    continue
        return options[0]

    def module_path(self, site: Site | str) -> str:
        """Dotted path of the module behind `site`, relative to the model root."""
        return self._part_path(self.normalise(site))

    def module(self, site: Site | str) -> nn.Module:
        site = self.normalise(site)
        why = self.arch.lacking(_SITE_KINDS[site.name][0])
        if why is not None:
            raise SiteError(f"This {self.model_type} model has no site {site}: {why}.")
        path = self.module_path(site)
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            raise SiteError(
                f"Site {site} should be at {path!r} for {self.model_type!r}, but the model has no such module."
            ) from None

    def weight(self, layer: int) -> torch.nn.Parameter:
        """The MLP down-projection weight of `layer` (the site editing methods write to)."""
        return self.module(Site("mlp_down_weight", layer)).weight  # type: ignore[return-value]

    def down_weight_as_out_in(self, layer: int) -> torch.Tensor:
        """The down-projection weight viewed as [out, in] whatever the storage layout."""
        weight = self.weight(layer)
        return weight if self.arch.down_weight_layout == "out_in" else weight.T

    def nnsight_path(self, site: Site | str) -> tuple[str, Literal["input", "output"]]:
        """Where the site is on an nnsight envoy: (dotted module path, 'input' or 'output')."""
        site = self.normalise(site)
        if site.side == "weight":
            raise SiteError(f"Site {site} is a weight, not an activation.")
        return self._part_path(site), site.side  # type: ignore[return-value]
