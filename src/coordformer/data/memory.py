"""Chains held in memory, read the way a prepared dataset is read.

:class:`MemoryDataset` has the per-chain interface of ``store.PreparedDataset`` that batching,
windowing and complexes use (``ids``, ``lengths``, ``seq_bytes(i)``, ``sequence(i)``,
``coords(i)``, ``plddt(i)`` / ``has_plddt``, ``source(i)``), so commands that take structure
files directly (``embed``) batch them without writing a dataset first. It has no splits: those
belong to datasets made for training. numpy only (no torch), like ``data.prepare``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..constants import BACKBONE_ATOMS
from .store import ChainArrays


class MemoryDataset(ChainArrays):
    """Chains concatenated as a prepared dataset stores them.

    ``ids`` [n] chain ids; ``seq`` uint8 [N_res] ASCII one-letter codes; ``coords`` float32
    [N_res, 4, 3] backbone N, CA, C, O in Angstrom, NaN = missing; ``lengths`` int64 [n] residues
    per chain (N_res = their sum); ``sources`` [n] the file each chain was read from; ``plddt``
    float32 [N_res] (0-100, NaN unknown) or None when not kept. The arrays are taken over, not
    copied, and made read-only.
    """

    def __init__(
        self,
        ids: Sequence[str],
        seq: np.ndarray,
        coords: np.ndarray,
        lengths: np.ndarray,
        sources: Sequence[str],
        plddt: np.ndarray | None = None,
    ):
        self.ids: list[str] = list(ids)
        self.lengths: np.ndarray = np.asarray(lengths, dtype=np.int64)
        self._offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=self._offsets[1:])
        n_res = int(self._offsets[-1])
        self._seq = np.asarray(seq, dtype=np.uint8)
        self._coords = np.asarray(coords, dtype=np.float32)
        self._plddt = None if plddt is None else np.asarray(plddt, dtype=np.float32)
        self._sources = list(sources)
        if not (len(self.ids) == len(self.lengths) == len(self._sources)):
            raise ValueError(
                f"{len(self.ids)} ids, {len(self.lengths)} lengths and {len(self._sources)} sources"
            )
        if self._seq.shape != (n_res,) or self._coords.shape != (n_res, len(BACKBONE_ATOMS), 3):
            raise ValueError(
                f"seq {self._seq.shape} and coords {self._coords.shape} do not hold "
                f"{n_res} residues"
            )
        if self._plddt is not None and self._plddt.shape != (n_res,):
            raise ValueError(f"plddt {self._plddt.shape} does not hold {n_res} residues")
        for a in (self._seq, self._coords, self._plddt, self.lengths):
            if a is not None:  # read-only, as a prepared dataset's memory maps are
                a.flags.writeable = False

    @classmethod
    def from_chains(
        cls,
        ids: Sequence[str],
        seqs: Sequence[np.ndarray],
        coords: Sequence[np.ndarray],
        sources: Sequence[str],
        plddt: Sequence[np.ndarray] | None = None,
    ) -> MemoryDataset:
        """From per-chain arrays: ``seqs[i]`` uint8 [L_i], ``coords[i]`` float32 [L_i, 4, 3],
        ``plddt[i]`` float32 [L_i]."""
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        xyz = _concat(coords, (0, len(BACKBONE_ATOMS), 3), np.float32)
        pl = None if plddt is None else _concat(plddt, (0,), np.float32)
        return cls(ids, _concat(seqs, (0,), np.uint8), xyz, lengths, sources, pl)

    def __repr__(self) -> str:
        return f"MemoryDataset(chains={len(self)}, residues={self.n_residues})"

    def source(self, i: int) -> str:
        return self._sources[i]


def _concat(parts: Sequence[np.ndarray], empty_shape: tuple[int, ...], dtype) -> np.ndarray:
    return (
        np.concatenate(parts).astype(dtype, copy=False)
        if len(parts)
        else np.zeros(empty_shape, dtype)
    )
