"""Constants shared by every module: the alphabet (defined in :mod:`coordformer.alphabet`,
re-exported here, where most code and users import it from) and the physical / format constants.

Imports nothing from the package but :mod:`coordformer.alphabet` (see the design rules in the
README).
"""

from __future__ import annotations

from .alphabet import (  # noqa: F401 - re-exported
    AA_OFFSET,
    AMINO_ACIDS,
    CLS,
    EOS,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    VOCAB,
    VOCAB_SIZE,
    ascii_to_token_table,
    token_of,
)

#: Backbone atoms stored for every residue, in this order (index into the atom axis).
BACKBONE_ATOMS = ("N", "CA", "C", "O")
CA_INDEX = 1

#: Version of the on-disk prepared dataset layout; bump when readers must change.
DATASET_FORMAT_VERSION = 1

#: How residues of the deposited sequence that a structure file has no coordinates for are treated
#: (``read_structure(seqres=...)``, ``PrepareConfig.seqres``, ``--seqres``): left out, put back
#: between the first and last modelled residue, or put back everywhere (termini too).
SEQRES_MODES = ("off", "gaps", "all")
