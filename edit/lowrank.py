"""Weight changes kept compactly: a low-rank factorisation, expanded the same way every time.

ROME and R-ROME change a weight by a rank-one matrix, MEMIT, EMMET and AlphaEdit by one of
rank at most the batch size, LoRA by one of rank r. Keeping `left [out, r]` and
`right [r, in]` instead of the dense [out, in] matrix is what lets the Editor keep long
edit sequences rollback-able without a weight copy per edit: it keeps one copy of each
edited weight from before its first edit and replays the kept changes.

Replaying must give the same bits as the first write, so `dense()` avoids matrix products
(whose summation order can depend on the BLAS library and its thread count) and adds the
outer products one by one, in a fixed order: only elementwise float operations, which are
exact-rounded and give the same result on every run, thread count and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass(frozen=True)
class LowRank:
    left: torch.Tensor  # [out, r]
    right: torch.Tensor  # [r, in]

    def __post_init__(self) -> None:
        if self.left.ndim != 2 or self.right.ndim != 2 or self.left.shape[1] != self.right.shape[0]:
            raise ValueError(f"LowRank needs left [out, r] and right [r, in]; got {tuple(self.left.shape)} and "
                             f"{tuple(self.right.shape)}.")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def dense(self) -> torch.Tensor:
        """sum_i outer(left[:, i], right[i]) in float32, accumulated in index order (deterministic)."""
        left, right = self.left.float(), self.right.float()
        out = torch.zeros(self.shape, dtype=torch.float32, device=left.device)
        for i in range(self.rank):
            out.add_(torch.outer(left[:, i], right[i]))
        return out

    def to(self, device: torch.device | str) -> LowRank:
        return LowRank(self.left.float().to(device), self.right.float().to(device))

    @property
    def nbytes(self) -> int:
        return self.left.numel() * self.left.element_size() + self.right.numel() * self.right.element_size()


Change = Union[torch.Tensor, LowRank]


def dense(change: Change) -> torch.Tensor:
    """The [out, in] float32 matrix of a change (a dense tensor is returned as float32)."""
    return change.dense() if isinstance(change, LowRank) else change.float()


def compact(change: Change) -> Change:
    """The form to keep: on the CPU, float32; a dense matrix stays dense."""
    return change.to("cpu") if isinstance(change, LowRank) else change.detach().to("cpu", torch.float32)


def nbytes(change: Change) -> int:
    return change.nbytes if isinstance(change, LowRank) else change.numel() * change.element_size()
