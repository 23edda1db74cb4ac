"""Second-moment statistics of a layer's keys, C = E[k k^T], from a local text corpus.

ROME, MEMIT and AlphaEdit weigh their updates by C so that keys the model sees often
(ordinary text) are disturbed least. C is estimated from `mom2_n_samples` chunks of
`mom2_seq_len` tokens of a corpus (default: the WikiText-2 sample shipped in
steer.edit.data), cached on disk under `cache_dir()/stats` keyed by model, layer,
corpus hash, sample count and chunk length, written atomically as safetensors and
reused. There is never a download: a missing corpus is an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import torch

from steer.config import model_slug
from steer.edit.context import EditContext, model_id
from steer.edit.hparams import StatsHparams
from steer.errors import DataError, SteerError
from steer.io.tensors import read_tensors, write_tensors
from steer.models.loading import cache_dir
from steer.prompts import max_positions
from steer.sites.read import tokenize_with_offsets
from steer.sites.reader import read_rows
from steer.sites.resolve import Site

SHIPPED_CORPUS = "wikitext-2-sample.txt"
STATS_VERSION = "1"


def corpus_path(corpus: str | None) -> Path:
    if corpus is None:
        return Path(str(resources.files("steer.edit.data").joinpath(SHIPPED_CORPUS)))
    path = Path(corpus).expanduser()
    if not path.is_file():
        raise DataError(
            f"No corpus file at {path}. Give a UTF-8 text file with corpus=PATH, or leave corpus unset "
            "to use the WikiText-2 sample that ships with steer."
        )
    return path


def model_fingerprint(ctx: EditContext) -> str:
    """Name plus a hash of the config and the first embedding values: two models that share a name
    (e.g. differently seeded tiny test models) never share statistics."""
    model = ctx.sites.model
    config = getattr(model, "config", None)
    config_text = config.to_json_string(use_diff=False) if config is not None else type(model).__name__
    embed = ctx.sites.module(Site("embed")).weight.detach().reshape(-1)[:256].float().cpu()  # type: ignore[union-attr]
    digest = hashlib.sha256(config_text.encode() + embed.numpy().tobytes()).hexdigest()[:12]
    return f"{model_slug(model_id(model))}-{digest}"


def _cache_file(ctx: EditContext, layer: int, corpus_hash: str, hp: StatsHparams, seq_len: int, tag: str = "") -> Path:
    name = f"layer{layer}-mlp_key-{tag}{corpus_hash}-n{hp.mom2_n_samples}-len{seq_len}.safetensors"
    return cache_dir() / "stats" / model_fingerprint(ctx) / name


def _load(path: Path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    try:
        header, tensors = read_tensors(path)
    except SteerError:
        return None  # a corrupt or foreign file is recomputed, then replaced atomically
    return tensors.get("mom2") if header.get("steer.stats_version") == STATS_VERSION else None


def _chunks(ctx: EditContext, path: Path, hp: StatsHparams, seq_len: int) -> list[list[int]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ids: list[int] = []
    # tokenizing line by line keeps each call short (no over-length warnings)
    for line in lines:
        ids.extend(ctx.tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= hp.mom2_n_samples * seq_len:
            break
    chunks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][: hp.mom2_n_samples]
    if len(chunks) < hp.mom2_n_samples:
        raise DataError(
            f"The corpus {path} gives only {len(chunks)} chunks of {seq_len} tokens, fewer than "
            f"mom2_n_samples={hp.mom2_n_samples}. Lower mom2_n_samples or give a larger corpus=PATH."
        )
    return chunks


def _compute(ctx: EditContext, layers: list[int], chunks: list[list[int]], hp: StatsHparams,
             marks: list[list[bool]] | None, desc: str) -> tuple[dict[int, torch.Tensor], int]:
    """({layer: mean k k^T}, how many keys) over every token of `chunks`, or only where `marks` is True."""
    sites = [Site("mlp_key", layer) for layer in layers]
    sums: dict[int, torch.Tensor] = {}
    count = 0
    with torch.no_grad():
        # equal-length chunks: no padding, no mask; read on the context's backend, stopped after the deepest layer
        for batch in read_rows(ctx.sites.model, chunks, sites, padding="none", batch_size=hp.mom2_batch_size,
                               backend=ctx.backend, arch=ctx.sites.arch, progress=ctx.progress, desc=desc):
            keep = None if marks is None else torch.tensor([marks[i] for i in batch.indices], dtype=torch.bool)
            for site in sites:
                read = batch.activations[site]
                keys = (read if keep is None else read[keep.to(read.device)]).reshape(-1, read.shape[-1]).double()
                gram = keys.T @ keys
                sums[site.layer] = sums[site.layer] + gram if site.layer in sums else gram  # type: ignore[index]
            count += sum(len(chunks[i]) for i in batch.indices) if keep is None else int(keep.sum())
    return {layer: (total / count).cpu() for layer, total in sums.items()} if count else {}, count


def second_moments(ctx: EditContext, layers: list[int], hp: StatsHparams, *,
                   positions: str = "all") -> dict[int, torch.Tensor]:
    """{layer: C [d_in, d_in] float64}, from memo, disk cache, or one pass over the corpus.

    `positions`: "all" (every token of the corpus, the C of ROME and MEMIT) or "entity ends"
    (the last token of each run of capitalised words, `entity_ends`)."""
    if positions not in ("all", "entity ends"):
        raise ValueError(f"positions must be 'all' or 'entity ends', not {positions!r}")
    path = corpus_path(hp.corpus)
    corpus_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    limit = max_positions(ctx.sites.model)
    seq_len = min(hp.mom2_seq_len, limit) if limit else hp.mom2_seq_len
    tag = "" if positions == "all" else "entity-"
    key = f"{tag}{corpus_hash}-n{hp.mom2_n_samples}-len{seq_len}"
    result: dict[int, torch.Tensor] = {}
    missing: list[int] = []
    for layer in layers:
        if (layer, key) in ctx.stats:
            result[layer] = ctx.stats[(layer, key)]
            continue
        cached = _load(_cache_file(ctx, layer, corpus_hash, hp, seq_len, tag))
        if cached is None:
            missing.append(layer)
        else:
            result[layer] = ctx.stats[(layer, key)] = cached
    if not missing:
        return result
    if positions == "all":
        chunks, marks = _chunks(ctx, path, hp, seq_len), None
        desc = f"key statistics, layers {','.join(map(str, missing))}"
    else:
        chunks, marks = _flagged_chunks(ctx, path, hp, seq_len)
        desc = f"entity key statistics, layers {','.join(map(str, missing))}"
    computed, count = _compute(ctx, missing, chunks, hp, marks, desc)
    if count == 0:
        raise DataError(f"The corpus {path} has no runs of capitalised words in its first {len(chunks)} chunks; "
                        "mom2_entity_weight needs a corpus with names in it (or set it to 0).")
    for layer, mom2 in computed.items():
        described = {"model": model_id(ctx.sites.model), "layer": layer, "site": "mlp_key", "corpus": str(path),
                     "corpus_hash": corpus_hash, "n_samples": hp.mom2_n_samples, "seq_len": seq_len}
        if marks is not None:
            described.update(positions=positions, count=count)
        meta = {"steer.stats_version": STATS_VERSION, "steer.stats": json.dumps(described)}
        write_tensors(_cache_file(ctx, layer, corpus_hash, hp, seq_len, tag), {"mom2": mom2}, meta)
        result[layer] = ctx.stats[(layer, key)] = mom2
    return result


# ---- keys at entities (ROME's `mom2_entity_weight`, default off) ----------------------------
# C above weighs every token of the corpus alike; the keys of named subjects (the last token of
# "the Rijksmuseum", "Hungary") are a small share of them, so C calls their directions rare and
# u = C^-1 k leans on them. `entity_second_moments` is the second moment over the last token of
# each run of capitalised words in the same chunks (a sentence's first word alone is not a run),
# so a method can weigh it in: C + w * C_entity. benchmarks/rome_locality.py measures it.

_CAPITALISED_RUN = re.compile(r"[A-Z][\w'\-]*(?: [A-Z][\w'\-]*)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;=\"(]\s*)$")


def entity_ends(text: str) -> list[int]:
    """Character index of the last character of every run of capitalised words in `text`.

    A single capitalised word at the start of a sentence (or after '=', ':', '(' or a quote) is
    not counted, nor is a single-letter word ("I", "A")."""
    ends = []
    for match in _CAPITALISED_RUN.finditer(text):
        single = " " not in match.group(0)
        if single and (len(match.group(0)) == 1 or _SENTENCE_START.search(text[: match.start()])):
            continue
        if match.start() > 0 and (text[match.start() - 1].isalnum() or text[match.start() - 1] in "'-"):
            continue  # inside a word ("McDonald" is one word, found from its own start)
        ends.append(match.end() - 1)
    return ends


def _flagged_chunks(ctx: EditContext, path: Path, hp: StatsHparams,
                    seq_len: int) -> tuple[list[list[int]], list[list[bool]]]:
    """`_chunks`' chunks, plus for each token whether it ends a run of capitalised words."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    ids: list[int] = []
    flags: list[bool] = []
    for line in lines:
        text = line + "\n"
        line_ids, offsets = tokenize_with_offsets(ctx.tokenizer, text, add_special_tokens=False)
        ends = entity_ends(text)
        ids.extend(line_ids)
        flags.extend(any(s <= end < e for end in ends) for s, e in offsets)
        if len(ids) >= hp.mom2_n_samples * seq_len:
            break
    chunks = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][: hp.mom2_n_samples]
    marks = [flags[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][: hp.mom2_n_samples]
    if len(chunks) < hp.mom2_n_samples:
        raise DataError(
            f"The corpus {path} gives only {len(chunks)} chunks of {seq_len} tokens, fewer than "
            f"mom2_n_samples={hp.mom2_n_samples}. Lower mom2_n_samples or give a larger corpus=PATH."
        )
    return chunks, marks


def entity_second_moments(ctx: EditContext, layers: list[int], hp: StatsHparams) -> dict[int, torch.Tensor]:
    """{layer: E[k k^T] over the keys at entity ends (see `entity_ends`) [d_in, d_in] float64}.

    Memoised in the context and cached on disk next to `second_moments`' files."""
    return second_moments(ctx, layers, hp, positions="entity ends")

