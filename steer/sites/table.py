"""The site table: where each abstract site lives in each architecture family.

This is data, not code. Steering reads and writes activations at these sites, and
editing writes weight deltas to the `mlp_down` module named here, so both halves of
steer agree on what "layer 12's MLP" means. Families that share a layout share one
table (pyvene keeps six identical llama-like copies; we keep one).

To support a new architecture, call `register_architecture(model_type, ArchTable(...))`
or pass `arch=ArchTable(...)` where a model is resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from steer.errors import SiteError, closest


@dataclass(frozen=True)
class ArchTable:
    """Module paths (relative to the `*ForCausalLM` root) for one architecture family.

    `{layer}` in `layers` is not used: `layers` names the ModuleList of blocks, and the
    per-block names are relative to one block. A path may list alternatives with "|"
    where transformers releases differ ("lm_head|embed_out"); the first that exists wins.
    """

    layers: str  # the ModuleList of decoder blocks
    attn: str  # attention module inside a block; its first output is the attention output
    mlp: str  # MLP module inside a block
    mlp_down: str  # the MLP's output projection inside a block (keys in, values out)
    embed: str  # token embedding module
    final_norm: str  # norm applied after the last block
    lm_head: str  # unembedding (its output is before any final logit softcapping, as in Gemma 2)
    # Layout of `mlp_down.weight`: torch Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    down_weight_layout: Literal["out_in", "in_out"] = "out_in"
    # Parts this family does not have, with the reason: (part, why). Sites on them are a
    # clear error (e.g. a mixture-of-experts block has no single MLP down-projection, so
    # steering works but ROME/MEMIT cannot edit it).
    lacks: tuple[tuple[str, str], ...] = ()

    def lacking(self, part: str) -> str | None:
        """Why this family has no `part`, or None when it has one."""
        return dict(self.lacks).get(part)


LLAMA_LIKE = ArchTable(
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    mlp_down="mlp.down_proj",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

# Mixtures of experts: the block's MLP is a router plus experts (one down-projection per
# expert, fused into one tensor in transformers 5), so there is no single MLP down-projection.
MIXTURE_OF_EXPERTS = replace(
    LLAMA_LIKE,
    mlp="mlp|block_sparse_moe",  # transformers 4.x named Mixtral's MoE block block_sparse_moe
    mlp_down="",
    lacks=(("mlp_down", "its MLP is a mixture of experts, with one down-projection per expert and no single "
                        "MLP down-projection: steering at resid/attn/mlp_out sites works, but mlp_key reads and "
                        "weight edits (ROME, MEMIT, AlphaEdit) need a dense MLP"),),
)

# Gemma 3 with its vision tower (Gemma3ForConditionalGeneration): the text model sits under
# model.language_model. The text-only Gemma3ForCausalLM (model_type gemma3_text) is llama-like.
GEMMA3_MULTIMODAL = ArchTable(
    layers="model.language_model.layers",
    attn="self_attn",
    mlp="mlp",
    mlp_down="mlp.down_proj",
    embed="model.language_model.embed_tokens",
    final_norm="model.language_model.norm",
    lm_head="lm_head",
)

GPT2 = ArchTable(
    layers="transformer.h",
    attn="attn",
    mlp="mlp",
    mlp_down="mlp.c_proj",
    embed="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    down_weight_layout="in_out",
)

GPT_NEOX = ArchTable(
    layers="gpt_neox.layers",
    attn="attention",
    mlp="mlp",
    mlp_down="mlp.dense_4h_to_h",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    lm_head="lm_head|embed_out",  # transformers 5 renamed GPT-NeoX's embed_out to lm_head
)

# Keyed by `config.model_type`, never by substrings of a checkpoint name.
_ARCHITECTURES: dict[str, ArchTable] = {
    **{
        family: LLAMA_LIKE
        for family in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
        )
    },
    "mixtral": MIXTURE_OF_EXPERTS,
    "qwen3_moe": MIXTURE_OF_EXPERTS,
    "gemma3": GEMMA3_MULTIMODAL,
    "gpt2": GPT2,
    "gpt_neox": GPT_NEOX,
}


def register_architecture(model_type: str, table: ArchTable, *, replace: bool = False) -> None:
    """Teach steer a new architecture family (or override one with `replace=True`)."""
    if model_type in _ARCHITECTURES and not replace:
        raise SiteError(
            f"Architecture {model_type!r} is already registered; pass replace=True to override it."
        )
    _ARCHITECTURES[model_type] = table


def arch_table(model_type: str) -> ArchTable:
    try:
        return _ARCHITECTURES[model_type]
    except KeyError:
        raise SiteError(
            f"steer has no site table for architecture {model_type!r}.{closest(model_type, _ARCHITECTURES)} "
            f"Known: {', '.join(sorted(_ARCHITECTURES))}. Add one with "
            "steer.sites.register_architecture(model_type, ArchTable(layers=..., attn=..., mlp=..., "
            "mlp_down=..., embed=..., final_norm=..., lm_head=...))."
        ) from None


def known_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)
