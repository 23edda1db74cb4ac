"""Typed hyper-parameters of the editing methods.

Shared groups are mixed in rather than copied: every method that needs key statistics
has the `StatsHparams` fields, every method that optimises a target value has the
`ValueHparams` fields. Loaded strictly from hparams/<method>/<model>.yaml by
`steer.config.load_hparams` (unknown keys are errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from steer.errors import ConfigError


@dataclass
class StatsHparams:
    # Second-moment statistics of the layer's keys (inputs of the MLP down-projection).
    corpus: str | None = None  # a UTF-8 text file; None = the WikiText-2 sample shipped with steer
    mom2_n_samples: int = 200  # text chunks of `mom2_seq_len` tokens
    mom2_seq_len: int = 256
    mom2_batch_size: int = 4

    def _validate_stats(self, name: str) -> None:
        if self.mom2_n_samples < 1 or self.mom2_seq_len < 2 or self.mom2_batch_size < 1:
            raise ConfigError(f"{name}: mom2_n_samples, mom2_batch_size must be >= 1 and mom2_seq_len >= 2.")


@dataclass
class ValueHparams:
    # Optimising the value the edited layer should output at the subject's last token.
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0  # |delta| <= factor * |original value|
    kl_factor: float = 0.0625  # keeps "{subject} is a" predictions close to the original
    nll_stop: float = 0.05  # stop early once the target's mean NLL is below this
    # Random context prefixes the key and value are averaged over: [[tokens, count], ...]
    context_template_lengths: list[list[int]] = field(default_factory=lambda: [[5, 5]])
    seed: int = 0

    def _validate_value(self, name: str) -> None:
        if self.v_num_grad_steps < 1 or self.v_lr <= 0:
            raise ConfigError(f"{name}: v_num_grad_steps must be >= 1 and v_lr > 0.")
        for pair in self.context_template_lengths:
            if len(pair) != 2 or min(pair) < 1:
                raise ConfigError(f"{name}: context_template_lengths items are [tokens, count], e.g. [[5, 5]].")


@dataclass
class ROMEHparams(StatsHparams, ValueHparams):
    layer: int = 5
    mom2_adjustment: bool = True  # u = C^-1 k (ROME); False uses the raw key
    # Which keys the rank-one update is solved for (rome only; r_rome always solves at k*):
    # 'rome': u = C^-1 k* (prefix-averaged key), exact at the plain prompt's key (Meng et al., 2022);
    # 'prompt': u = C^-1 k, exact at the plain prompt's key (the smallest update under C that does it);
    # 'every_prefix': the smallest update under C that is exact at the key of the plain prompt and of
    # every context prefix (what the value optimisation added, in every context it was optimised in).
    update_keys: Literal["rome", "prompt", "every_prefix"] = "rome"
    # Extra weight in C for keys of other subjects (both 0 = off, ROME's C; edit/rome.py, measured in
    # README_2 section 10, "ROME's locality"): C + mom2_entity_weight * C_entity (keys at the end of each
    # run of capitalised words in the corpus) + preserve_weight * (mean k k^T of the request's own prompt
    # with each subject of steer's generic list, edit/data/generic-subjects.txt, in place of its subject).
    mom2_entity_weight: float = 0.0
    preserve_weight: float = 0.0

    def validate(self) -> None:
        self._validate_stats("rome")
        self._validate_value("rome")
        if self.update_keys not in ("rome", "prompt", "every_prefix"):
            raise ConfigError(f"rome: update_keys must be 'rome', 'prompt' or 'every_prefix', not {self.update_keys!r}.")
        for name in ("mom2_entity_weight", "preserve_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise ConfigError(f"rome: {name} must be a finite number >= 0 (0 = off), not {value!r}.")
            if value and not self.mom2_adjustment:
                raise ConfigError(f"rome: {name} adds to the key statistics C; it needs mom2_adjustment: true.")


@dataclass
class MEMITHparams(StatsHparams, ValueHparams):
    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    mom2_update_weight: float = 15000.0  # lambda in (lambda C + K K^T)^-1: how much old keys are preserved
    v_num_grad_steps: int = 25

    def validate(self) -> None:
        self._validate_stats("memit")
        self._validate_value("memit")
        if not self.layers:
            raise ConfigError("memit: give at least one layer (layers: [3, 4, 5]).")


@dataclass
class AlphaEditHparams(MEMITHparams):
    nullspace_threshold: float = 2e-2  # eigenvalues of C below this span the null space
    L2: float = 10.0  # ridge on the projected normal equations

    def validate(self) -> None:
        super().validate()
        if self.nullspace_threshold <= 0 or self.L2 < 0:
            raise ConfigError("alphaedit: nullspace_threshold must be > 0 and L2 >= 0.")


@dataclass
class EMMETHparams(MEMITHparams):
    """EMMET's solve: equality constraints on the edited keys, preserved keys weighted by C."""

    mom2_update_weight: float = 10000.0  # C is scaled by this (EasyEdit: 10000-100000)
    update_norm_lambda: float = 0.0  # + this * I on the scaled C (a penalty on the update's norm)
    emmet_lambda: float = 0.1  # + this * I on K C^-1 K^T (keeps nearly equal keys solvable)

    def validate(self) -> None:
        super().validate()
        if self.mom2_update_weight <= 0 or self.update_norm_lambda < 0 or self.emmet_lambda < 0:
            raise ConfigError("emmet: mom2_update_weight must be > 0, update_norm_lambda and emmet_lambda >= 0.")


@dataclass
class FTHparams:
    layers: list[int] = field(default_factory=lambda: [5])
    lr: float = 5e-4
    num_steps: int = 25
    # L-infinity bound on each weight's change (FT-L); null = unconstrained
    norm_constraint: float | None = 5e-4
    # 'all': LM loss over prompt and target (FT-L); 'target': loss on the target tokens only (FT-M)
    loss_on: Literal["all", "target"] = "all"
    batch_size: int = 16

    def validate(self) -> None:
        if not self.layers or self.num_steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("ft: need layers, num_steps >= 1, lr > 0 and batch_size >= 1.")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ConfigError("ft: norm_constraint must be positive or null.")


@dataclass
class FTMHparams(FTHparams):
    """FT-M's defaults: loss on the target tokens only, no bound on the change."""

    norm_constraint: float | None = None
    loss_on: Literal["all", "target"] = "target"


@dataclass
class LoRAHparams:
    """LoRA on the MLP down-projections of `layers`, trained with peft and merged as a delta."""

    layers: list[int] = field(default_factory=lambda: [5])
    rank: int = 8
    lora_alpha: float = 32.0  # the update is B A * lora_alpha / rank
    lora_dropout: float = 0.0
    lr: float = 5e-3
    num_steps: int = 30
    # 'target': loss on the target tokens only (as FT-M); 'all': prompt and target (as FT-L)
    loss_on: Literal["all", "target"] = "target"
    batch_size: int = 16
    seed: int = 0  # peft initialises A randomly (B at zero)

    def validate(self) -> None:
        if not self.layers or self.rank < 1 or self.num_steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("lora: need layers, rank >= 1, num_steps >= 1, lr > 0 and batch_size >= 1.")
        if not 0 <= self.lora_dropout < 1 or self.lora_alpha <= 0:
            raise ConfigError("lora: lora_dropout must be in [0, 1) and lora_alpha > 0.")


@dataclass
class GRACEHparams:
    """GRACE: a codebook entry (key, value, radius) at one layer's down-projection per edit."""

    layer: int = 5
    eps: float = 1.0  # deferral radius: inputs whose key is within eps (euclidean) get the stored value
    num_steps: int = 50  # EasyEdit's n_iter
    lr: float = 1.0  # EasyEdit's edit_lr: Adam's learning rate for the codebook values (edit/grace.py)
    nll_stop: float = 0.01  # stop once the target's mean NLL is below this
    # True: an answer-position entry (the 2nd, 3rd... of an edit) fires only at the position right after
    # the one where the edit's previous entry fired, so only after the edit's prompt matched (keys at
    # answer tokens are generic tokens that unrelated text also produces: with False, each entry matches
    # on its own key anywhere, and 100 sequential ZsRE edits kept locality 0.32; edit/grace.py).
    answer_after_prompt: bool = True

    def validate(self) -> None:
        if self.eps <= 0 or self.num_steps < 1 or self.lr <= 0:
            raise ConfigError("grace: eps and lr must be > 0 and num_steps >= 1.")
        if not isinstance(self.answer_after_prompt, bool):
            raise ConfigError(f"grace: answer_after_prompt must be true or false, not {self.answer_after_prompt!r}.")


@dataclass
class KNHparams:
    """Knowledge neurons: integrated-gradients attribution over MLP neurons, then their value vectors edited."""

    layers: list[int] = field(default_factory=list)  # layers to search; empty = every layer (as EasyEdit)
    steps: int = 20  # integration steps (EasyEdit's steps / batch_size)
    adaptive_threshold: float = 0.2  # keep neurons with attribution > this * the largest attribution
    max_neurons: int = 50  # at most this many (the highest attributions)
    edit_scale: float = 2.0  # value vector += scale * (E[new] - E[old]) (the knowledge-neurons package's 2)

    def validate(self) -> None:
        if self.steps < 1 or not 0 < self.adaptive_threshold <= 1 or self.max_neurons < 1 or self.edit_scale <= 0:
            raise ConfigError("kn: steps >= 1, 0 < adaptive_threshold <= 1, max_neurons >= 1 and edit_scale > 0.")


@dataclass
class DINMHparams:
    """DINM: fine-tune the down-projection of the layer where safe and unsafe responses differ most."""

    layers: list[int] = field(default_factory=list)  # empty = locate the toxic layer per edit (DINM); else these
    lr: float = 5e-4
    num_steps: int = 10
    edit_loss_factor: float = 0.1  # EasyEdit's kl_factor: loss = this * NLL(safe response) + KL(general knowledge)
    norm_constraint: float | None = None  # optional L-infinity bound on the change

    def validate(self) -> None:
        if self.lr <= 0 or self.num_steps < 1 or self.edit_loss_factor <= 0:
            raise ConfigError("dinm: lr and edit_loss_factor must be > 0 and num_steps >= 1.")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ConfigError("dinm: norm_constraint must be positive or null.")


@dataclass
class WISEHparams:
    """WISE: a side memory (a masked change of one down-projection) used only where its activation gap says so."""

    layer: int = 5
    mask_ratio: float = 0.2  # share of the side memory's entries this edit may change
    lr: float = 1.0  # EasyEdit's edit_lr (SGD, weight decay 1e-5)
    num_steps: int = 70  # EasyEdit's n_iter
    norm_constraint: float | None = 1.0  # each changed entry stays within +-this of the original
    act_margin: list[float] = field(default_factory=lambda: [5.0, 20.0, 10.0])  # alpha, beta, gamma
    act_ratio: float = 0.88  # route to the side memory when the gap >= act_ratio * the edit's own gap
    seed: int = 0  # the mask

    def validate(self) -> None:
        if not 0 < self.mask_ratio <= 1 or self.lr <= 0 or self.num_steps < 1 or not 0 < self.act_ratio <= 1:
            raise ConfigError("wise: 0 < mask_ratio <= 1, lr > 0, num_steps >= 1 and 0 < act_ratio <= 1.")
        if len(self.act_margin) != 3 or min(self.act_margin) < 0:
            raise ConfigError("wise: act_margin is [alpha, beta, gamma], three non-negative numbers, e.g. [5, 20, 10].")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ConfigError("wise: norm_constraint must be positive or null.")


@dataclass
class IKEHparams:
    """IKE: no weight change; k demonstrations retrieved from a pool of edit records, put in front of prompts."""

    k: int = 16  # demonstrations per edit (EasyEdit's k; its files use 32)
    # Edit records the demonstrations are built from: a file `load_requests` reads (ZsRE, CounterFact,
    # EasyEdit-style...), or the records themselves (EasyEdit's train_ds); None = no demonstrations,
    # only the new fact
    pool: str | list[dict[str, Any]] | None = None
    pool_limit: int | None = None  # read only the first N records of the pool file

    def validate(self) -> None:
        if self.k < 0:
            raise ConfigError("ike: k (demonstrations per edit) must be >= 0.")
        if self.pool_limit is not None and self.pool_limit < 1:
            raise ConfigError("ike: pool_limit must be >= 1 or null.")


@dataclass
class PMETHparams(StatsHparams, ValueHparams):
    """PMET: attention and MLP outputs of the last layer optimised jointly; the MLP target spread over `layers`."""

    layers: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    mom2_update_weight: float = 15000.0  # lambda in (lambda C + K^T K)^-1, as MEMIT
    clamp_norm_factor: float = 1.0  # EasyEdit's PMET files (MEMIT: 4)

    def validate(self) -> None:
        self._validate_stats("pmet")
        self._validate_value("pmet")
        if not self.layers:
            raise ConfigError("pmet: give at least one layer (layers: [3, 4, 5]).")
        if self.mom2_update_weight <= 0:
            raise ConfigError("pmet: mom2_update_weight must be > 0.")
