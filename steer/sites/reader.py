"""The one way steer reads activations: batches of token rows, one forward pass each,
stopped after the deepest site.

Steering reads (CAA, STA, LM-Steer data, SAE measurements: `pooled_activations`, left
padding), editing reads (ROME/MEMIT/AlphaEdit keys and outputs: `EditContext.read_at`,
right padding) and key statistics (`steer.edit.stats`, equal-length chunks, no padding)
all go through `read_rows`, which pads and batches token rows and runs each batch with
`read_forward`. `read_forward` records the requested sites and then ends the forward pass
at the output of the deepest block it needs: reading layer 6 of a 30-layer model runs 7
blocks, not 30, and never the LM head (a fifth of a small model). The stop is an
exception raised by a hook that only this call's context sees (hooks are context-local),
caught here; nothing else observes a partial pass, and no KV cache is involved
(`use_cache=False`).

Both run on a backend (`steer.sites.backend`): torch hooks, or nnsight's trace when an
nnsight block is active on the model in this context or `backend="nnsight"` is named.
Either way the model gets exactly the inputs built here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from steer.sites.hooks import ForwardState, Recorder, intervene
from steer.sites.resolve import Site, SiteMap
from steer.sites.table import ArchTable

# Which sites come later in a forward pass: block sites by layer; embed first; the final
# norm and LM head last.
_ORDER_OUTSIDE_BLOCKS = {"embed": -1, "final_norm": 10**6, "lm_head": 10**6 + 1}


class _DeepestSiteRead(Exception):
    """Raised after the deepest requested site has been recorded; ends the pass early."""


@dataclass
class _StopAfter:
    site: Site

    def __call__(self, hidden: torch.Tensor, state: ForwardState) -> torch.Tensor:
        raise _DeepestSiteRead


def stop_site(sites: Sequence[Site]) -> Site | None:
    """Where the pass can end once `sites` are read (None: it must run to the end).

    Within the deepest block we stop at its output, not at the deepest site itself, so the
    order of a block's parts (parallel attention and MLP in GPT-NeoX) never matters.
    """
    deepest = max(sites, key=lambda s: s.layer if s.layer is not None else _ORDER_OUTSIDE_BLOCKS[s.name])
    if deepest.layer is not None:
        return Site("resid_post", deepest.layer)
    if deepest.name == "lm_head":
        return None
    return deepest


def read_forward(
    model: nn.Module,
    inputs: Mapping[str, Any],
    sites: Sequence[Site | str],
    *,
    stop_early: bool = True,
    arch: ArchTable | None = None,
    backend: Any = None,
) -> dict[Site, torch.Tensor]:
    """Activations [batch, tokens, dim] at `sites` for one forward pass on `inputs`.

    `inputs` are the model's keyword arguments (input_ids, attention_mask, position_ids ...),
    passed as given; `use_cache=False` is added. Gradients follow the caller's mode (wrap in
    `torch.no_grad()` or `torch.inference_mode()` when reading). `backend` (a name or a
    `Backend`): None reads through the nnsight block active on `model` in this context if
    there is one (a plain pass would be refused there), else with torch hooks.
    """
    from steer.sites.backend import TorchBackend, get_backend, reading_backend  # local: backend.py imports this

    other = get_backend(backend) if backend is not None else reading_backend(model)
    if other is not None and not isinstance(other, TorchBackend):
        return other.read(model, inputs, sites, arch=arch, stop_early=stop_early, positions_from_mask=False)
    site_map = SiteMap(model, arch)
    wanted = list(dict.fromkeys(site_map.normalise(s) for s in sites))
    recorders = [Recorder(site) for site in wanted]
    interventions: list[Any] = list(recorders)
    stop = stop_site(wanted) if stop_early else None
    if stop is not None:
        interventions.append(_StopAfter(stop))  # after the recorders: a site's hooks run in order
    with intervene(site_map.model, interventions, arch):
        try:
            site_map.model(**{**inputs, "use_cache": False})
        except _DeepestSiteRead:
            pass
    return {recorder.site: recorder.values[0] for recorder in recorders}


# ---- batches of token rows ------------------------------------------------------------------

Padding = Literal["left", "right", "none"]


def pad_rows(rows: Sequence[Sequence[int]], pad_token_id: int, side: Literal["left", "right"],
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([rows, width] ids, attention mask) with each row padded on `side` to the longest row."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, columns] = torch.tensor(list(row), dtype=torch.long)
        mask[i, columns] = 1
    return ids.to(device), mask.to(device)


def row_inputs(rows: Sequence[Sequence[int]], padding: Padding, pad_token_id: int = 0,
               device: torch.device | str | None = None) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The model's inputs for `rows`, and the column of each row's first token.

    - "left": ids, mask and positions from the mask (each row's first real token at
      position 0, as `generate` does): steering reads, whose rows end where generation starts;
    - "right": ids and mask; positions stay the natural 0..len-1 of every row: editing reads;
    - "none": ids only; every row must have the same length (corpus chunks for statistics).
    """
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("read_rows needs at least one row, and no empty row")
    if padding == "none":
        if len({len(row) for row in rows}) != 1:
            raise ValueError("padding='none' needs rows of one length; use 'left' or 'right'")
        return {"input_ids": torch.tensor([list(row) for row in rows], dtype=torch.long).to(device)}, [0] * len(rows)
    if padding not in ("left", "right"):
        raise ValueError(f"padding is 'left', 'right' or 'none', not {padding!r}")
    from steer.prompts import position_ids_for

    ids, mask = pad_rows(rows, pad_token_id, padding)
    width = ids.shape[1]
    if padding == "right":
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, [0] * len(rows)
    return ({"input_ids": ids.to(device), "attention_mask": mask.to(device),
             "position_ids": position_ids_for(mask).to(device)}, [width - len(row) for row in rows])


@dataclass(frozen=True)
class ReadBatch:
    """One batch of `read_rows`: which rows it holds and their activations.

    `activations[site][b, offsets[b] + t]` is token t of row `indices[b]`.
    """

    indices: list[int]
    offsets: list[int]
    activations: dict[Site, torch.Tensor]


def read_rows(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    sites: Sequence[Site | str],
    *,
    padding: Padding,
    pad_token_id: int = 0,
    batch_size: int = 8,
    longest_first: bool = False,
    backend: Any = None,
    arch: ArchTable | None = None,
    progress: bool = False,
    desc: str = "reading activations",
) -> Iterator[ReadBatch]:
    """Read `sites` for token rows (lists of ids), `batch_size` rows per forward pass.

    Batches follow the rows' order, or longest first (`longest_first`: less padding, and the
    first batch is the peak of memory). Each batch is one `read_forward` (stopped after the
    deepest site) through `backend` (None: this context's; see `read_forward`). Gradients
    follow the caller's mode. A progress bar over rows shows when `progress`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i])) if longest_first else list(range(len(rows)))
    site_map = SiteMap(model, arch)
    wanted = list(dict.fromkeys(site_map.normalise(s) for s in sites))
    device = next(site_map.model.parameters()).device
    with tqdm(total=len(rows), desc=desc, disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            inputs, offsets = row_inputs([rows[i] for i in indices], padding, pad_token_id, device)
            activations = read_forward(site_map.model, inputs, wanted, arch=arch, backend=backend)
            yield ReadBatch(indices, offsets, activations)
            bar.update(len(indices))
