"""An ordinary Hugging Face chat loop, steered with two added lines (marked `# steer`).

    python examples/chat_app.py honesty.safetensors 2.0

The loop is the one Hugging Face documents: `apply_chat_template`, `model.generate` in
a thread, `TextIteratorStreamer` to print tokens as they come. steer attaches hooks to
the model, so none of that changes; the vector can be re-weighted between turns.
"""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TextIteratorStreamer

import steer


def stream_reply(model: Any, tokenizer: Any, history: list[dict[str, str]], max_new_tokens: int = 64,
                 seed: int = 0) -> Iterator[str]:
    """Yield the assistant's reply to `history` piece by piece (plain Hugging Face, nothing steer-specific)."""
    inputs = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(seed)
    kwargs = dict(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, streamer=streamer,
                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    # run generate in a copy of this context, so steering active here (steer's is context-local) applies there
    thread = threading.Thread(target=contextvars.copy_context().run, args=(model.generate,), kwargs=kwargs)
    thread.start()
    yield from streamer
    thread.join()


def chat(model: Any, tokenizer: Any, vector: Any, multiplier: float, messages: list[str],
         max_new_tokens: int = 64) -> list[str]:
    """Answer each message in turn, keeping the history; returns the replies (what the loop printed)."""
    steerer = steer.attach(model, tokenizer, (vector, multiplier))  # steer: vectors on, generate unchanged
    history: list[dict[str, str]] = []
    replies = []
    with steerer:  # steer: every hook is removed when the conversation ends
        for message in messages:
            history.append({"role": "user", "content": message})
            print("bot> ", end="", flush=True)
            reply = ""
            for piece in stream_reply(model, tokenizer, history, max_new_tokens):
                print(piece, end="", flush=True)
                reply += piece
            print()
            history.append({"role": "assistant", "content": reply})
            replies.append(reply)
    return replies


def main() -> None:
    vector_file, multiplier = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    model, tokenizer = steer.load_model()
    steerer = steer.attach(model, tokenizer, (vector_file, multiplier))
    history: list[dict[str, str]] = []
    with steerer:
        while (message := input("you> ").strip()) not in ("", "quit"):
            if message.startswith("/mult "):  # re-weight the vector between turns
                steerer.set_multiplier(0, float(message.split()[1]))
                continue
            history.append({"role": "user", "content": message})
            print("bot> ", end="", flush=True)
            reply = "".join(print(p, end="", flush=True) or p for p in stream_reply(model, tokenizer, history))
            print()
            history.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    main()
