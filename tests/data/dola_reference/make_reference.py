"""Produce the DoLa reference outputs with Hugging Face transformers 4.55 (run ONCE, in its own venv).

    python -m venv /tmp/ref455
    /tmp/ref455/bin/pip install torch==2.13.0 "transformers==4.55.*" accelerate gguf safetensors
    OMP_NUM_THREADS=1 /tmp/ref455/bin/python tests/data/dola_reference/make_reference.py [--model-dir DIR]

transformers 4.55 is the last release with DoLa inside `generate(dola_layers=...)`. The
model is the default one (SmolLM2-135M-Instruct) from steer's own safetensors cache
(made by `steer.load_model()` in the project's venv), so no model hub is needed. This
script imports nothing from steer (steer needs transformers 5). It writes
reference_455.json next to itself: settings, raw-text prompts, their input ids, and the
greedy tokens of plain decoding and of DoLa `high` and `low` (repetition penalty 1.2, the
DoLa authors' setting), each prompt alone (batch 1), plus one left-padded batch of all
prompts (the reference averages its layer divergence over the batch, so those rows depend
on each other; kept to document that, not compared).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PROMPTS = ["The capital of France is", "Water boils at a temperature of",
           "The first person to walk on the moon was", "Photosynthesis is the process by which",
           "The largest planet in the solar system is", "William Shakespeare wrote"]
NEW_TOKENS = 24
PENALTY = 1.2
BUCKETS = ["high", "low"]


def default_model_dir() -> Path:
    base = Path(os.environ.get("STEER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "steer")
    found = sorted((base / "models").glob("SmolLM2-135M-Instruct*"))
    if not found:
        raise SystemExit(f"No cached default model under {base / 'models'}: run steer.load_model() once in the "
                         "project's venv, or pass --model-dir.")
    return found[-1]


def load(model_dir: Path) -> tuple[LlamaForCausalLM, object]:
    raw = json.loads((model_dir / "config.json").read_text())
    # The cache was written by transformers 5, which keeps RoPE settings in `rope_parameters`;
    # 4.55 reads `rope_theta` and would silently fall back to 10000 without this.
    rope = raw.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"unexpected RoPE settings {rope}")
    raw["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    raw["torch_dtype"] = raw.pop("dtype", "float32")
    config = LlamaConfig(**raw)
    model, info = LlamaForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32,
                                                   output_loading_info=True)
    if any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SystemExit(f"the cached weights do not fit the 4.55 Llama class: {info}")
    # transformers 5's tokenizer_config names a class 4.55 lacks; the tokenizer.json itself is fine.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    tokenizer.pad_token_id = raw.get("pad_token_id")
    return model.eval(), tokenizer


def greedy(model, ids, mask, pad, dola_layers):
    kwargs = {} if dola_layers is None else {"dola_layers": dola_layers, "repetition_penalty": PENALTY}
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=pad, **kwargs)
    return out[:, ids.shape[1]:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = args.model_dir or default_model_dir()
    model, tok = load(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    singles = [tok(p, return_tensors="pt")["input_ids"][0].tolist() for p in PROMPTS]
    record = {
        "produced_by": "tests/data/dola_reference/make_reference.py",
        "transformers": transformers.__version__, "torch": torch.__version__,
        "model": f"SmolLM2-135M-Instruct, float32, from steer's cache ({model_dir.name})",
        "settings": {"do_sample": False, "new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS,
                     "repetition_penalty_dola": PENALTY, "repetition_penalty_plain": 1.0,
                     "relative_top": 0.1, "chat_template": False, "pad_token_id": pad},
        "prompts": PROMPTS, "input_ids": singles,
        "plain": [], "dola": {b: [] for b in BUCKETS}, "batch": {},
    }
    for row in singles:
        ids = torch.tensor([row])
        mask = torch.ones_like(ids)
        record["plain"].append(greedy(model, ids, mask, pad, None)[0])
        for bucket in BUCKETS:
            record["dola"][bucket].append(greedy(model, ids, mask, pad, bucket)[0])
    width = max(map(len, singles))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in singles])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in singles])
    record["batch"] = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                       "dola": {b: greedy(model, ids, mask, pad, b) for b in BUCKETS}}
    target = Path(__file__).with_name("reference_455.json")
    with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False, suffix=".tmp") as handle:
        json.dump(record, handle, indent=1)
    os.replace(handle.name, target)
    differ = {b: sum(x != y for x, y in zip(record["batch"]["dola"][b], record["dola"][b])) for b in BUCKETS}
    print(f"wrote {target}; batch rows that differ from batch 1: {differ}")


if __name__ == "__main__":
    main()
