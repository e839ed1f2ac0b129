"""Structure input: PDB / mmCIF files (via gemmi), CATH-4.2 chain_set JSONL files and FASTA
files (sequence only: every coordinate missing).

One module per concept, each importing only those above it:

* ``chains``: the :class:`Chain` record, :class:`StructureReadError`, chain ids;
* ``files``: opening (plain / gzip, byte-order marks), file-name endings, format detection;
* ``sources``: folders expanded into input files (:func:`find_sources`), chain-id lists;
* ``structures``, ``chain_set``, ``fasta``: the three readers, peers that do not import each other;
* ``fetch``: downloads (imported on its own, not from here).

Everything here is torch-free so that data-preparation workers stay light.
"""

from coordformer.io.chain_set import iter_chain_set, iter_chain_set_lines, write_chain_set
from coordformer.io.chains import (
    Chain,
    ChainsNotFoundError,
    StructureReadError,
    is_archive_id,
    normalize_chain_id,
    normalize_entry,
)
from coordformer.io.fasta import iter_fasta, read_fasta
from coordformer.io.files import (
    CHAIN_SET_SUFFIXES,
    FASTA_SUFFIXES,
    STRUCTURE_SUFFIXES,
    count_lines,
    file_stem,
    is_chain_set,
    is_fasta,
    is_structure_file,
)
from coordformer.io.sources import find_sources, read_id_list
from coordformer.io.structures import SEQRES_MODES, read_structure

__all__ = [
    "CHAIN_SET_SUFFIXES",
    "FASTA_SUFFIXES",
    "SEQRES_MODES",
    "STRUCTURE_SUFFIXES",
    "Chain",
    "ChainsNotFoundError",
    "StructureReadError",
    "count_lines",
    "file_stem",
    "find_sources",
    "is_archive_id",
    "is_chain_set",
    "is_fasta",
    "is_structure_file",
    "iter_chain_set",
    "iter_chain_set_lines",
    "iter_fasta",
    "normalize_chain_id",
    "normalize_entry",
    "read_fasta",
    "read_id_list",
    "read_structure",
    "write_chain_set",
]
