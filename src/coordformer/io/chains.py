"""Chain records: :class:`Chain`, the one input error :class:`StructureReadError`, and chain ids
(``ENTRY.CHAIN``, :func:`normalize_chain_id`, archive ids).

No file access and no other io module here: every reader builds on this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from coordformer.constants import BACKBONE_ATOMS
from coordformer.errors import CoordformerError

__all__ = [
    "Chain",
    "StructureReadError",
    "short_reason",
    "is_archive_id",
    "is_pdb_id",
    "is_placeholder_id",
    "normalize_entry",
    "normalize_chain_id",
]

_N_ATOMS = len(BACKBONE_ATOMS)
#: HEADER id codes that are placeholders rather than real PDB ids (ASTRAL writes 0000).
_PLACEHOLDER_IDS = {"", "0000", "XXXX", "NONE", "NULL"}
_PDB_ID_RE = re.compile(r"^[0-9][A-Za-z0-9]{3}$")
#: Entry names a file may give itself (PDB HEADER id code, mmCIF data block name) that identify one
#: structure: a PDB id (1ABC), an extended PDB id (pdb_00001abc), an AlphaFold DB id (AF-P69905-F1,
#: optionally -model_v4). Anything else (data_model, data_s, a decoy's made-up HEADER) is not
#: trusted.
_ARCHIVE_ID_RE = re.compile(
    r"^(?:[0-9][A-Za-z0-9]{3}|pdb_[0-9]{5}[A-Za-z0-9]{3}|AF-[A-Za-z0-9]{6,10}-F[0-9]+(?:-model_v[0-9]+)?)$",
    re.IGNORECASE,
)
_PDB_CHAIN_RE = re.compile(r"^([0-9][A-Za-z0-9]{3})[-_:](\S+)$")


class StructureReadError(CoordformerError):
    """The one exception type for unreadable or unusable input (structure or chain_set)."""

    def __init__(self, source: str, reason: str):
        self.source = str(source)
        self.reason = str(reason)
        super().__init__(f"{self.source}: {self.reason}")

    def __reduce__(self):  # keep picklable across multiprocessing workers
        return (type(self), (self.source, self.reason))


class ChainsNotFoundError(StructureReadError):
    """A structure file has protein chains, but none of the author chain ids it was asked for.

    ``protein_chains``: the author chain ids of its protein chains, so callers can name them
    without parsing the message."""

    def __init__(self, source: str, requested: Sequence[str], protein_chains: Sequence[str]):
        self.requested = tuple(requested)
        self.protein_chains = tuple(protein_chains)
        super().__init__(
            source,
            f"none of the requested chains {sorted(self.requested)} is a protein chain "
            f"(protein chains: {', '.join(self.protein_chains)})",
        )

    def __reduce__(self):
        return (type(self), (self.source, self.requested, self.protein_chains))


def short_reason(e: BaseException | str, n: int = 300) -> str:
    """An exception's message on one line, cut to ``n`` characters (for StructureReadError
    reasons)."""
    msg = " ".join(str(e).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


@dataclass(eq=False)
class Chain:
    """One protein chain: sequence plus backbone coordinates (NaN where an atom is missing)."""

    id: str
    sequence: str
    coords: np.ndarray
    source: str
    b_factors: np.ndarray | None = None
    residue_ids: list[str] | None = None
    #: [L] bool, False for residues of the deposited sequence (SEQRES / entity_poly_seq) that the
    #: file has no coordinates for (inserted by ``read_structure(seqres=...)``); None = not known
    #: (every residue came from the coordinates).
    observed: np.ndarray | None = None
    #: The entry name the file gives itself (mmCIF data block name, PDB HEADER id code) when ``id``
    #: does not use it because it is not an archive id (:func:`is_archive_id`): the entry part of
    #: ``id`` is then the file name. None when the file's own name was used, or it had none.
    ignored_entry: str | None = None
    #: The experimental method the file declares (PDB ``EXPDTA``, mmCIF ``_exptl.method``), e.g.
    #: "X-RAY DIFFRACTION": its B-factors are then atomic displacement, not pLDDT, and the pLDDT
    #: options leave them alone. None for predicted or computed models and files that declare none.
    experimental_method: str | None = None

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.float32)
        n = len(self.sequence)
        if self.coords.shape != (n, _N_ATOMS, 3):
            raise ValueError(
                f"{self.id}: coords shape {self.coords.shape} does not match "
                f"sequence length {n} (expected ({n}, {_N_ATOMS}, 3))"
            )
        if self.b_factors is not None:
            self.b_factors = np.asarray(self.b_factors, dtype=np.float32)
            if self.b_factors.shape != (n,):
                raise ValueError(f"{self.id}: b_factors shape {self.b_factors.shape} != ({n},)")
        if self.residue_ids is not None and len(self.residue_ids) != n:
            raise ValueError(f"{self.id}: {len(self.residue_ids)} residue_ids for {n} residues")
        if self.observed is not None:
            self.observed = np.asarray(self.observed, dtype=bool)
            if self.observed.shape != (n,):
                raise ValueError(f"{self.id}: observed shape {self.observed.shape} != ({n},)")

    @property
    def atom_mask(self) -> np.ndarray:
        """[L, 4] bool, True where the atom is present (its coordinates are not NaN)."""
        return ~np.isnan(self.coords).any(axis=-1)

    def __len__(self) -> int:
        return len(self.sequence)

    def __repr__(self) -> str:
        return f"Chain(id={self.id!r}, length={len(self)}, source={self.source!r})"


# --------------------------------------------------------------------------- chain ids


def is_pdb_id(name: str) -> bool:
    """A 4-character PDB id: a digit and three letters or digits (either case)."""
    return bool(_PDB_ID_RE.match(name))


def is_placeholder_id(name: str) -> bool:
    """Whether an entry name is a placeholder rather than a name ('', 0000 as ASTRAL writes, XXXX,
    NONE, NULL; either case, surrounding blanks ignored)."""
    return name.strip().upper() in _PLACEHOLDER_IDS


def normalize_entry(entry: str) -> str:
    """A PDB id upper-cased ('1abc' -> '1ABC'); any other entry name unchanged."""
    return entry.upper() if is_pdb_id(entry) else entry


def is_archive_id(name: str) -> bool:
    """Whether an entry name a file gives itself (mmCIF ``data_`` block name, PDB HEADER id code)
    identifies one structure, so chains can be named after it: a PDB id (a digit and three letters
    or digits, not the placeholder 0000), an extended PDB id (``pdb_00001abc``) or an AlphaFold DB
    id (``AF-P69905-F1``, optionally ``-model_v4``). Structure predictors and modelling tools write
    the same name into every file (``data_model``, ``data_s``, a shared HEADER), so any other name
    is ignored and the file name used instead (see :func:`~coordformer.io.read_structure`)."""
    name = name.strip()
    return bool(_ARCHIVE_ID_RE.match(name)) and name.upper() not in _PLACEHOLDER_IDS


def normalize_chain_id(s: str) -> str:
    """Canonical chain id ``ENTRY.CHAIN``: '12as-A', '12AS_A', '12as.A' -> '12AS.A'.

    The entry is upper-cased when it is a 4-character PDB id; the chain id keeps its case.
    An id with a '.' is split at the last '.'; without one, only PDB ids followed by '-',
    '_' or ':' and a chain are recognised. Anything else is returned stripped but unchanged.
    """
    s = s.strip()
    if "." in s:
        entry, chain = s.rsplit(".", 1)
    else:
        m = _PDB_CHAIN_RE.match(s)
        if m is None:
            return normalize_entry(s)
        entry, chain = m.groups()
    entry = normalize_entry(entry.strip())
    chain = chain.strip()
    return f"{entry}.{chain}" if chain else entry
