"""Per-residue structure descriptors for reading scores: burial (CA neighbour counts) and a
DSSP-like secondary structure, from backbone N, CA, C, O alone, in numpy (no DSSP program needed).

``secondary_structure`` follows Kabsch & Sander (1983) in simplified form, like pydssp: the amide H
is placed 1 A from N opposite the previous residue's C=O; an H-bond from N-H of j to C=O of i has
electrostatic energy E = 0.084 * 332 * (1/r_ON + 1/r_CH - 1/r_OH - 1/r_CN) kcal/mol and counts when
E < -0.5. ``H``: residues i..i+3 when there are 4-turns (C=O of k to N-H of k+4) at i-1 and i.
``E``: residues in a parallel or antiparallel bridge (DSSP's H-bond patterns) with a bridged
sequence neighbour (a ladder of at least two). Everything else is ``-`` (3-10 and pi helices, turns,
bends and isolated bridges included). Residues lacking N, C or O, prolines (no amide H) and residues
after a chain break (C-N > 2.5 A) donate no H-bond. Not DSSP itself: expect a few percent of
residues to differ, mostly at element ends.
"""

from __future__ import annotations

import numpy as np

from ..constants import CA_INDEX


def ca_neighbour_counts(coords: np.ndarray, radius: float = 10.0) -> np.ndarray:
    """[L] float: for each residue the number of other residues whose CA lies within ``radius``
    Angstrom of its CA (NaN for a residue without CA). ``coords``: [L, 4, 3] or [L, 3] CA."""
    ca = np.asarray(coords, dtype=np.float64)
    if ca.ndim == 3:
        ca = ca[:, CA_INDEX]
    d = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
    with np.errstate(invalid="ignore"):
        n = (d < radius).sum(1) - 1.0
    n[np.isnan(ca).any(-1)] = np.nan
    return n


def hbond_map(coords: np.ndarray, sequence: str | None = None, cutoff: float = -0.5) -> np.ndarray:
    """[L, L] bool: ``hb[i, j]`` when the N-H of residue j donates an H-bond to the C=O of residue i
    (Kabsch-Sander energy below ``cutoff`` kcal/mol; |i - j| >= 3)."""
    x = np.asarray(coords, dtype=np.float64)
    n_at, c_at, o_at = x[:, 0], x[:, 2], x[:, 3]
    L = len(x)
    h = np.full_like(n_at, np.nan)
    if L > 1:
        co = c_at[:-1] - o_at[:-1]
        co /= np.linalg.norm(co, axis=-1, keepdims=True)
        h[1:] = n_at[1:] + co
        brk = np.linalg.norm(n_at[1:] - c_at[:-1], axis=-1) > 2.5
        h[1:][brk] = np.nan
    if sequence is not None:
        h[np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8) == ord("P")] = np.nan

    def dist(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    with np.errstate(invalid="ignore", divide="ignore"):
        e = (
            0.084
            * 332.0
            * (1 / dist(o_at, n_at) + 1 / dist(c_at, h) - 1 / dist(o_at, h) - 1 / dist(c_at, n_at))
        )
        hb = e < cutoff
    i, j = np.indices((L, L))
    hb &= np.abs(i - j) >= 3
    return hb


def secondary_structure(coords: np.ndarray, sequence: str | None = None) -> str:
    """One letter per residue: ``H`` (alpha helix), ``E`` (strand in a ladder) or ``-`` (see the
    module docstring). ``coords``: [L, 4, 3] N, CA, C, O in Angstrom (NaN missing)."""
    hb = hbond_map(coords, sequence)
    L = len(hb)
    ss = np.full(L, "-", dtype="<U1")
    if L < 5:
        return "".join(ss)
    turn4 = np.zeros(L, dtype=bool)
    turn4[: L - 4] = hb[np.arange(L - 4), np.arange(4, L)]
    helix = np.zeros(L, dtype=bool)
    for i in np.flatnonzero(turn4[1:] & turn4[:-1]) + 1:
        helix[i : i + 4] = True

    def shift(m, di, dj):
        """s[i, j] = m[i + di, j + dj] (False outside)."""
        s = np.zeros_like(m)
        src = m[max(di, 0) : L + min(di, 0), max(dj, 0) : L + min(dj, 0)]
        s[max(-di, 0) : L - max(di, 0), max(-dj, 0) : L - max(dj, 0)] = src
        return s

    hbT = hb.T  # hbT[i, j] = hb(j -> i): C=O of j, N-H of i
    # parallel: [hb(i-1 -> j) and hb(j -> i+1)] or [hb(j-1 -> i) and hb(i -> j+1)]
    par = (shift(hb, -1, 0) & shift(hbT, 1, 0)) | (shift(hbT, 0, -1) & shift(hb, 0, 1))
    # antiparallel: [hb(i -> j) and hb(j -> i)] or [hb(i-1 -> j+1) and hb(j-1 -> i+1)]
    anti = (hb & hbT) | (shift(hb, -1, 1) & shift(hbT, 1, -1))
    i, j = np.indices((L, L))
    bridge = (par | anti) & (np.abs(i - j) >= 3)
    bridged = bridge.any(1)
    ladder = bridged & (np.r_[False, bridged[:-1]] | np.r_[bridged[1:], False])
    ss[ladder] = "E"
    ss[helix] = "H"
    return "".join(ss)
