"""Readers for the DeepFRI nrPDB benchmark files: EC / GO annotations, train/valid/test splits, test
identity bins.

Formats (as distributed with DeepFRI; the real files have CRLF line ends, every reader accepts
either):

* ``nrPDB-EC_*_annot.tsv``: ``### EC-numbers``, one tab-separated line with all classes,
  ``### PDB-chain<TAB>EC-numbers``, then ``12AS-A<TAB>6.3.1.1,6.3.1.-`` per chain.
* ``nrPDB-GO_*_annot.tsv``: for each ontology (molecular_function, biological_process,
  cellular_component) a ``### GO-terms (<ontology>)`` and a ``### GO-names (<ontology>)`` header,
  each followed by one tab-separated line; then
  ``### PDB-chain<TAB>GO-terms (molecular_function)<TAB>...`` and per chain one comma-separated
  column per ontology (a column may be empty).
* ``*_{train,valid,test}.txt``: one chain id per line.
* ``*_test.csv``: ``PDB-chain,<30%,<40%,<50%,<70%,<95%`` then 0/1 flags; 1 means the chain's
  sequence identity to the training set is below that cut-off.

Class order is kept as in the file, so class index ``k`` here is column ``k`` of DeepFRI's outputs.
Chain ids are normalised to the project convention ``PDBID.CHAIN`` so that they match the names of
prepared structures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..config import TASKS  # defined beside FinetuneConfig
from ..errors import CoordformerError
from ..io.structures import normalize_chain_id as _canonical

# task -> (class-list section, which is also the label column's header; names section or None)
_SECTIONS: dict[str, tuple[str, str | None]] = {
    "ec": ("EC-numbers", None),
    "go-mf": ("GO-terms (molecular_function)", "GO-names (molecular_function)"),
    "go-bp": ("GO-terms (biological_process)", "GO-names (biological_process)"),
    "go-cc": ("GO-terms (cellular_component)", "GO-names (cellular_component)"),
}


class FunctionDataError(CoordformerError, ValueError):
    """A DeepFRI benchmark file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class LabelSet:
    """Labels of one task.

    ``labels`` maps a normalised chain id to a sorted int64 array of class indices into ``classes``;
    only chains with at least one known class are present. ``class_names`` is parallel to
    ``classes`` (GO names; empty for EC). ``n_unknown`` counts annotations naming a class that is
    not in the class list (ignored, as DeepFRI's class list is the label space); ``n_unlabelled``
    counts chains listed in the file with no known class for this task.
    """

    task: str
    classes: tuple[str, ...]
    labels: dict[str, np.ndarray]
    class_names: tuple[str, ...] = ()
    n_unknown: int = 0
    n_unlabelled: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def dense(self, ids: Iterable[str]) -> np.ndarray:
        """0/1 float32 matrix [len(ids), n_classes]; raises KeyError for an id without labels."""
        ids = list(ids)
        y = np.zeros((len(ids), self.n_classes), dtype=np.float32)
        for i, cid in enumerate(ids):
            y[i, self.labels[cid]] = 1.0
        return y


def normalise_chain_id(s: str) -> str:
    """'12AS-A', '12AS.A', '12as_A' -> '12AS.A': PDB id upper-cased, chain id case kept (chain ids
    are case-sensitive).

    Delegates to the project's :func:`coordformer.io.normalize_chain_id` so that ids read here
    always match the names of prepared structures, and raises ValueError when ``s`` has no chain
    part.
    """
    out = _canonical(s)
    entry, _, chain = out.rpartition(".")
    if not entry or not chain or any(c.isspace() for c in out):
        raise ValueError(f"not a chain id of the form PDBID-CHAIN or PDBID.CHAIN: {s.strip()!r}")
    return out


def _error(path: str | Path, lineno: int, msg: str) -> FunctionDataError:
    return FunctionDataError(f"{path}, line {lineno}: {msg}")


def _new_chain_id(path: str | Path, lineno: int, raw: str, first_seen: dict[str, int]) -> str:
    """Normalised id of a chain listed on ``lineno``; an error if malformed or listed before
    (recorded in ``first_seen``)."""
    try:
        cid = normalise_chain_id(raw)
    except ValueError as e:
        raise _error(path, lineno, str(e)) from None
    if cid in first_seen:
        raise _error(path, lineno, f"chain {cid} already listed on line {first_seen[cid]}")
    first_seen[cid] = lineno
    return cid


def _read_lines(path: str | Path) -> list[str]:
    try:
        return (
            Path(path).read_text(encoding="utf-8-sig").splitlines()
        )  # -sig: a byte-order mark would hide the first id
    except FileNotFoundError:
        raise FunctionDataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FunctionDataError(f"{path}: cannot read as UTF-8 text ({e})") from None


def _tab_fields(line: str) -> list[str]:
    fields = [f.strip() for f in line.split("\t")]
    while fields and not fields[-1]:  # a trailing tab is not an extra (empty) class
        fields.pop()
    return fields


def _parse_header(
    path: str | Path, lines: list[str]
) -> tuple[dict[str, tuple[int, list[str]]], list[str], int]:
    """Sections {name: (line number of the content line, fields)}, the chain-table columns and its
    first line index."""
    sections: dict[str, tuple[int, list[str]]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if not line.startswith("###"):
            raise _error(path, i + 1, f"expected a '### <section>' header line, got {line[:60]!r}")
        if line[3:].strip().startswith("PDB-chain"):
            return sections, _tab_fields(line[3:]), i + 1
        name = line[3:].strip()
        if i + 1 >= len(lines) or lines[i + 1].startswith("###"):
            raise _error(path, i + 1, f"section {name!r} is not followed by its tab-separated line")
        sections[name] = (i + 2, _tab_fields(lines[i + 1]))
        i += 2
    raise FunctionDataError(
        f"{path}: no '### PDB-chain' header line (not a DeepFRI annotation file?)"
    )


def read_annotations(path: str | Path, task: str) -> LabelSet:
    """Labels of ``task`` ('ec', 'go-mf', 'go-bp' or 'go-cc') from a DeepFRI ``*_annot.tsv``
    file."""
    if task not in _SECTIONS:
        raise FunctionDataError(
            f"unknown function task {task!r}; expected one of {', '.join(TASKS)}"
        )
    key, names_key = _SECTIONS[task]
    lines = _read_lines(path)
    sections, columns, start = _parse_header(path, lines)
    if key not in sections:
        kind = "an EC" if task == "ec" else "a GO"
        raise FunctionDataError(
            f"{path}: no '### {key}' section (found: {', '.join(sections) or 'none'}); "
            f"task {task!r} needs {kind} annotation file"
        )
    class_line, classes = sections[key]
    if not classes or any(not c for c in classes):
        raise _error(path, class_line, f"the {key} list is empty or has an empty entry")
    index: dict[str, int] = {}
    for k, c in enumerate(classes):
        if c in index:
            raise _error(path, class_line, f"class {c!r} is listed twice")
        index[c] = k
    names: list[str] = []
    if names_key is not None and names_key in sections:
        names_line, names = sections[names_key]
        names += [""] * (
            len(classes) - len(names)
        )  # trailing empty names were dropped with the trailing tabs
        if len(names) != len(classes):
            raise _error(path, names_line, f"{len(names)} names for {len(classes)} classes")
    if key not in columns:
        raise _error(
            path, start, f"the '### PDB-chain' header has no {key!r} column (columns: {columns})"
        )
    col = columns.index(key)

    labels: dict[str, np.ndarray] = {}
    first_seen: dict[str, int] = {}
    n_unknown = n_unlabelled = 0
    for lineno, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            continue
        fields = _tab_fields(line)
        if len(fields) > len(columns):
            raise _error(
                path,
                lineno,
                f"{len(fields)} tab-separated fields but the header has {len(columns)} columns",
            )
        cid = _new_chain_id(path, lineno, fields[0], first_seen)
        # Trailing empty columns may be missing altogether (editors strip trailing tabs).
        cell = fields[col] if col < len(fields) else ""
        found: set[int] = set()
        for term in cell.split(","):
            term = term.strip()
            if term:
                k = index.get(term)
                if k is None:
                    n_unknown += 1
                else:
                    found.add(k)
        if found:
            labels[cid] = np.array(sorted(found), dtype=np.int64)
        else:
            n_unlabelled += 1
    return LabelSet(task, tuple(classes), labels, tuple(names), n_unknown, n_unlabelled)


def read_split(path: str | Path) -> list[str]:
    """Normalised chain ids of a DeepFRI ``*_{train,valid,test}.txt`` file, in file order."""
    ids: list[str] = []
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(path), 1):
        s = line.strip()
        if not s:
            continue
        if len(s.split()) != 1:
            raise _error(path, lineno, f"expected one chain id per line, got {s[:60]!r}")
        cid = _new_chain_id(path, lineno, s, first_seen)
        ids.append(cid)
    return ids


def read_identity_bins(path: str | Path) -> dict[str, dict[str, bool]]:
    """{chain id: {bin name: flag}} from a DeepFRI ``*_test.csv`` file; bin names come from its
    header ('<30%', ...)."""
    lines = _read_lines(path)
    rows = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not rows:
        raise FunctionDataError(f"{path}: empty file")
    header_line, header = rows[0]
    cols = [c.strip() for c in header.split(",")]
    if (
        cols[0] != "PDB-chain"
        or len(cols) < 2
        or any(not c for c in cols)
        or len(set(cols)) != len(cols)
    ):
        raise _error(
            path, header_line, f"expected a header 'PDB-chain,<30%,...', got {header[:80]!r}"
        )
    bins = cols[1:]
    out: dict[str, dict[str, bool]] = {}
    first_seen: dict[str, int] = {}
    for lineno, line in rows[1:]:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(cols):
            raise _error(
                path, lineno, f"{len(fields)} comma-separated fields, the header has {len(cols)}"
            )
        bad = [f for f in fields[1:] if f not in ("0", "1")]
        if bad:
            raise _error(path, lineno, f"identity flags must be 0 or 1, got {bad[0]!r}")
        cid = _new_chain_id(path, lineno, fields[0], first_seen)
        out[cid] = {b: f == "1" for b, f in zip(bins, fields[1:])}
    return out


def function_dataset(
    labels: LabelSet, split_ids: Iterable[str], available_ids: Iterable[str]
) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """The chains of a split that have labels and a structure, with their label matrix.

    Returns ``(ids, Y, report)``: ids in split order (duplicates dropped), ``Y`` float32 0/1
    [len(ids), n_classes], and counts ``in_split`` = ``without_labels`` + ``without_structure`` +
    ``kept`` (a chain with neither labels nor structure counts as without labels). Ids are compared
    after normalisation, so either convention may be passed.
    """
    # The lenient project normaliser: an odd name in available_ids (a non-PDB structure) simply
    # never matches.
    available = {_canonical(s) for s in available_ids}
    ids: list[str] = []
    seen: set[str] = set()
    no_labels = no_structure = 0
    for s in split_ids:
        cid = _canonical(s)
        if cid in seen:
            continue
        seen.add(cid)
        if cid not in labels.labels:
            no_labels += 1
        elif cid not in available:
            no_structure += 1
        else:
            ids.append(cid)
    report = {
        "in_split": len(seen),
        "without_labels": no_labels,
        "without_structure": no_structure,
        "kept": len(ids),
    }
    return ids, labels.dense(ids), report


#: A chain id made from a per-chain file name by an earlier version: 1PAA-K.pdb -> 1PAA-K.K.
_PER_CHAIN_FILE_ID = re.compile(r"^([0-9][A-Za-z0-9]{3})[-_]([A-Za-z0-9]{1,4})\.\2$")


def missing_structure_hint(
    labels: LabelSet, split_ids: Iterable[str], available_ids: Iterable[str]
) -> str | None:
    """Why labelled chains of a split found no structure: how many, examples, and whether the
    dataset holds them under ids made from per-chain file names (``1PAA-K.K`` for 1PAA.K, written by
    versions before ``read_structure`` recognised such names). None when every labelled chain has
    one."""
    available_ids = list(available_ids)
    available = {_canonical(s) for s in available_ids}
    missing = [
        c
        for c in dict.fromkeys(_canonical(s) for s in split_ids)
        if c in labels.labels and c not in available
    ]
    if not missing:
        return None
    per_chain = {}
    for a in available_ids:
        m = _PER_CHAIN_FILE_ID.match(a)
        if m:
            per_chain.setdefault(f"{m.group(1).upper()}.{m.group(2)}", a)
    text = (
        f"{len(missing)} labelled chains have no structure in the dataset (e.g. "
        f"{', '.join(missing[:3])})"
    )
    renamed = [c for c in missing if c in per_chain]
    if renamed:
        text += (
            f"; {len(renamed)} of them are there under ids made from per-chain file names "
            f"({per_chain[renamed[0]]} for {renamed[0]}): prepare the structures again, which now "
            f"names them {renamed[0]}"
        )
    return text
