"""One codec per vector file kind, in one registry: the only place that decides how a file is read.

`SteeringVector.load(path)` asks `kind_of(path)` which codec a file belongs to (by its
first bytes, or by its suffix when they say nothing) and calls that codec's reader. Writers
are looked up by format name (`steer export --format ...`).

Kinds shipped with steer:

| kind | files | read | write |
|---|---|---|---|
| `safetensors` | steer's safetensors, as `steer generate` writes them (header `steer.meta`) | yes | yes |
| `gguf` | llama.cpp control vectors (`--control-vector`), as repeng writes them | yes | yes |
| `easyedit2` | EasyEdit2's `layer_<L>.pt` tensors (a file, or the folder holding them) | yes | no |

Readers and writers are named as "module:function" strings and imported only when used,
so this module imports nothing heavy and has no import-time side effects beyond
building the table below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer.errors import VectorError, closest

if TYPE_CHECKING:
    from steer.vector import SteeringVector

GGUF_MAGIC = b"GGUF"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Codec:
    """How one file kind becomes a SteeringVector (and back, when `writer` is set)."""

    kind: str
    description: str
    reader: str  # "module:function", called as function(path) -> SteeringVector
    writer: str | None = None  # "module:function", called as function(vector, path, **options) -> Path
    suffix: str = ""  # the usual suffix of written files

    def read(self, path: Path) -> SteeringVector:
        return _resolve(self.reader)(path)

    def write(self, vector: SteeringVector, path: str | Path, **options: Any) -> Path:
        if self.writer is None:
            raise VectorError(f"steer reads {self.kind} files but does not write them; "
                              f"write one of: {', '.join(writable_kinds())}.")
        return _resolve(self.writer)(vector, Path(path), **options)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Add a codec; a kind can be registered once (a second one is an error, not a silent override)."""
    if codec.kind in _CODECS:
        raise VectorError(f"A codec for {codec.kind!r} is already registered ({_CODECS[codec.kind].reader}).")
    _CODECS[codec.kind] = codec
    return codec


def codec(kind: str) -> Codec:
    if kind not in _CODECS:
        raise VectorError(f"No codec for {kind!r}.{closest(kind, _CODECS)} Known: {', '.join(sorted(_CODECS))}.")
    return _CODECS[kind]


def writable_kinds() -> list[str]:
    return sorted(k for k, c in _CODECS.items() if c.writer is not None)


def known_kinds() -> list[str]:
    return sorted(_CODECS)


register_codec(Codec("safetensors", "steer's own safetensors vector (header steer.meta)",
                     "steer.vector:read_steer_safetensors", "steer.vector:write_steer_safetensors", ".safetensors"))
register_codec(Codec("gguf", "llama.cpp control vector (general.architecture = controlvector), as repeng writes it",
                     "steer.io.gguf_vector:read_gguf_vector", "steer.io.gguf_vector:write_gguf_vector", ".gguf"))
register_codec(Codec("easyedit2", "EasyEdit2 layer_<L>.pt tensors (torch.load(weights_only=True), plain tensors only)",
                     "steer.interop.easyedit2:read_easyedit2_vector"))


def kind_of(path: str | Path) -> str:
    """The codec kind of a vector file or folder, from its first bytes (GGUF, torch's zip) or its suffix."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("layer_*.pt")):
            return "easyedit2"
        raise VectorError(f"{path} is a folder without layer_<L>.pt files; give a vector file "
                          "(.safetensors, .gguf) or an EasyEdit2 vector folder.")
    if not path.is_file():
        return "safetensors"  # its reader says that the file is missing, with the fix
    with path.open("rb") as handle:
        head = handle.read(4)
    suffix = path.suffix.lower()
    if head == GGUF_MAGIC or suffix == ".gguf":  # a damaged .gguf gets the GGUF reader's error, not safetensors'
        return "gguf"
    if head == _ZIP_MAGIC or suffix in TORCH_SUFFIXES:  # torch.save's zip format, or a legacy pickle
        return "easyedit2"
    return "safetensors"  # safetensors has no magic number; its reader says precisely what is wrong


def read_vector(path: str | Path) -> SteeringVector:
    """Read any vector file steer knows (see the table above)."""
    return codec(kind_of(path)).read(Path(path))


def write_vector(vector: SteeringVector, path: str | Path, kind: str, **options: Any) -> Path:
    return codec(kind).write(vector, path, **options)
