"""Overlapping windows over chains longer than a model's context, and stitching their outputs back.

A chain of L residues is covered by windows of ``window`` residues every ``window - overlap``
residues, the last one flush with the chain's end. Each residue is then taken from the window whose
centre is nearest to it (equivalently, where it is furthest from a window edge): a hard cut in the
middle of each overlap, not a blend, so every residue's output is exactly the output of one real
forward pass (a blend of two windows' hidden states is a vector neither window produced, and logits
would need blending in probability space), and residues within ``overlap / 2`` of an inner window
edge, which see one-sided context, are never used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..batch import Batch
from ..constants import PAD


@dataclass(frozen=True)
class WindowPlan:
    """Windows over one chain of ``length`` residues.

    ``starts`` [W]: first residue of each window (each spans ``min(window, length)`` residues);
    ``lo``/``hi`` [W]: window k supplies residues ``lo[k]:hi[k]`` of the stitched output
    (contiguous, in order, covering 0..length exactly once).
    """

    length: int
    window: int
    starts: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def span(self) -> int:
        """Residues per window."""
        return min(self.window, self.length)

    def owner(self) -> np.ndarray:
        """[L] int64: the window each residue is taken from."""
        return np.repeat(np.arange(len(self.starts)), self.hi - self.lo)


def plan_windows(length: int, window: int, overlap: int) -> WindowPlan:
    """Plan windows of ``window`` residues overlapping by at least ``overlap`` over a chain of
    ``length``.

    A chain that fits gets one window, [0, length). Raises ValueError unless 0 <= overlap < window.
    """
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(
            f"need window >= 1 and 0 <= overlap < window, got window {window}, overlap {overlap}"
        )
    if length <= window:
        one = np.zeros(1, dtype=np.int64)
        return WindowPlan(length, window, one, one, np.array([length], dtype=np.int64))
    stride = window - overlap
    n = -(-(length - window) // stride) + 1  # enough windows that the last one reaches the end
    starts = np.minimum(np.arange(n, dtype=np.int64) * stride, length - window)
    # Nearest centre wins: residue i leaves window k for k+1 once it is past the midpoint of their
    # centres.
    cuts = (starts[:-1] + starts[1:] + window) // 2
    lo = np.concatenate([[0], cuts]).astype(np.int64)
    hi = np.concatenate([cuts, [length]]).astype(np.int64)
    return WindowPlan(length, window, starts, lo, hi)


def windowed_forward(
    run: Callable[[Batch], torch.Tensor],
    batch: Batch,
    window: int,
    overlap: int,
    tokens_per_pass: int,
) -> torch.Tensor:
    """Run ``run(window_batch) -> [b, l, ...]`` over ``batch``, whose chains may exceed ``window``.

    Every chain is cut into the windows of :func:`plan_windows` (a chain that fits is one window:
    its output is that of running it alone), windows go through ``run`` in passes of at most
    ``tokens_per_pass`` padded tokens, each pass as one :class:`Batch` of windows (tokens,
    padding_mask, and coords / plddt where ``batch`` has them, cut to the same windows), and each
    window's share (``lo:hi`` of its plan) is written into the full-length output, so only one
    pass's window outputs are held at a time. The model centres coordinates on each window's present
    CAs itself, so windows need no re-centring here; each window's positions are 0..w-1, so a batch
    with explicit ``positions`` is refused.

    Args:
        batch: tokens [B, L] long, coords [B, L, 4, 3] Angstrom (NaN = missing) or None,
            padding_mask [B, L] bool (a prefix of each row), plddt [B, L] or None.
    Returns: [B, L, ...] on ``run``'s device, zeros at padding.
    """
    if batch.positions is not None or batch.segments is not None or batch.pieces is not None:
        raise ValueError(
            "windowed_forward: batches with explicit positions, segments or pieces (spatial "
            "crops, complexes, packed rows) are not windowed"
        )
    tokens, coords, mask, plddt = batch.tokens, batch.coords, batch.padding_mask, batch.plddt
    dev = tokens.device
    lengths = mask.sum(1).tolist()
    plans = [plan_windows(int(n), window, overlap) for n in lengths]
    # (row, window start, window span, first and last+1 residue it supplies)
    pieces = [
        (r, s, p.span, lo, hi)
        for r, p in enumerate(plans)
        for s, lo, hi in zip(p.starts.tolist(), p.lo.tolist(), p.hi.tolist())
    ]
    per_pass = max(1, tokens_per_pass // min(window, max(lengths)))
    full = None
    for i in range(0, len(pieces), per_pass):
        chunk = pieces[i : i + per_pass]
        w = max(c[2] for c in chunk)
        rows = torch.tensor([c[0] for c in chunk], device=dev).unsqueeze(1)
        keep = torch.arange(w, device=dev) < torch.tensor(
            [c[2] for c in chunk], device=dev
        ).unsqueeze(1)
        pos = torch.where(
            keep,
            torch.tensor([c[1] for c in chunk], device=dev).unsqueeze(1)
            + torch.arange(w, device=dev),
            0,
        )
        sub = Batch(
            tokens=torch.where(keep, tokens[rows, pos], PAD),
            coords=(
                None
                if coords is None
                else torch.where(keep[:, :, None, None], coords[rows, pos], float("nan"))
            ),
            padding_mask=keep.to(mask.device),
            plddt=None if plddt is None else torch.where(keep, plddt[rows, pos], float("nan")),
        )
        res = run(sub)
        if full is None:
            full = res.new_zeros((mask.shape[0], mask.shape[1], *res.shape[2:]))
        for j, (r, s, _, lo, hi) in enumerate(chunk):
            full[r, lo:hi] = res[j, lo - s : hi - s]
    return full
