from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture()
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smol():
    """The real default model (SmolLM2-135M-Instruct), loaded once per session."""
    from steer.models.loading import load_model

    return load_model(dtype="float32", device="cpu")
