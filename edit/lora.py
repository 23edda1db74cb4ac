"""LoRA editing: low-rank adapters trained with peft on MLP down-projections, then merged as a weight delta.

peft wraps the chosen down-projections (the modules behind `mlp_down_weight.L`) in LoRA
layers, Adam trains only their A and B on the edit's loss (target tokens only, as FT-M,
or prompt and target, as FT-L), and `unload()` puts the original modules back untouched.
The trained update, B A * lora_alpha / rank (what peft's `get_delta_weight` and merge
add), is returned as the edit's delta, kept factored (`steer.edit.lowrank`): the Editor writes it into the weights like any other edit and keeps
what rollback needs, so the result is a permanent, rank-limited write with a recorded delta
and no adapter left in the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from steer.edit.context import EditContext, frozen
from steer.edit.errors import EditError
from steer.edit.ft import train
from steer.edit.hparams import LoRAHparams
from steer.edit.lowrank import LowRank
from steer.edit.methods import EditMethod, MethodOutput
from steer.edit.requests import EditRequest
from steer.edit.tokens import encode


def _module_names(ctx: EditContext, layers: list[int]) -> dict[int, str]:
    """layer -> the dotted name of the module that owns the down-projection weight."""
    owners = {id(p): name.rsplit(".", 1)[0] for name, p in ctx.sites.model.named_parameters()}
    return {layer: owners[id(ctx.sites.weight(layer))] for layer in layers}


def apply_lora(ctx: EditContext, requests: Sequence[EditRequest], hp: LoRAHparams) -> MethodOutput:
    try:
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer
    except ImportError:
        raise EditError("The lora method trains its adapters with peft: pip install peft") from None
    model = ctx.sites.model
    layers = sorted({ctx.sites.check_layer(layer) for layer in hp.layers})
    names = _module_names(ctx, layers)
    config = LoraConfig(r=hp.rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout, bias="none",
                        target_modules=sorted(names.values()),
                        fan_in_fan_out=ctx.sites.arch.down_weight_layout != "out_in")
    rows = [encode(ctx.tokenizer, r.prompt, r.target_new) for r in requests]
    losses: list[float] = []
    deltas: dict[int, LowRank] = {}
    adapters: dict[int, dict[str, torch.Tensor]] = {}
    had_config = hasattr(model, "peft_config")
    was_training = model.training
    with frozen(model), torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(hp.seed)  # A's random initialisation
        wrapped = get_peft_model(model, config)
        try:
            lora_layers = {layer: wrapped.get_submodule("base_model.model." + names[layer]) for layer in layers}
            params = [p for m in lora_layers.values() for p in m.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=hp.lr)
            model.train(hp.lora_dropout > 0)  # dropout only when asked for
            with torch.enable_grad():
                losses = train(ctx, rows, optimizer, hp.num_steps, hp.batch_size, hp.loss_on)
            with torch.no_grad():
                for layer, module in lora_layers.items():
                    if not isinstance(module, LoraLayer):
                        raise EditError(f"peft did not wrap {names[layer]} in a LoRA layer.")
                    a = module.lora_A["default"].weight.detach().clone()  # [r, in]
                    b = module.lora_B["default"].weight.detach().clone()  # [out, r]
                    # peft's get_delta_weight is B A * scaling (transposed for Conv1D); kept factored
                    deltas[layer] = LowRank(b.float() * module.scaling["default"], a.float())
                    adapters[layer] = {"A": a, "B": b}
        finally:
            wrapped.unload()  # the original modules (and their untouched weights) go back in place
            if not had_config and hasattr(model, "peft_config"):
                del model.peft_config
            model.train(was_training)
    return MethodOutput(deltas, {"layers": layers, "losses": losses, "adapters": adapters,
                                 "scaling": hp.lora_alpha / hp.rank, "modules": names})


METHODS = (
    EditMethod("lora", LoRAHparams, apply_lora, batched=True, needs_stats=False,
               description="LoRA adapters on MLP down-projections trained with peft, merged as a rank-r delta",
               needs_subject=False),
)
