"""Vectors made by other tools, as steer vectors.

- `from_steering_vectors(sv)`: a steering-vectors `SteeringVector` (Python object);
- `from_repeng(cv)`: a repeng `ControlVector` (Python object); repeng's GGUF files load with
  `SteeringVector.load("x.gguf")` (steer.io.gguf_vector);
- EasyEdit2's saved `layer_<L>.pt` tensors load with `SteeringVector.load(path)`
  (steer.interop.easyedit2; plain tensors only, never unpickled).

Each maps the tool's layer numbering onto steer's sites (README_2, "Interop").
"""

from __future__ import annotations

from steer.interop.peers import from_repeng, from_steering_vectors

__all__ = ["from_repeng", "from_steering_vectors"]
