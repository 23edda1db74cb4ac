"""LM-Steer (Han et al., ACL 2024): a learned low-rank transform of the final hidden state.

    h' = h + epsilon * sum_i s_i (h P1_i) P2_i^T        at the `final_norm` site output

P1_i, P2_i are [hidden, rank]; s_i is the steer value, set at apply time (the
multiplier). Training freezes the model and fits P1, P2 with the language-model loss on
texts labelled s = +1 (showing the behaviour) and s = -1 (its opposite), so that positive
values pull the output distribution towards the positive texts.

Because the transform sits on the last activation before the unembedding, training
reads each text's `final_norm` states once (no gradient through the model) and then fits
P1, P2 against `lm_head` alone: the same loss as the original's full forward, at a
fraction of the cost. The artifact is safetensors (projector1, projector2, metadata in
the header), never pickled.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from steer.errors import ConfigError, DataError, VectorError
from steer.io.datasets import ContrastiveData
from steer.io.tensors import read_tensors, write_tensors
from steer.methods import SteeringMethod
from steer.prompts import encode_batch, forward_inputs
from steer.refs import finite_multiplier
from steer.sites.hooks import POSITION_POLICIES, ForwardState, PositionPolicy
from steer.sites.reader import read_forward
from steer.sites.resolve import Site, SiteMap
from steer.vector import FORMAT_VERSION, VectorMeta

KIND = "lm_steer"
SITE = Site.parse("final_norm")


@dataclass
class LMSteerHparams:
    rank: int = 8
    num_steers: int = 1  # texts carry one label, so one steer; several files compose at apply time
    epsilon: float = 1e-3  # scale of the transform, as in the original
    init_var: float = 1e-2  # std of the random initialisation of P1, P2
    lr: float = 1e-2
    epochs: int = 2
    batch_size: int = 16
    max_texts: int | None = 200  # per class (positive, negative)
    max_tokens: int = 64  # truncate long texts
    regularization: float = 0.0  # weight of |P1|^2 + |P2|^2
    seed: int = 0

    def validate(self) -> None:
        if self.rank < 1 or self.num_steers < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("lm_steer: rank, num_steers, epochs and batch_size must be at least 1.")
        if self.epsilon <= 0 or self.lr <= 0:
            raise ConfigError("lm_steer: epsilon and lr must be positive.")


def low_rank_delta(hidden: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_i s_i (h P1_i) P2_i^T for h [B, L, H], P [K, H, r], values [K] or [B, K]."""
    projected = torch.einsum("blh,khr->bklr", hidden, p1)
    scale = values.view(1, -1, 1, 1) if values.dim() == 1 else values.view(values.shape[0], -1, 1, 1)
    return torch.einsum("bklr,khr->blh", projected * scale, p2)


@dataclass
class LowRankTransform:
    """The LM-Steer intervention: h + epsilon * sum_i s_i (h P1_i) P2_i^T at the selected positions."""

    site: Site
    projector1: torch.Tensor
    projector2: torch.Tensor
    values: torch.Tensor  # [K]
    epsilon: float
    positions: PositionPolicy = "all"
    instruction_suffix: int = 1

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        device = hidden.device
        delta = low_rank_delta(hidden.float(), self.projector1.to(device, torch.float32),
                               self.projector2.to(device, torch.float32), self.values.to(device, torch.float32))
        mask = state.position_mask(self.positions, self.instruction_suffix)
        if mask is not None:
            delta = delta * mask.to(device, delta.dtype)
        return hidden + (self.epsilon * delta).to(hidden.dtype)


@dataclass
class LMSteer:
    """Trained LM-Steer projectors: projector1, projector2 [num_steers, hidden, rank]."""

    projector1: torch.Tensor
    projector2: torch.Tensor
    epsilon: float
    meta: VectorMeta = field(default_factory=VectorMeta)

    def __post_init__(self) -> None:
        if self.projector1.shape != self.projector2.shape or self.projector1.dim() != 3:
            raise VectorError(f"LM-Steer projectors must both be [steers, hidden, rank]; got "
                              f"{tuple(self.projector1.shape)} and {tuple(self.projector2.shape)}.")
        if not (torch.isfinite(self.projector1).all() and torch.isfinite(self.projector2).all()):
            raise VectorError("The LM-Steer projectors contain NaN or infinite values.")
        self.meta.hidden_size = int(self.projector1.shape[1])

    @property
    def num_steers(self) -> int:
        return int(self.projector1.shape[0])

    def at(self, values: float | list[float] = 1.0, positions: PositionPolicy = "all") -> LMSteerApplication:
        """This transform with steer values set: one number for every steer, or one per steer."""
        return LMSteerApplication(self, values, positions)

    def save(self, path: str | Path) -> Path:
        header = {"steer.format_version": FORMAT_VERSION, "steer.kind": KIND, "steer.epsilon": repr(self.epsilon),
                  "steer.meta": json.dumps(asdict(self.meta))}
        return write_tensors(path, {"projector1": self.projector1, "projector2": self.projector2}, header)

    @classmethod
    def load(cls, path: str | Path) -> LMSteer:
        header, tensors = read_tensors(path, error=VectorError, what="LM-Steer file",
                                       fix="Make one with `steer generate --method lm_steer`.")
        if header.get("steer.kind") != KIND or set(tensors) != {"projector1", "projector2"}:
            raise VectorError(f"{path} is not an LM-Steer file; make one with `steer generate --method lm_steer`.")
        try:
            raw = json.loads(header["steer.meta"])
            meta = VectorMeta(**{k: v for k, v in raw.items() if k in VectorMeta.__dataclass_fields__})
            return cls(tensors["projector1"], tensors["projector2"], float(header["steer.epsilon"]), meta)
        except (KeyError, ValueError, TypeError) as exc:
            raise VectorError(f"{path} has an unreadable LM-Steer header: {exc}") from None


@dataclass
class LMSteerApplication:
    """An LMSteer with its steer values: what `steering()` applies (a SteerSpec)."""

    steer: LMSteer
    values: float | list[float] = 1.0
    positions: PositionPolicy = "all"

    @property
    def multiplier(self) -> float | list[float]:
        return self.values

    def validate(self, sites: SiteMap, model_id: str | None) -> None:
        if self.steer.meta.hidden_size != sites.hidden_size:
            raise VectorError(
                f"This LM-Steer file was made for {self.steer.meta.model_id or 'another model'} (hidden size "
                f"{self.steer.meta.hidden_size}); the model has hidden size {sites.hidden_size}. "
                "Train one for this model with `steer generate --method lm_steer`."
            )

    def interventions(self, sites: SiteMap, instruction_suffix: int) -> list[LowRankTransform]:
        if self.positions not in POSITION_POLICIES:
            raise ConfigError(f"Unknown position policy {self.positions!r}; use one of {POSITION_POLICIES}.")
        count = self.steer.num_steers
        values = ([finite_multiplier(self.values, "LM-Steer value")] * count if isinstance(self.values, (int, float))
                  else [finite_multiplier(v, "LM-Steer value") for v in self.values])
        if len(values) != count:
            raise ConfigError(f"This LM-Steer file has {count} steers; give {count} values, not {len(values)}.")
        return [LowRankTransform(sites.normalise(SITE), self.steer.projector1, self.steer.projector2,
                                 torch.tensor(values), self.steer.epsilon, self.positions, instruction_suffix)]


def _final_states(model: Any, tokenizer: Any, texts: list[str], hp: LMSteerHparams) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(final_norm states [B, L, H], next-token targets [B, L], mask [B, L]) per batch, read once."""
    batches = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(texts), hp.batch_size), desc="LM-Steer: reading", leave=False):
        chunk = [tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][: hp.max_tokens])
                 for t in texts[start : start + hp.batch_size]]
        batch = encode_batch(tokenizer, chunk, templated=False, device=device)
        with torch.inference_mode():  # stops after the final norm: the LM head is never run here
            states = read_forward(model, forward_inputs(batch), [SITE])[SiteMap(model).normalise(SITE)].float().cpu()
        ids, mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu()
        # predict token t+1 from position t; both must be real tokens
        batches.append((states[:, :-1], ids[:, 1:], (mask[:, :-1] * mask[:, 1:]).bool()))
    return batches


def train_lm_steer(model: Any, tokenizer: Any, positive: list[str], negative: list[str], hp: LMSteerHparams) -> tuple[LMSteer, dict[str, Any]]:
    if not positive or not negative:
        raise DataError("lm_steer needs positive and negative texts (--positive FILE --negative FILE).")
    site_map = SiteMap(model)
    generator = torch.Generator().manual_seed(hp.seed)
    # mix the classes so every batch pulls both ways
    order = torch.randperm(len(positive) + len(negative), generator=generator).tolist()
    texts = [(positive + negative)[i] for i in order]
    labels = torch.tensor([1.0] * len(positive) + [-1.0] * len(negative))[order]
    started = time.perf_counter()
    batches = _final_states(site_map.model, tokenizer, texts, hp)
    shape = (hp.num_steers, site_map.hidden_size, hp.rank)
    p1 = (torch.randn(shape, generator=generator) * hp.init_var).requires_grad_()
    p2 = (torch.randn(shape, generator=generator) * hp.init_var).requires_grad_()
    head = site_map.module(Site.parse("lm_head"))
    cap = getattr(getattr(site_map.model, "config", None), "final_logit_softcapping", None)
    optimizer = torch.optim.Adam([p1, p2], lr=hp.lr)
    for parameter in head.parameters():
        parameter.requires_grad_(False)
    losses: list[float] = []
    batch_labels = [labels[i : i + hp.batch_size] for i in range(0, len(texts), hp.batch_size)]
    with tqdm(total=hp.epochs * len(batches), desc="LM-Steer: training", leave=False) as bar:
        for _ in range(hp.epochs):
            for b in torch.randperm(len(batches), generator=generator).tolist():
                states, targets, mask = batches[b]
                values = batch_labels[b].view(-1, 1).expand(-1, hp.num_steers)
                steered = states + hp.epsilon * low_rank_delta(states, p1, p2, values)
                logits = head(steered.to(head.weight.dtype)).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
                if hp.regularization:
                    loss = loss + hp.regularization * (p1.pow(2).sum() + p2.pow(2).sum())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.perf_counter() - started
    meta = VectorMeta(method=KIND, model_id=None, hidden_size=site_map.hidden_size, num_layers=site_map.num_layers)
    stats = {"train_seconds": round(seconds, 2), "first_loss": losses[0], "last_loss": losses[-1],
             "texts": {"positive": len(positive), "negative": len(negative)}}
    return LMSteer(p1.detach(), p2.detach(), hp.epsilon, meta), stats


def make_lm_steer(model: Any, tokenizer: Any, data: ContrastiveData, hp: LMSteerHparams,
                  model_id: str | None = None) -> LMSteer:
    if data.kind == "ab":
        raise DataError("lm_steer trains on texts: give --positive FILE --negative FILE (or text/label items).")
    if data.kind == "pairs":
        positive = [f"{p.prompt} {p.positive}".strip() for p in data.pairs or []]
        negative = [f"{p.prompt} {p.negative}".strip() for p in data.pairs or []]
    else:
        positive, negative = list(data.positive_texts or []), list(data.negative_texts or [])
    limit = hp.max_texts
    steer, stats = train_lm_steer(model, tokenizer, positive[:limit], negative[:limit], hp)
    steer.meta.model_id = model_id
    steer.meta.data_hash = data.source_hash
    steer.meta.extra = {"hparams": hp.__dict__.copy(), "site": str(SITE), **stats}
    return steer


METHOD = SteeringMethod(
    name=KIND,
    hparams=LMSteerHparams,
    make=make_lm_steer,
    description="LM-Steer: a low-rank transform of the final hidden state, trained with the LM loss on +1/-1 texts.",
)
