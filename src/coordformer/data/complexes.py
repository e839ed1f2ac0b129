"""Complexes: the chains of one structure in one model pass, with chain identity kept.

A complex is the chains of one input file (one PDB/mmCIF entry) that survived reading (choose
them with ``--chains A,B``). They are concatenated in file order. Chain identity reaches the model
through the residue indices of the position embedding: chain k starts ``gap`` positions after the
end of chain k - 1, so no chain's last residue looks like a sequence neighbour of the next
chain's first one, while all chains share one coordinate frame (the model centres each complex
on its own mean CA, so relative placement between chains is what it sees). This needs no new
parameter, so any trained model takes complexes as they are; the models were pretrained on single
chains, so inter-chain contacts reach them only through the coordinates.

Used by ``coordformer embed --complexes`` (per-chain and per-complex mean pooling). Pretraining
and fine-tuning treat every chain on its own, as the paper did.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..batch import Batch
from ..constants import PAD
from .batching import ASCII_TO_TOKEN


def group_complexes(data, idx: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Group the chains ``idx`` of a prepared dataset into complexes.

    Chains belong together when they come from the same source file and share the entry part of
    their id (``ENTRY.CHAIN``). Returns [(complex id, chain indices in dataset order)] in order of
    first appearance; the complex id is the entry, made unique with ``#2``, ``#3`` ... if two
    files hold the same entry.
    """
    groups: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
    for i in idx:
        cid = data.ids[int(i)]
        entry = cid.rsplit(".", 1)[0] if "." in cid else cid
        groups.setdefault((data.source(int(i)), entry), []).append(int(i))
    out, used = [], {}
    for (_, entry), members in groups.items():
        used[entry] = used.get(entry, 0) + 1
        name = entry if used[entry] == 1 else f"{entry}#{used[entry]}"
        out.append((name, np.asarray(members, dtype=np.int64)))
    return out


def complex_span(lengths: np.ndarray, gap: int) -> int:
    """Position-table span [residues] of chains of ``lengths`` laid out with ``gap``:
    last index + 1."""
    return int(np.sum(lengths) + gap * (len(lengths) - 1))


def complex_batch(data, complexes: list[np.ndarray], gap: int) -> Batch:
    """One padded model input holding whole complexes (no crop, no rotation; the model centres).

    Returns a :class:`Batch` with tokens [B, L] long, coords [B, L, 4, 3] float32 Angstrom (NaN
    missing/padding), padding_mask [B, L] bool, positions [B, L] long (chain k of a complex starts
    ``gap`` after chain k - 1 ends; 0 at padding) and chain [B, L] long (member number within the
    complex, -1 at padding; also ``pieces``, for a language model); with a dataset that stores
    pLDDT also plddt [B, L] (NaN unknown/padding).
    L = the most residues of any complex in the batch.
    """
    sizes = [int(data.lengths[m].sum()) for m in complexes]
    b, length = len(complexes), max(sizes)
    tokens = torch.full((b, length), PAD, dtype=torch.long)
    coords = torch.full((b, length, 4, 3), float("nan"))
    positions = torch.zeros(b, length, dtype=torch.long)
    chain = torch.full((b, length), -1, dtype=torch.long)
    plddt = torch.full((b, length), float("nan")) if getattr(data, "has_plddt", False) else None
    for r, members in enumerate(complexes):
        at, pos = 0, 0
        for k, ci in enumerate(members):
            n = int(data.lengths[ci])
            tokens[r, at : at + n] = torch.from_numpy(ASCII_TO_TOKEN[data.seq_bytes(int(ci))])
            coords[r, at : at + n] = torch.from_numpy(
                np.array(data.coords(int(ci)), dtype=np.float32)
            )  # a copy: the store is read-only
            positions[r, at : at + n] = torch.arange(pos, pos + n)
            chain[r, at : at + n] = k
            if plddt is not None:
                plddt[r, at : at + n] = torch.from_numpy(
                    np.array(data.plddt(int(ci)), dtype=np.float32)
                )
            at, pos = at + n, pos + n + gap
    return Batch(
        tokens=tokens,
        coords=coords,
        padding_mask=chain >= 0,
        positions=positions,
        plddt=plddt,
        chain=chain,
        pieces=chain,  # a language model reads each chain as a sequence of its own
    )
