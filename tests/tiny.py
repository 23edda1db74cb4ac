"""Tiny random-initialised models and a tiny tokenizer, built offline from configs."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import transformers as T

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "the cat sat on the mat and the dog ran in the park",
    "I love this wonderful happy day, it is great and good",
    "I hate this terrible sad day, it is awful and bad",
    "What is the capital of France? Paris is the capital.",
    "Choices: A B yes no maybe question answer model steer vector",
    "0 1 2 3 4 5 6 7 8 9 , . ! ? : ; ' \" - ( )",
]


@lru_cache(maxsize=1)
def tiny_tokenizer() -> T.PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_CORPUS * 4, vocab_size=320, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = T.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                    pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def _vocab() -> int:
    return len(tiny_tokenizer())


def _common(**extra: Any) -> dict[str, Any]:
    base = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=_vocab(), max_position_embeddings=128, head_dim=8,
                pad_token_id=0, bos_token_id=0, eos_token_id=2)
    base.update(extra)
    return base


FAMILIES: dict[str, Callable[[], T.PretrainedConfig]] = {
    "llama": lambda: T.LlamaConfig(**_common()),
    "mistral": lambda: T.MistralConfig(**_common()),
    "qwen2": lambda: T.Qwen2Config(**_common()),
    "qwen3": lambda: T.Qwen3Config(**_common()),
    "gemma": lambda: T.GemmaConfig(**_common()),
    "gemma2": lambda: T.Gemma2Config(**_common()),
    "gemma3": lambda: T.Gemma3TextConfig(**_common(sliding_window=8)),
    "phi3": lambda: T.Phi3Config(**_common()),
    "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=_vocab(), n_positions=128,
                                 bos_token_id=0, eos_token_id=2),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=64, vocab_size=_vocab(), max_position_embeddings=128,
                                        pad_token_id=0, bos_token_id=0, eos_token_id=2),
}


# The other families steer's site table lists: mixtures of experts (no single MLP
# down-projection), Gemma 3 with its vision tower (layers nested under the language model),
# and llama-like families. Together with FAMILIES this is every family in the table.
MORE_FAMILIES: dict[str, Callable[[], T.PretrainedConfig]] = {
    "mixtral": lambda: T.MixtralConfig(**_common(num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(**_common(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                                    decoder_sparse_step=1, mlp_only_layers=[])),
    "gemma3": lambda: T.Gemma3Config(
        text_config=_common(sliding_window=8),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        mm_tokens_per_image=4),
    "gemma3_text": lambda: T.Gemma3TextConfig(**_common(sliding_window=8)),
    "olmo": lambda: T.OlmoConfig(**_common()),
    "olmo2": lambda: T.Olmo2Config(**_common()),
    "granite": lambda: T.GraniteConfig(**_common()),
    "smollm3": lambda: T.SmolLM3Config(**_common()),
}
ALL_FAMILIES: dict[str, Callable[[], T.PretrainedConfig]] = {**FAMILIES, **MORE_FAMILIES}


def tiny_model(family: str = "llama", seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = ALL_FAMILIES[family]()
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model.config._name_or_path = f"tiny-{family}"
    return model.eval()
