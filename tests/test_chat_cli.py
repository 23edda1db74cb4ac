"""`steer chat` driven through a pseudo-terminal, and the example chat app on a tiny model."""

from __future__ import annotations

import importlib.util
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

import steer
from steer.vector import SteeringVector

ROOT = Path(__file__).resolve().parents[1]


def direction(seed: int = 1) -> SteeringVector:
    return SteeringVector({"resid_post.1": torch.randn(32, generator=torch.Generator().manual_seed(seed)) * 4})


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-chat")
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    direction().save(folder / "happy.safetensors")
    return folder


class Terminal:
    """A child process on a pty: type lines, wait for text on the screen."""

    def __init__(self, argv: list[str]) -> None:
        self.fd, child = pty.openpty()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, cwd=ROOT, env=env, close_fds=True)
        os.close(child)
        self.screen = ""

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                raise AssertionError(f"{text!r} did not appear; screen so far:\n{self.screen}")
            if select.select([self.fd], [], [], min(remaining, 0.5))[0]:
                try:
                    self.screen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    continue
        found = self.screen[: self.screen.index(text) + len(text)]
        self.screen = self.screen[len(found):]
        return found

    def type(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> int:
        try:
            return self.process.wait(timeout=60)
        finally:
            os.close(self.fd)


def test_steer_chat_in_a_terminal(tiny_dir: Path) -> None:
    term = Terminal([sys.executable, "-m", "steer.cli.main", "chat", "--model", str(tiny_dir / "model"),
                     "--vector", f"{tiny_dir / 'happy.safetensors'}:1.5", "--max-new-tokens", "6"])
    try:
        term.expect("/help for commands")
        term.expect("you> ")
        term.type("hello there")
        assert "bot> " in term.expect("you> ")
        term.type("/mult 0 2")
        assert "happy now x2" in term.expect("you> ")
        term.type("/compare")
        assert "compare on" in term.expect("you> ")
        term.type("the cat sat")
        reply = term.expect("you> ")
        assert "| steered" in reply and "| unsteered" in reply
        term.type("/list")
        assert "0  happy  x2" in term.expect("you> ")
        term.type("/mult nothing 1")
        assert "error: No vector named 'nothing'" in term.expect("you> ")
        term.type("/add missing.safetensors")
        assert "error:" in term.expect("you> ")
        term.type("/frobnicate")
        assert "unknown command /frobnicate" in term.expect("you> ")
        term.type("/remove happy")
        assert "removed happy" in term.expect("you> ")
        term.type("/quit")
        assert term.close() == 0
    finally:
        if term.process.poll() is None:
            term.process.kill()
    assert "Traceback" not in term.screen


def load_example():
    spec = importlib.util.spec_from_file_location("chat_app", ROOT / "examples" / "chat_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_chat_app_is_steered_and_leaves_no_hooks(tiny_dir: Path, capsys: pytest.CaptureFixture) -> None:
    app = load_example()
    model, tok = tiny_model("llama"), tiny_tokenizer()
    messages = ["hello there", "the cat sat"]
    steered = app.chat(model, tok, str(tiny_dir / "happy.safetensors"), 3.0, messages, max_new_tokens=8)
    assert capsys.readouterr().out.count("bot> ") == 2
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    # the same loop under a plain steering context gives the same replies; without one, others
    history: list[dict[str, str]] = []
    with steer.steering(model, (direction(), 3.0), tokenizer=tok):
        for message, reply in zip(messages, steered):
            history.append({"role": "user", "content": message})
            assert "".join(app.stream_reply(model, tok, history, 8)) == reply
            history.append({"role": "assistant", "content": reply})
    assert "".join(app.stream_reply(model, tok, history[:1], 8)) != steered[0]
