"""What to read: files and folders expanded into input files (:func:`find_sources`), and chain-id
lists (:func:`read_id_list`, for ``--exclude`` and chain selections).

Builds on :mod:`coordformer.io.chains` and :mod:`coordformer.io.files`; reads no chains itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from coordformer.io.chains import (
    StructureReadError,
    is_archive_id,
    normalize_chain_id,
    short_reason,
)
from coordformer.io.files import UTF16_BOMS, read_bytes, unreadable_reason

__all__ = ["find_sources", "read_id_list"]


def _broken_link(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (
        f"broken symbolic link: its target {target} does not exist (or the link points to itself)"
    )


def _enter(
    folder: Path, linked: bool, problems: list[tuple[str, str]], visited: set[str], quiet: set[str]
) -> bool:
    """Whether to search ``folder``: not when its real path is in ``quiet`` (passed over without a
    word) or in ``visited`` (searched already, said in ``problems``); else it is marked visited."""
    real = os.path.realpath(folder)
    if real in quiet:
        return False
    if real in visited:
        what = "symbolic link to a folder" if linked else "folder"
        problems.append((str(folder), f"{what} searched already ({real}): not searched again"))
        return False
    visited.add(real)
    return True


def _walk(
    root: Path, found: list, problems: list[tuple[str, str]], visited: set[str], quiet: set[str]
) -> None:
    """Search ``root`` recursively (sorted): readable sources into ``found`` as (relative parts,
    path); every entry that is not read into ``problems`` with the reason. Folders behind symbolic
    links are searched after the real ones and each folder once (``visited`` holds real paths), so a
    link back up the tree ends. Hidden entries (name starting with '.') are listed, not searched;
    folders in ``quiet`` (real paths) are passed over without a word."""
    linked: list[Path] = []
    queue: list[Path] = [root]
    while queue or linked:
        if queue:
            folder = queue.pop()
        else:
            folder = linked.pop(0)
            if not _enter(folder, True, problems, visited, quiet):
                continue
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            problems.append((str(folder), f"cannot read folder: {e.strerror or e}"))
            continue
        subfolders = []
        for entry in entries:
            q = Path(entry.path)
            if entry.name.startswith("."):
                problems.append((str(q), "hidden (name starts with '.'): not searched"))
                continue
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir()  # follows links
                is_file = entry.is_file()
            except OSError as e:
                problems.append((str(q), f"cannot read: {e.strerror or e}"))
                continue
            if is_dir and is_link:
                linked.append(q)
            elif is_dir:
                if _enter(q, False, problems, visited, quiet):
                    subfolders.append(q)
            elif is_file:
                why = unreadable_reason(q)
                if why is None:
                    found.append((q.relative_to(root).parts, q))
                else:
                    problems.append((str(q), why))
            elif is_link:
                problems.append((str(q), _broken_link(q)))
            else:
                problems.append((str(q), "not a regular file or folder (a pipe, socket or device)"))
        queue.extend(reversed(subfolders))


def find_sources(
    paths: Sequence[str | Path], skip: Sequence[str | Path] = ()
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders into structure files, chain_set files and FASTA files.

    Folders are searched recursively in sorted (deterministic) order for files with a
    structure suffix (:data:`~coordformer.io.STRUCTURE_SUFFIXES`), chain_set files and files with
    a FASTA suffix (:data:`~coordformer.io.FASTA_SUFFIXES`), and for files with any other name
    (a CATH ``dompdb`` folder of extension-less files, ``model_1``) whose content is PDB or mmCIF
    text (plain or gzipped). Folders behind symbolic links are followed, each folder once.
    Everything else is named in the returned problems with the reason it is not read: hidden
    files and folders (not searched), broken symbolic links, folders that cannot be read,
    archives and other compressions than gzip (``.zip``, ``.tar.gz``, ``.bz2``, ...), and files
    of no recognised format. A file given explicitly is accepted on the same terms. Returns
    ``(sources, problems)``: problems lists ``(path, reason)``, also for missing paths and folders
    without any usable file. Duplicates are dropped (first occurrence kept). Folders in ``skip``
    (``prepare``'s output folder, which may sit inside a source folder) are passed over silently.
    """
    sources: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            sources.append(p)

    for given in paths:
        p = Path(given)
        if p.is_dir():
            found: list = []
            _walk(p, found, problems, {os.path.realpath(p)}, {os.path.realpath(d) for d in skip})
            if not found:
                problems.append(
                    (str(given), "folder contains no structure, chain_set or FASTA files")
                )
            for _, q in sorted(found):
                add(q)
        elif p.is_file():
            why = unreadable_reason(p)
            if why is None:
                add(p)
            else:
                problems.append((str(given), why))
        elif p.is_symlink():
            problems.append((str(given), _broken_link(p)))
        elif p.exists():
            problems.append((str(given), "not a regular file or folder"))
        else:
            problems.append((str(given), "no such file or directory"))
    return sources, problems


_ID_SPLIT_RE = re.compile(r"[\s,]+")


def read_id_list(path: str | Path) -> list[str]:
    """Chain ids from a text file (plain or gzipped), normalised with
    :func:`~coordformer.io.normalize_chain_id`: every whitespace- or comma-separated field of a
    line whose fields are all archive ids (``1ABC.A, 1LZH_B AF-P69905-F1``: a list written across),
    else the line's first field (a table row: ``1ABC-A<TAB>1.2.3.4``). A table's header row (the
    first row, of several fields, whose first is a column name, with no digit, '.' or '_', above
    rows that all start with archive ids) is skipped. Blank lines and '#' comments are ignored;
    duplicates are dropped (first occurrence kept).

    A UTF-8 byte-order mark is dropped and a UTF-16 file (with its byte-order mark, as Windows
    tools save "Unicode text") is decoded as such, so neither hides the first id.

    Raises StructureReadError if the file cannot be read.
    """
    src = str(path)
    try:
        data = read_bytes(path)
        text = (
            data.decode("utf-16")
            if data.startswith(UTF16_BOMS)
            else data.decode("utf-8", "replace")
        )
    except StructureReadError:
        raise
    except Exception as e:
        raise StructureReadError(src, f"cannot read id list: {short_reason(e)}") from None
    rows = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    rows = [[f for f in _ID_SPLIT_RE.split(line) if f] for line in rows if line]
    # a table's header row (DeepFRI's "PDB-chain,<30%,..."), which was read as an id: several
    # fields, the first a column name (no digit, no '.' or '_' as chain ids have), above rows
    # whose first fields are all archive ids. A real id (my_model.B) is never taken for one.
    if (
        len(rows) > 1
        and len(rows[0]) > 1
        and not re.search(r"[\d._]", rows[0][0])
        and all(_archive_chain_id(r[0]) for r in rows[1:])
    ):
        rows = rows[1:]
    seen: dict[str, None] = {}
    for fields in rows:
        if not all(_archive_chain_id(f) for f in fields):
            fields = fields[:1]
        for field in fields:
            seen.setdefault(normalize_chain_id(field), None)
    return list(seen)


def _archive_chain_id(field: str) -> bool:
    """Whether an id-list field names an archive entry or one of its chains (1ABC, 1abc_A,
    AF-P69905-F1.A), not another column's value (an EC number, a score)."""
    norm = normalize_chain_id(field)
    return is_archive_id(norm) or is_archive_id(norm.rpartition(".")[0])
