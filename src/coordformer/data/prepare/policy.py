"""The per-chain policy: which chains enter a dataset, and in what form.

Pure functions of one chain (any object with ``id``, ``sequence``, ``coords`` and optionally
``b_factors``, as the ``io`` readers return): no files are written and nothing here needs torch, so
commands that take structure files directly can apply the same rule in memory as ``prepare`` does.

:meth:`ChainPolicy.check` returns :class:`Kept` (the chain as it is stored) or :class:`Rejected`
(a filter category and a human-readable detail, as in ``skipped.tsv``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence, Union

import numpy as np

from ...alphabet import ascii_to_letter_table
from ...constants import BACKBONE_ATOMS, CA_INDEX
from ..sanitize import sanitize_coords

# Filter categories: keys of manifest["counts"]["chains_filtered"] and the first words of the
# reason column of skipped.tsv.
TOO_SHORT = "too short"
TOO_LONG = "too long"
MISSING_CA = "missing CA"
BAD_COORDS = "bad coordinates"
NO_ID = "missing id"
#: Decided across inputs at consolidation, not per chain; listed here with the other categories.
DUPLICATE = "duplicate id"
#: Chains whose author chain id is not one of PrepareConfig.chains (``--chains``).
NOT_SELECTED = "not in --chains"


@dataclass(frozen=True)
class Kept:
    """A chain that passed, as a dataset stores it.

    ``seq``: uint8 [L] one-letter codes (the 20 standard amino acids upper-cased, anything else X);
    ``coords``: float32 [L, 4, 3] backbone N, CA, C, O in Angstrom, NaN where missing (non-finite
    atoms and, with ``plddt_min``, low-confidence residues); ``plddt``: float32 [L] pLDDT 0-100 from
    the B-factors, NaN where unknown (every residue of an experimental structure);
    ``n_low_plddt``: residues made missing by ``plddt_min``; ``experimental``: the chain comes from
    a file that declares an experimental method, so its B-factors were not read as pLDDT.
    """

    seq: np.ndarray
    coords: np.ndarray
    plddt: np.ndarray
    n_low_plddt: int = 0
    experimental: bool = False

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def sequence(self) -> str:
        return self.seq.tobytes().decode("ascii")

    @property
    def zero_coords(self) -> bool:
        """Every present coordinate is exactly 0: a placeholder rather than a structure."""
        present = ~np.isnan(self.coords)
        return bool(present.any() and not self.coords[present].any())


@dataclass(frozen=True)
class Rejected:
    """A chain that did not pass: ``reason`` is a filter category (``TOO_SHORT`` ...), ``detail``
    says why."""

    reason: str
    detail: str

    @property
    def message(self) -> str:
        """The reason column of skipped.tsv."""
        return f"{self.reason}: {self.detail}"


Verdict = Union[Kept, Rejected]


@dataclass(frozen=True)
class ChainPolicy:
    """Length, missing-CA and pLDDT filters plus the coordinate rule (``sanitize_coords``).

    The defaults apply the coordinate rule only. ``max_missing_ca`` is a fraction (0..1) of residues
    without CA; ``plddt_min`` (0..100, None = off) makes residues whose B-factor read as pLDDT is
    below it missing before that filter; chains without B-factors, and chains of experimental
    structures (:func:`has_plddt`), are left as they are.
    """

    min_length: int = 1
    max_length: int | None = None
    max_missing_ca: float = 1.0
    plddt_min: float | None = None

    @classmethod
    def from_config(cls, config: Any) -> ChainPolicy:
        """The policy of a ``PrepareConfig``."""
        return cls(
            min_length=config.min_length,
            max_length=config.max_length,
            max_missing_ca=config.max_missing_ca,
            plddt_min=config.plddt_min,
        )

    def sequence_only(self) -> ChainPolicy:
        """The policy for FASTA records: sequence-only by the user's choice, so no missing-CA
        filter."""
        return replace(self, max_missing_ca=1.0)

    def check(self, chain: Any) -> Verdict:
        """Validate and filter one chain.

        Coordinates go through ``sanitize_coords`` (non-finite atoms become missing; a chain beyond
        ``MAX_ABS_COORD`` is rejected as ``BAD_COORDS``) before the max-missing-CA filter, and so
        does the pLDDT masking (:func:`low_plddt`).
        """
        seq = chain.sequence if isinstance(chain.sequence, str) else str(chain.sequence or "")
        n = len(seq)
        try:
            raw = np.asarray(chain.coords, dtype=np.float64)
        except (TypeError, ValueError) as e:
            return Rejected(BAD_COORDS, f"coordinates are not numeric ({e})")
        shape = (n, len(BACKBONE_ATOMS), 3)
        if raw.shape != shape:
            return Rejected(
                BAD_COORDS,
                f"coordinate array shape {raw.shape} does not match sequence length ({shape})",
            )
        if n < self.min_length:
            return Rejected(TOO_SHORT, f"{n} residues < min_length {self.min_length}")
        if self.max_length is not None and n > self.max_length:
            return Rejected(TOO_LONG, f"{n} residues > max_length {self.max_length}")
        coords, why = sanitize_coords(raw)
        if why:
            return Rejected(BAD_COORDS, why)
        note = ""
        n_low = 0
        experimental = not has_plddt(chain)
        if self.plddt_min is not None and not experimental:
            b = getattr(chain, "b_factors", None)
            if b is not None:
                try:
                    b = np.asarray(b, dtype=np.float64)
                except (TypeError, ValueError) as e:
                    return Rejected(BAD_COORDS, f"b_factors are not numeric ({e})")
                if b.shape != (n,):
                    return Rejected(
                        BAD_COORDS,
                        f"b_factors shape {b.shape} does not match sequence length ({n},)",
                    )
                low = low_plddt(b, self.plddt_min)
                if low.any():
                    coords[low] = np.nan
                    n_low = int(low.sum())
                    note = f" ({n_low} residues below plddt_min {self.plddt_min:g})"
        # after sanitising and pLDDT masking: atoms made missing either way count against
        # max_missing_ca too
        frac = float(np.isnan(coords[:, CA_INDEX, 0]).mean()) if n else 1.0
        if frac > self.max_missing_ca:
            return Rejected(
                MISSING_CA,
                f"{frac:.0%} of residues lack CA > max_missing_ca {self.max_missing_ca:.0%}{note}",
            )
        return Kept(
            seq=seq_to_bytes(seq),
            coords=coords,
            plddt=plddt_values(chain),
            n_low_plddt=n_low,
            experimental=experimental,
        )


def chain_id(chain: Any) -> str:
    """A chain's id as a dataset stores it (whitespace runs become ``_``); "" when it has none."""
    return "_".join(str(chain.id or "").split())


def author_chain(chain_id: str) -> str | None:
    """The author chain id that a chain id ``ENTRY.CHAIN`` names; None for an id that names no
    chain, such as the FASTA header ``>seq2`` (readers normalise ids, so ``1abc_A`` is
    ``1ABC.A``)."""
    _, dot, chain = str(chain_id).rpartition(".")
    return chain if dot else None


def selected_chain(chain_id: str, chains: Sequence[str]) -> bool:
    """Whether ``--chains`` ``chains`` keeps the chain ``chain_id``: its author chain is one of
    them, or its id names no chain (:func:`author_chain`), since ``--chains`` cannot name it."""
    author = author_chain(chain_id)
    return author is None or author in chains


def not_selected_reason(chain_id: str, chains: Sequence[str]) -> str:
    """The skip-log reason of a chain that ``--chains`` ``chains`` leaves out."""
    return f"{NOT_SELECTED}: chain {author_chain(chain_id)} (--chains {','.join(chains)})"


def not_selected_row(chain_id: str, source: str, chains: Sequence[str]) -> list[str]:
    """The skip-log row (category, input, reason) of a chain that ``--chains`` ``chains`` leaves
    out; ``source`` is the file it came from."""
    return [NOT_SELECTED, f"{chain_id} [{source}]", not_selected_reason(chain_id, chains)]


_ASCII_TABLE = np.frombuffer(ascii_to_letter_table(), dtype=np.uint8)


def seq_to_bytes(seq: str) -> np.ndarray:
    """uint8 [L]: the 20 standard one-letter codes (upper-cased); anything else becomes X."""
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    return _ASCII_TABLE[raw]


def low_plddt(b_factors: np.ndarray, plddt_min: float) -> np.ndarray:
    """[L] bool: residues whose B-factor, read as pLDDT, is below ``plddt_min`` (0..100).

    AlphaFold DB files store pLDDT as 0-100, but some ESMFold outputs store 0-1: a chain whose
    finite B-factors all lie in [0, 1] is read as 0-1 and scaled by 100 when ``plddt_min > 1``
    (with ``plddt_min <= 1`` the values are compared as they are). Residues with no B-factor
    (NaN: no CA in the file) are never flagged.
    """
    b = np.asarray(b_factors, dtype=np.float64)
    finite = np.isfinite(b)
    if plddt_min > 1:
        b = _plddt_percent(b)
    # B-factors arrive as float32 (0.7 -> 0.69999999): rounding back to the file's few decimals
    # keeps a value written exactly at the threshold from counting as below it
    return finite & (np.round(b, 4) < plddt_min)


def has_plddt(chain: Any) -> bool:
    """Whether a chain's B-factors may be read as pLDDT: not when its file declares an
    experimental method (``Chain.experimental_method``: X-ray, NMR, cryo-EM ...), whose B-factors
    are atomic displacement, where a high value means an uncertain atom."""
    return not getattr(chain, "experimental_method", None)


def plddt_values(chain: Any) -> np.ndarray:
    """float32 [L] pLDDT (0-100) of a chain from its B-factors (0-1 files scaled as in
    :func:`low_plddt`); NaN where unknown, all NaN for chains without usable B-factors and for
    experimental structures (:func:`has_plddt`)."""
    b = getattr(chain, "b_factors", None) if has_plddt(chain) else None
    return _plddt_of(b, len(chain.sequence))


def _plddt_of(b: Any, n: int) -> np.ndarray:
    try:
        b = np.asarray(b, dtype=np.float64) if b is not None else None
    except (
        TypeError,
        ValueError,
        OverflowError,
    ):  # unusable B-factors mean unknown pLDDT, not a bad chain
        b = None
    if b is None or b.shape != (n,):
        return np.full(n, np.nan, dtype=np.float32)
    return _plddt_percent(np.where(np.isfinite(b), b, np.nan)).astype(np.float32)


def _plddt_percent(b: np.ndarray) -> np.ndarray:
    """B-factors read as pLDDT on the 0-100 scale: a chain whose finite values all lie in [0, 1]
    (some ESMFold outputs) is scaled by 100, any other is returned as it is."""
    finite = np.isfinite(b)
    if finite.any() and b[finite].min() >= 0 and b[finite].max() <= 1:
        return b * 100.0
    return b
