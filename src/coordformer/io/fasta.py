"""FASTA reader: sequence-only chains (every coordinate missing).

A record becomes a :class:`Chain` whose coords are all NaN, [L, 4, 3] float32, so it goes through
the same dataset and model code as a structure; the model sees every residue flagged missing.
Files may be plain or gzipped (detected from the content). Multi-line sequences, Windows line
ends, ``;`` comment lines and a terminal ``*`` (stop codon) are accepted.

No torch here: this runs in data-preparation workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from coordformer.alphabet import normalize_sequence
from coordformer.constants import BACKBONE_ATOMS
from coordformer.io.chains import Chain, StructureReadError, normalize_chain_id, short_reason
from coordformer.io.files import FASTA_SUFFIXES, is_fasta, read_bytes

__all__ = ["FASTA_SUFFIXES", "is_fasta", "iter_fasta", "read_fasta"]

_N_ATOMS = len(BACKBONE_ATOMS)


def _record(src: str, lineno: int, header: str, parts: list[str]) -> Chain | StructureReadError:
    where = f"{src}:{lineno}"
    words = header.split()
    if not words:
        return StructureReadError(where, "FASTA header '>' has no id")
    seq = "".join(parts)
    # a translated ORF ends in '*' (stop); it is not a residue
    if seq.endswith("*"):
        seq = seq[:-1]
    if not seq:
        return StructureReadError(
            where, f"FASTA record {short_reason(words[0], 80)!r} has an empty sequence"
        )
    try:
        seq = normalize_sequence(seq)
        return Chain(
            id=normalize_chain_id(words[0]),
            sequence=seq,
            coords=np.full((len(seq), _N_ATOMS, 3), np.nan, dtype=np.float32),
            source=where,
        )
    except Exception as e:  # never let anything escape the iterator
        return StructureReadError(where, f"unexpected {type(e).__name__}: {short_reason(e)}")


def iter_fasta(path: str | Path) -> Iterator[Chain | StructureReadError]:
    """Chains of a FASTA file, one per ``>`` record, in file order.

    The id is the header's first word, normalised with :func:`normalize_chain_id` ('1abc_A' ->
    '1ABC.A'); the sequence is cleaned like chain_set sequences
    (:func:`coordformer.alphabet.normalize_sequence`: upper-cased, U->C, O->K, anything else X;
    whitespace dropped). Each chain's coords are [L, 4, 3] float32, all NaN, and its source is
    ``path:line`` of the header. A record without id or sequence yields a
    ``StructureReadError("path:line", reason)`` and iteration continues. A file that cannot be read,
    is empty, binary or does not start with a ``>`` header raises StructureReadError at call time.
    The whole (decompressed) file is read into memory.
    """
    src = str(path)
    data = read_bytes(path)
    if not data.strip():
        raise StructureReadError(src, "empty file")
    if b"\x00" in data:
        raise StructureReadError(src, "binary data, not a FASTA text file")
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith(";")), None)
    if first is None or not lines[first].startswith(">"):
        raise StructureReadError(
            src, "not a FASTA file: no '>' header line before the first sequence line"
        )
    return _records(src, lines, first)


def _records(src: str, lines: list[str], first: int) -> Iterator[Chain | StructureReadError]:
    header, lineno, parts = "", 0, []
    for i in range(first, len(lines)):
        line = lines[i]
        if line.startswith(">"):
            if i > first:
                yield _record(src, lineno, header, parts)
            header, lineno, parts = line[1:], i + 1, []
        elif not line.startswith(";"):
            parts.append("".join(line.split()))
    yield _record(src, lineno, header, parts)


def read_fasta(path: str | Path) -> list[Chain]:
    """All chains of a FASTA file (see :func:`iter_fasta`); the first bad record raises
    StructureReadError naming ``path:line`` and the reason."""
    out = []
    for item in iter_fasta(path):
        if isinstance(item, StructureReadError):
            raise item
        out.append(item)
    return out
