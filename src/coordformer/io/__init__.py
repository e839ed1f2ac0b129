"""Structure input: PDB / mmCIF files (via gemmi) and CATH-4.2 chain_set JSONL files.

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
from coordformer.io.structures import (
    STRUCTURE_SUFFIXES,
    Chain,
    StructureReadError,
    is_structure_file,
    normalize_chain_id,
    read_id_list,
    read_structure,
)

__all__ = [
    "CHAIN_SET_SUFFIXES",
    "STRUCTURE_SUFFIXES",
    "Chain",
    "StructureReadError",
    "count_lines",
    "find_sources",
    "is_chain_set",
    "is_structure_file",
    "iter_chain_set",
    "iter_chain_set_lines",
    "normalize_chain_id",
    "read_id_list",
    "read_structure",
    "write_chain_set",
]
