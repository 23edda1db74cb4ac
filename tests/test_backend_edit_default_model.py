"""ROME through nnsight on the real default model: the same delta as torch, and what it costs.

`OMP_NUM_THREADS=1 STEER_EDIT_REPEATS=3 python -m pytest tests/test_backend_edit_default_model.py -s`
prints the wall time of one ROME edit (small statistics computed afresh, few value steps) on
each backend, best of the interleaved repeats (1 unless STEER_EDIT_REPEATS says more).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from steer.edit import Editor, EditRequest

pytest.importorskip("nnsight")

# small statistics, two context prefixes and a few value steps keep this near a minute on 2 CPU cores
HP = {"layer": 4, "mom2_n_samples": 8, "mom2_seq_len": 64, "context_template_lengths": [[3, 2]],
      "v_num_grad_steps": 5}
REQUEST = EditRequest("What university did Watts Humphrey attend?", "University of Michigan", "Watts Humphrey")


@pytest.mark.integration
def test_rome_through_nnsight_equals_torch_on_default_model(smol, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = smol
    deltas: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for repeat in range(int(os.environ.get("STEER_EDIT_REPEATS", "1"))):
        for backend in ("torch", "nnsight"):  # interleaved: load on the machine affects both alike
            # each backend and repeat computes its own statistics (no shared disk cache)
            monkeypatch.setenv("STEER_CACHE", str(tmp_path / f"{backend}-{repeat}"))
            editor = Editor(model, tok, "rome", HP, progress=False, backend=backend)
            start = time.perf_counter()
            edit = editor.apply([REQUEST])
            seconds[backend] = min(seconds.get(backend, float("inf")), time.perf_counter() - start)
            deltas[backend] = edit.deltas[HP["layer"]]
            editor.rollback()
    print(f"\nROME on the default model: torch {seconds['torch']:.1f} s, nnsight {seconds['nnsight']:.1f} s "
          f"({seconds['nnsight'] / seconds['torch']:.2f}x)")
    assert deltas["torch"].abs().max() > 0
    assert torch.equal(deltas["nnsight"], deltas["torch"])
