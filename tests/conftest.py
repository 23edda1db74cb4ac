from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import tiny_model, tiny_tokenizer  # noqa: E402

TEST_DATA = Path(__file__).resolve().parent / "data"
# The project's large offline data set, beside the repository (not shipped with it). No test needs
# it today: tests/data holds the small subsets they read. STEER_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("STEER_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data: small subsets of the project's data that ship with the repository (see its README.md)."""
    if not (TEST_DATA / "caa").is_dir():
        pytest.fail(f"{TEST_DATA} is missing or incomplete; it ships with the repository (restore it with git, "
                    "or regenerate it: python tests/data/make_subsets.py --shared-data DIR)", pytrace=False)
    return TEST_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The large shared data set, only for a test that truly needs more than tests/data holds.

    Such a test skips on a clone of the repository alone; say in the test why the subset is not enough."""
    if not SHARED.is_dir():
        pytest.skip(f"needs the large shared data set (not shipped with the repository because of its size) "
                    f"at {SHARED}; set STEER_SHARED_DATA=DIR to point elsewhere")
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama and its tokenizer saved as a model folder, for CLI tests (`--model DIR`)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
