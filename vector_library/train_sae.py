"""Train the library's sparse autoencoder for the default model with sae-lens (run from the repository root).

    pip install -e ".[sae]"                     # sae-lens (a long install: about 9 minutes on 2 cores)
    python vector_library/train_sae.py          # writes vector_library/saes/<name>/

A TopK SAE on the residual stream after block `--layer` of SmolLM2-135M-Instruct,
trained by sae-lens's own runner (`LanguageModelSAETrainingRunner` with the steer-loaded
model wrapped in sae-lens's `HookedProxyLM`, so nothing is downloaded). The corpus is
local text only: the WikiText-2 test split (../shared/data/text) plus the chat-formatted
training halves of the CAA A/B sets and the sentiment prompts, so the SAE has seen the
chat-template activations steering works on. Held-apart test sets are never used.

The folder is a sae-lens folder (`cfg.json` + `sae_weights.safetensors`, loadable with
`sae_lens.SAE.load_from_disk`) plus `training.json`: the training config, the corpus
hashes, and the reconstruction quality measured here on held-apart WikiText-2 text
(explained variance, L0, dead features, the LM loss with the SAE spliced in).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_SHARED = HERE.parent.parent / "shared" / "data"
CAA_SETS = ("refusal", "sycophancy", "hallucination", "power-seeking-inclination")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_texts(tokenizer: Any, shared: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """(training texts, held-apart evaluation texts, sources with hashes)."""
    sources: list[dict[str, str]] = []
    wiki_path = shared / "text" / "wikitext-2-raw-test.txt"
    if not wiki_path.is_file():
        sys.exit(f"No WikiText-2 text at {wiki_path}; pass --shared-data DIR (the folder holding text/ and caa/).")
    wiki = [line.strip() for line in wiki_path.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 80]
    sources.append({"path": "$SHARED_DATA/text/wikitext-2-raw-test.txt", "sha256": sha256(wiki_path)})
    held = wiki[-60:]  # the last paragraphs are kept apart for measuring reconstruction
    train = wiki[:-40]
    for name in CAA_SETS:
        path = shared / "caa" / name / "generate_dataset.json"
        if not path.is_file():
            continue
        sources.append({"path": f"$SHARED_DATA/caa/{name}/generate_dataset.json", "sha256": sha256(path)})
        for item in json.loads(path.read_text(encoding="utf-8")):
            for answer in (item["answer_matching_behavior"], item["answer_not_matching_behavior"]):
                chat = [{"role": "user", "content": item["question"]}, {"role": "assistant", "content": answer}]
                train.append(tokenizer.apply_chat_template(chat, tokenize=False))
    for name in ("sentiment_positive.jsonl", "sentiment_negative.jsonl"):
        path = Path(str(resources.files("steer.data").joinpath(name)))
        sources.append({"path": f"steer/data/{name}", "sha256": sha256(path)})
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                train.append(f"{record['prompt']['text']} {record['continuation']['text']}")
    return [t for t in train if t], held, sources


def token_chunks(tokenizer: Any, texts: list[str], context: int, seed: int) -> list[list[int]]:
    """Texts shuffled, tokenized, joined with EOS and cut into rows of `context` tokens."""
    random.Random(seed).shuffle(texts)
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [stream[i : i + context] for i in range(0, len(stream) - context + 1, context)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--d-sae", type=int, default=2304, help="features (4x the 576-wide residual)")
    parser.add_argument("--k", type=int, default=32, help="TopK: active features per token")
    parser.add_argument("--tokens", type=int, default=500_000, help="training tokens")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="SAE training batch (tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--name", help="folder name under vector_library/saes/ (default: smollm2-135m-res<layer>-topk)")
    args = parser.parse_args()
    try:
        import datasets
        from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
        from sae_lens import TopKTrainingSAEConfig
        from sae_lens.load_model import HookedProxyLM
    except ImportError:
        sys.exit("Training needs sae-lens: pip install -e '.[sae]'")
    import torch

    from steer.io.atomic import write_json_atomic
    from steer.models.loading import DEFAULT_MODEL_ID, load_model
    from steer.sae import load_sae, measure_sae
    from steer.sites.resolve import Site, SiteMap

    torch.manual_seed(args.seed)
    model, tokenizer = load_model(dtype="float32", device="cpu")
    hook_name = SiteMap(model).module_path(Site("resid_post", args.layer))  # e.g. model.layers.6
    train, held, sources = corpus_texts(tokenizer, args.shared_data)
    rows = token_chunks(tokenizer, train, args.context, args.seed)
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    print(f"corpus: {len(train)} texts, {len(rows)} rows of {args.context} tokens ({len(rows) * args.context:,} tokens)")
    name = args.name or f"smollm2-135m-res{args.layer}-topk"
    out = HERE / "saes" / name
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=576, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu"),
        model_name=DEFAULT_MODEL_ID, model_class_name="AutoModelForCausalLM", hook_name=hook_name,
        dataset_path="steer-local-corpus", is_dataset_tokenized=True, streaming=False,
        context_size=args.context, prepend_bos=False, training_tokens=args.tokens,
        train_batch_size_tokens=args.batch_tokens, store_batch_size_prompts=16, n_batches_in_buffer=32,
        lr=args.lr, lr_warm_up_steps=20, lr_scheduler_name="constant",
        device="cpu", seed=args.seed, dtype="float32",
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
    )
    start = time.perf_counter()
    proxy = HookedProxyLM(model, tokenizer, hook_names=[hook_name])
    sae = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=proxy).run()
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(out)
    loaded = load_sae(out)  # steer's reader, as users will load it
    quality = measure_sae(model, tokenizer, loaded, held)
    training = {
        "trainer": "sae-lens LanguageModelSAETrainingRunner", "model": DEFAULT_MODEL_ID, "hook_name": hook_name,
        "steer_site": str(loaded.site_for(model)), "architecture": "topk", "d_in": 576, "d_sae": args.d_sae, "k": args.k,
        "training_tokens": args.tokens, "context_size": args.context, "lr": args.lr, "seed": args.seed,
        "train_batch_size_tokens": args.batch_tokens, "corpus_rows": len(rows), "corpus_sources": sources,
        "train_seconds": round(seconds, 1), "quality_held_apart": quality,
        "rebuild": f"python vector_library/train_sae.py --layer {args.layer} --d-sae {args.d_sae} --k {args.k} "
                   f"--tokens {args.tokens}",
    }
    write_json_atomic(out / "training.json", training)
    print(json.dumps(quality, indent=2))
    print(f"wrote {out} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
