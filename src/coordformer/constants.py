"""Alphabet, special tokens and physical constants shared by every module.

Imports nothing from the package (see the design rules in the README).
"""

from __future__ import annotations

#: Twenty standard amino acids in the conventional alphabetical one-letter order.
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"

#: Backbone atoms stored for every residue, in this order (index into the atom axis).
BACKBONE_ATOMS = ("N", "CA", "C", "O")
CA_INDEX = 1

#: Special tokens come first so amino-acid ids are stable if specials are added at the end.
PAD, MASK, CLS, EOS, UNK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<eos>", "X")
VOCAB = SPECIAL_TOKENS + tuple(AMINO_ACIDS)
VOCAB_SIZE = len(VOCAB)
#: First token id of a real amino acid; ids AA_OFFSET .. AA_OFFSET+19 are the 20 residues.
AA_OFFSET = len(SPECIAL_TOKENS)

#: Coordinates are divided by this many Angstrom before the linear embedding (paper: 16 A).
COORD_SCALE = 16.0

#: Version of the on-disk prepared dataset layout; bump when readers must change.
DATASET_FORMAT_VERSION = 1


def token_of(letter: str) -> int:
    """Token id of a one-letter residue code; anything that is not one of the 20 maps to X."""
    i = AMINO_ACIDS.find(letter.upper()) if len(letter) == 1 else -1
    return AA_OFFSET + i if i >= 0 else UNK


def ascii_to_token_table() -> list[int]:
    """A 256-entry lookup table from ASCII byte to token id (for vectorised conversion)."""
    return [token_of(chr(b)) for b in range(256)]

#: How residues of the deposited sequence that a structure file has no coordinates for are treated
#: (``read_structure(seqres=...)``, ``PrepareConfig.seqres``, ``--seqres``): left out, put back
#: between the first and last modelled residue, or put back everywhere (termini too).
SEQRES_MODES = ("off", "gaps", "all")
