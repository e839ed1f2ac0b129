"""Residue letters and token ids: the one place that turns letters into tokens.

Two rules live here and nowhere else:

* :func:`normalize_letter` / :func:`normalize_sequence`: any text letter to one of the 20 standard
  one-letter codes or ``X``. Readers (``coordformer.io``) use it with ``rare_to_parent=True``
  (selenocysteine U -> C, pyrrolysine O -> K); the token tables use ``rare_to_parent=False``
  (U, O -> X), as they always have. Case is folded for ASCII letters only: ``str.upper()`` of other
  characters can lengthen a string ('ß' -> 'SS') or turn them into ASCII ('ı' -> 'I').
* :func:`token_of` / :func:`ascii_to_token_table`: one-letter code to token id (:data:`VOCAB`).

Three-letter residue names (MSE, SEC, PYL, ...) are looked up in gemmi's residue table by
``coordformer.io.structures``, which hands the one-letter code it finds to :func:`normalize_letter`.

Imports nothing from the package (``constants`` re-exports these names).
"""

from __future__ import annotations

__all__ = [
    "AMINO_ACIDS",
    "UNKNOWN_LETTER",
    "RARE_TO_PARENT",
    "PAD",
    "MASK",
    "CLS",
    "EOS",
    "UNK",
    "SPECIAL_TOKENS",
    "VOCAB",
    "VOCAB_SIZE",
    "AA_OFFSET",
    "normalize_letter",
    "normalize_sequence",
    "token_of",
    "ascii_to_token_table",
    "ascii_to_letter_table",
]

#: Twenty standard amino acids in the conventional alphabetical one-letter order.
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: The letter of any residue that is not one of the 20 (unknown, ambiguous B/Z/J, gaps, junk).
UNKNOWN_LETTER = "X"
#: Genetically encoded residues outside the 20, read as the residue they are made from
#: (selenocysteine -> cysteine, pyrrolysine -> lysine) by the readers.
RARE_TO_PARENT = {"U": "C", "O": "K"}

#: Special tokens come first so amino-acid ids are stable if specials are added at the end.
#: PAD is 0 on purpose: a zero-filled token tensor is all padding.
PAD, MASK, CLS, EOS, UNK = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<eos>", UNKNOWN_LETTER)
VOCAB = SPECIAL_TOKENS + tuple(AMINO_ACIDS)
VOCAB_SIZE = len(VOCAB)
#: First token id of a real amino acid; ids AA_OFFSET .. AA_OFFSET+19 are the 20 residues.
AA_OFFSET = len(SPECIAL_TOKENS)

_KEPT = frozenset(AMINO_ACIDS)


def normalize_letter(letter: str, rare_to_parent: bool = True) -> str:
    """One of the 20 one-letter codes or 'X' for one character.

    ASCII letters are upper-cased; U -> C and O -> K when ``rare_to_parent``; anything else
    (other letters, digits, symbols, non-ASCII characters, strings that are not one character)
    is 'X'.
    """
    if len(letter) != 1 or not letter.isascii():
        return UNKNOWN_LETTER
    up = letter.upper()
    if up in _KEPT:
        return up
    return RARE_TO_PARENT.get(up, UNKNOWN_LETTER) if rare_to_parent else UNKNOWN_LETTER


def normalize_sequence(seq: str, rare_to_parent: bool = True) -> str:
    """:func:`normalize_letter` applied to every character; the result has the length of ``seq``."""
    if seq.isascii():
        seq = seq.upper()
        if all(c in _KEPT for c in seq):  # the common case, kept fast
            return seq
    return "".join(normalize_letter(c, rare_to_parent) for c in seq)


def token_of(letter: str) -> int:
    """Token id of a one-letter residue code (either case); anything that is not one of the 20
    maps to UNK (X), U and O included: the readers have turned those into C and K already."""
    up = normalize_letter(letter, rare_to_parent=False)
    return UNK if up == UNKNOWN_LETTER else AA_OFFSET + AMINO_ACIDS.index(up)


def ascii_to_token_table() -> list[int]:
    """A 256-entry lookup table from byte to token id (for vectorised conversion); bytes >= 128
    map to UNK."""
    return [token_of(chr(b)) for b in range(256)]


def ascii_to_letter_table() -> bytes:
    """A 256-entry lookup table from byte to the byte of its normalised letter (the 20 upper-case
    codes or 'X'; U and O give 'X', as in :func:`token_of`)."""
    return bytes(ord(normalize_letter(chr(b), rare_to_parent=False)) for b in range(256))
