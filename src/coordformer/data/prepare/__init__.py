"""Turn structure files / chain_set JSONL files / FASTA files into a prepared, memory-mappable
dataset.

Modules, one job each: ``policy`` (which chains pass, as typed results; no files), ``units`` (work
units and their part files), ``pool`` (the crash-tolerant process pool), ``resume`` (whether an
interrupted run resumes), ``consolidate`` (dataset arrays, splits, skip log, manifest) and
``pipeline`` (:func:`prepare`, which runs them, and :func:`read_in_memory`, the same read with the
chains kept in memory instead of written as a dataset).

The run is split into *work units*: one per structure or FASTA file, and one per line range
(``chunk_lines`` records) of every chain_set JSONL file. Units run in parallel; each finished unit
writes its chains (and its skip log) atomically to ``DIR/.work/parts/<unit-hash>.npz``. An
interrupted run (even SIGKILL) therefore resumes when re-run with the same arguments: finished
units are not redone. Consolidation then writes the arrays (``store`` module) under temporary
names, ``os.replace``-s them into place, writes ``manifest.json`` last and removes ``.work``.

Chain order in the dataset is the order of the units (sources sorted by path, JSONL chunks by line)
and then the order within a unit, so it does not depend on ``workers`` or scheduling.

Chain ids are unique per input file. A structure file's chains are ``ENTRY.CHAIN``, ENTRY being the
file's PDB / AlphaFold DB id or else its file name (``read_structure``: generic block names such as
``data_model`` are ignored). When the same id comes from two files, consolidation compares the
chains: the same sequence and coordinates is a real duplicate (the later copy is dropped, and
``skipped.tsv`` names both files); a different chain means the entry id was not specific (decoys or
models sharing a HEADER), and every structure file involved is renamed after its file name (then
``FOLDER_STEM``, then a numbered suffix, until the ids differ). Both cases are counted and logged.

FASTA records are sequence-only chains (every coordinate NaN). The ``max_missing_ca`` filter does
not apply to them: it exists to drop structures whose coordinates are mostly unresolved, while a
FASTA input is sequence-only by the user's choice. Structure and chain_set inputs keep the filter
(a chain_set record with every coordinate null is filtered like a structure with none resolved).
"""

from __future__ import annotations

# Submodules are reached as coordformer.data.prepare.<module>; no name below shadows one.
from .errors import PrepareError
from .pipeline import chains_in_memory, prepare, read_in_memory
from .policy import (
    BAD_COORDS,
    DUPLICATE,
    MISSING_CA,
    NO_ID,
    NOT_SELECTED,
    TOO_LONG,
    TOO_SHORT,
    ChainPolicy,
    Kept,
    Rejected,
    author_chain,
    chain_id,
    has_plddt,
    low_plddt,
    plddt_values,
    selected_chain,
)
from .resume import resume_mismatch, run_fingerprint
from .summary import PrepareSummary
from .units import DEFAULT_CHUNK_LINES, GZIP_MAX_UNITS, PartMeta, WorkUnit, plan_units, process_unit

__all__ = [
    "chains_in_memory",
    "BAD_COORDS",
    "DEFAULT_CHUNK_LINES",
    "DUPLICATE",
    "GZIP_MAX_UNITS",
    "MISSING_CA",
    "NO_ID",
    "NOT_SELECTED",
    "TOO_LONG",
    "TOO_SHORT",
    "ChainPolicy",
    "Kept",
    "PartMeta",
    "PrepareError",
    "PrepareSummary",
    "Rejected",
    "WorkUnit",
    "author_chain",
    "chain_id",
    "has_plddt",
    "low_plddt",
    "plan_units",
    "plddt_values",
    "prepare",
    "process_unit",
    "read_in_memory",
    "resume_mismatch",
    "run_fingerprint",
    "selected_chain",
]
