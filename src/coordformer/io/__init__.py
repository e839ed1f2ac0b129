"""Structure input: PDB / mmCIF files (via gemmi), CATH-4.2 chain_set JSONL files and FASTA
files (sequence only: every coordinate missing).

Everything here is torch-free so that data-preparation workers stay light.
"""

from coordformer.io.chain_set import (
    CHAIN_SET_SUFFIXES,
    count_lines,
    find_sources,
    is_chain_set,
    iter_chain_set,
    iter_chain_set_lines,
    write_chain_set,
)
from coordformer.io.fasta import FASTA_SUFFIXES, is_fasta, iter_fasta, read_fasta
from coordformer.io.structures import (
    SEQRES_MODES,
    STRUCTURE_SUFFIXES,
    Chain,
    StructureReadError,
    is_archive_id,
    is_structure_file,
    normalize_chain_id,
    read_id_list,
    read_structure,
)

__all__ = [
    "CHAIN_SET_SUFFIXES",
    "FASTA_SUFFIXES",
    "SEQRES_MODES",
    "STRUCTURE_SUFFIXES",
    "Chain",
    "StructureReadError",
    "count_lines",
    "find_sources",
    "is_archive_id",
    "is_chain_set",
    "is_fasta",
    "is_structure_file",
    "iter_chain_set",
    "iter_chain_set_lines",
    "iter_fasta",
    "normalize_chain_id",
    "read_fasta",
    "read_id_list",
    "read_structure",
    "write_chain_set",
]
