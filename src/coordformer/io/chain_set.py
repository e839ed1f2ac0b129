"""CATH-4.2 ``chain_set.jsonl`` reader / writer (the format of ProteinMPNN, ESM-IF, GVP).

One JSON object per line::

    {"name": "12AS.A", "seq": "AYIAK...",
     "coords": {"N": [[x, y, z], ...], "CA": [...], "C": [...], "O": [...]}, ...}

Missing atoms are ``null`` (or ``NaN``) and read as NaN. Extra keys are ignored on reading,
except the optional ``b_factors`` ([L] numbers / null) and ``residue_ids`` ([L] strings),
which this module also writes when a Chain has them. Files may be gzipped (detected from
the content, so a ``.gz`` suffix is not required).

No torch here: this runs in data-preparation workers.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from coordformer.constants import AMINO_ACIDS, BACKBONE_ATOMS
from coordformer.io.structures import (
    _GZIP_MAGIC,
    Chain,
    StructureReadError,
    _detect_format,
    _open_binary,
    _short,
    _strip_bom,
    is_structure_file,
    normalize_chain_id,
)

__all__ = [
    "iter_chain_set",
    "iter_chain_set_lines",
    "write_chain_set",
    "count_lines",
    "is_chain_set",
    "find_sources",
    "CHAIN_SET_SUFFIXES",
]

#: File name endings recognised as chain_set files (content is checked as well).
CHAIN_SET_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".json")

_N_ATOMS = len(BACKBONE_ATOMS)
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error)


def _clean_sequence(seq: str) -> str:
    """Upper-case; the 20 standard letters are kept, U->C, O->K, anything else -> X."""
    # non-ASCII letters go straight to X: str.upper() can lengthen them ('ß' -> 'SS'), and then
    # the sequence no longer matches the coordinates
    seq = seq.upper() if seq.isascii() else "".join(c.upper() if c.isascii() else "X" for c in seq)
    if all(c in AMINO_ACIDS for c in seq):
        return seq
    return "".join(c if c in AMINO_ACIDS else {"U": "C", "O": "K"}.get(c, "X") for c in seq)


# --------------------------------------------------------------------------- reading


def _atom_array(value, n: int, atom: str) -> np.ndarray:
    """[n, 3] float32 from a JSON list of [x, y, z] rows (rows or values may be null/NaN)."""
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, which is rejected below
        return _atom_array_unchecked(value, n, atom)


def _atom_array_unchecked(value, n: int, atom: str) -> np.ndarray:
    if value is None:
        return np.full((n, 3), np.nan, dtype=np.float32)
    if not isinstance(value, list):
        raise ValueError(f"coords.{atom} is not a list")
    if len(value) != n:
        raise ValueError(f"length mismatch: seq has {n} residues but coords.{atom} has {len(value)}")
    try:
        arr = np.array(value)
    except (ValueError, TypeError):
        arr = None  # ragged (null rows): slow path below
    if arr is not None and arr.dtype.kind in "fiu" and arr.shape == (n, 3):
        out = arr.astype(np.float32)
    else:
        out = np.full((n, 3), np.nan, dtype=np.float32)
        for i, row in enumerate(value):
            if row is None:
                continue
            if not isinstance(row, list) or len(row) != 3:
                raise ValueError(f"coords.{atom}[{i}] is not an [x, y, z] triple")
            for j, v in enumerate(row):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ValueError(f"coords.{atom}[{i}] has a non-numeric value {v!r}")
                out[i, j] = v
    if np.isinf(out).any():
        raise ValueError(f"coords.{atom} has an infinite or too large value")
    return out


def _record_to_chain(rec, source: str) -> Chain:
    if not isinstance(rec, dict):
        raise ValueError("record is not a JSON object")
    name = rec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("missing or invalid 'name'")
    seq = rec.get("seq")
    if not isinstance(seq, str) or not seq:
        raise ValueError("missing, empty or invalid 'seq'")
    n = len(seq)
    coords = rec.get("coords")
    if isinstance(coords, dict):
        if not any(atom in coords for atom in BACKBONE_ATOMS):
            raise ValueError(f"'coords' has none of the atoms {', '.join(BACKBONE_ATOMS)}")
        xyz = np.stack([_atom_array(coords.get(atom), n, atom) for atom in BACKBONE_ATOMS], axis=1)
    elif isinstance(coords, list):  # [L, 4, 3] nested list variant
        if len(coords) != n:
            raise ValueError(f"length mismatch: seq has {n} residues but coords has {len(coords)}")
        try:
            with np.errstate(over="ignore"):  # beyond float32 becomes inf, rejected below
                xyz = np.array(
                    [[[math.nan] * 3 if a is None else a for a in r] for r in coords], dtype=np.float32
                )
        except (ValueError, TypeError):
            raise ValueError("'coords' list is not an [L, 4, 3] array of numbers") from None
        if xyz.shape != (n, _N_ATOMS, 3):
            raise ValueError(f"'coords' has shape {xyz.shape}, expected ({n}, {_N_ATOMS}, 3)")
        if np.isinf(xyz).any():
            raise ValueError("'coords' has an infinite or too large value")
    else:
        raise ValueError("missing or invalid 'coords'")

    b_factors = None
    if rec.get("b_factors") is not None:
        b = rec["b_factors"]
        if not isinstance(b, list) or len(b) != n:
            raise ValueError("'b_factors' is not a list of one value per residue")
        try:
            with np.errstate(over="ignore"):  # beyond float32: no usable value, made NaN below
                b_factors = np.array([math.nan if v is None else v for v in b], dtype=np.float32)
        except (ValueError, TypeError):
            raise ValueError("'b_factors' has non-numeric values") from None
        b_factors[~np.isfinite(b_factors)] = np.nan  # an infinite B-factor (or pLDDT) means none
    residue_ids = None
    if rec.get("residue_ids") is not None:
        r = rec["residue_ids"]
        if not isinstance(r, list) or len(r) != n:
            raise ValueError("'residue_ids' is not a list of one id per residue")
        residue_ids = [str(v) for v in r]
    return Chain(
        id=normalize_chain_id(name),
        sequence=_clean_sequence(seq),
        coords=xyz,
        source=source,
        b_factors=b_factors,
        residue_ids=residue_ids,
    )


def _parse_line(line: bytes, source: str) -> Chain | StructureReadError:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        return StructureReadError(source, f"invalid JSON: {_short(e, 120)}")
    try:
        return _record_to_chain(rec, source)
    except (ValueError, TypeError) as e:
        return StructureReadError(source, _short(e))
    except Exception as e:  # never let anything else escape the iterator
        return StructureReadError(source, f"unexpected {type(e).__name__}: {_short(e)}")


class _CorruptData(Exception):
    """Raised by _lines() when compressed data ends early or is corrupt."""


def _gunzip_blocks(raw) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-member) gzip stream. Everything that decompresses is
    yielded before _CorruptData is raised for a truncated or damaged stream."""
    d = zlib.decompressobj(wbits=31)
    pending = False  # the current member has started but not finished
    while True:
        chunk = raw.read(1 << 16)
        if not chunk:
            break
        while chunk:
            pending = True
            try:
                out = d.decompress(chunk)
            except zlib.error as e:
                raise _CorruptData(f"corrupt compressed data ({e})") from None
            if out:
                yield out
            if d.eof:
                chunk = d.unused_data
                d = zlib.decompressobj(wbits=31)
                pending = False
            else:
                chunk = b""
    if pending:
        raise _CorruptData("truncated compressed data (end-of-stream marker missing)")


def _lines(path: str | Path) -> Iterator[bytes]:
    """Lines (with their newline) of a plain or gzipped file, the first without a UTF-8 byte-order
    mark. Opening errors raise StructureReadError; a truncated / corrupt gzip stream yields every
    complete line that precedes the damage, then raises _CorruptData (the partial line is dropped)."""
    lines = _raw_lines(path)
    try:
        first = next(lines, None)
        if first is None:
            return
        yield _strip_bom(first)
        yield from lines
    finally:
        lines.close()


def _raw_lines(path: str | Path) -> Iterator[bytes]:
    src = str(path)
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise StructureReadError(src, f"cannot open file: {e.strerror or e}") from None
    with raw:
        try:
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not gz:
                yield from raw
                return
            rest = b""
            for block in _gunzip_blocks(raw):
                parts = (rest + block).split(b"\n")
                rest = parts.pop()
                for part in parts:
                    yield part + b"\n"
            if rest:
                yield rest
        except OSError as e:
            raise _CorruptData(f"read error: {e.strerror or e}") from None


def _iter_lines(path: str | Path, start: int, stop: int | None) -> Iterator[Chain | StructureReadError]:
    src = str(path)
    lines = _lines(path)
    try:  # eager: a file that cannot be opened or decompressed at all raises now
        first = next(lines, None)
    except _CorruptData as e:
        raise StructureReadError(src, f"cannot read or decompress: {e}") from None

    def gen() -> Iterator[Chain | StructureReadError]:
        line = first
        index = 0
        try:
            while line is not None:
                if stop is not None and index >= stop:
                    return
                if index >= start and line.strip():
                    yield _parse_line(line, f"{src}:{index + 1}")
                index += 1
                try:
                    line = next(lines, None)
                except _CorruptData as e:
                    if stop is None or index < stop:
                        yield StructureReadError(f"{src}:{index + 1}", str(e))
                    return
        finally:
            lines.close()

    return gen()


def iter_chain_set(path: str | Path) -> Iterator[Chain | StructureReadError]:
    """Chains of a chain_set JSONL file (plain or gzipped), one per non-blank line.

    A bad line yields ``StructureReadError("path:lineno", reason)`` (1-based line number)
    and iteration continues; a file that cannot be opened or decompressed at all raises
    StructureReadError at call time. If a gzip stream is truncated part-way, the records
    before the damage are yielded, then one error record. Names are normalised with
    normalize_chain_id ('12as.A' -> '12AS.A'); null / NaN coordinates become NaN.
    """
    return _iter_lines(path, 0, None)


def iter_chain_set_lines(path: str | Path, start: int, stop: int) -> Iterator[Chain | StructureReadError]:
    """Like :func:`iter_chain_set`, restricted to lines with 0-based index in [start, stop)
    (blank lines count as lines; see :func:`count_lines`)."""
    if start < 0 or stop < start:
        raise ValueError(f"invalid line range [{start}, {stop})")
    return _iter_lines(path, start, stop)


def count_lines(path: str | Path) -> int:
    """Number of lines of a (possibly gzipped) text file, counting a final unterminated line.
    Raises StructureReadError if the file cannot be read or decompressed completely."""
    src = str(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            blocks = _gunzip_blocks(raw) if gz else iter(lambda: raw.read(1 << 20), b"")
            n, last = 0, b"\n"
            for block in blocks:
                n += block.count(b"\n")
                last = block[-1:]
    except OSError as e:
        raise StructureReadError(src, f"cannot open file: {e.strerror or e}") from None
    except _CorruptData as e:
        raise StructureReadError(src, f"cannot read or decompress: {e}") from None
    return n + (last != b"\n")


def is_chain_set(path: str | Path) -> bool:
    """True for a .jsonl / .jsonl.gz / .json.gz / .json file whose first non-blank line is a
    chain_set record (a JSON object with 'seq' and 'coords'). Never raises."""
    p = Path(path)
    if not p.name.lower().endswith(CHAIN_SET_SUFFIXES) or not p.is_file():
        return False
    lines = _lines(p)
    try:
        line = next(lines, b"")
        while line and not line.strip():
            line = next(lines, b"")
        rec = json.loads(line)
    except Exception:
        return False
    finally:
        lines.close()
    return isinstance(rec, dict) and "seq" in rec and "coords" in rec


# --------------------------------------------------------------------------- writing


def _rows(a: np.ndarray, decimals: int) -> list:
    """Nested lists rounded to ``decimals``; NaN entries become None (JSON null)."""
    a64 = np.round(a.astype(np.float64), decimals)
    out = a64.tolist()
    nan = np.isnan(a64)
    if nan.any():
        if a64.ndim == 1:
            for i in np.flatnonzero(nan):
                out[i] = None
        else:
            for i in np.flatnonzero(nan.any(axis=-1)):
                out[i] = [None if math.isnan(v) else v for v in out[i]]
    return out


def _chain_record(chain: Chain, decimals: int) -> dict:
    coords = np.asarray(chain.coords, dtype=np.float32)
    rec = {
        "name": chain.id,
        "seq": chain.sequence,
        "coords": {atom: _rows(coords[:, k], decimals) for k, atom in enumerate(BACKBONE_ATOMS)},
    }
    if chain.b_factors is not None:
        rec["b_factors"] = _rows(np.asarray(chain.b_factors, dtype=np.float32), 2)
    if chain.residue_ids is not None:
        rec["residue_ids"] = [str(r) for r in chain.residue_ids]
    return rec


def write_chain_set(chains: Iterable[Chain], path: str | Path, decimals: int = 3) -> int:
    """Write chains as chain_set JSONL (gzipped, reproducibly, if ``path`` ends with .gz).

    Coordinates are rounded to ``decimals`` (default 3, the precision of PDB files), NaN is
    written as null, and optional b_factors / residue_ids are included when present. The
    file is written to a temporary name and renamed, so a failure leaves no partial file.
    Returns the number of records written.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "wb") as raw:
            if path.name.lower().endswith(".gz"):
                fh = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            else:
                fh = raw
            try:
                for chain in chains:
                    line = json.dumps(_chain_record(chain, decimals), separators=(",", ":"), allow_nan=False)
                    fh.write(line.encode("utf-8"))
                    fh.write(b"\n")
                    n += 1
            finally:
                if fh is not raw:
                    fh.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return n


# --------------------------------------------------------------------------- discovery


#: Name endings of archives and compressions that are not read (only gzip is), with what they are.
_ARCHIVE_SUFFIXES = (
    (".tar.gz", "a tar archive"), (".tgz", "a tar archive"), (".tar.bz2", "a tar archive"),
    (".tar.xz", "a tar archive"), (".tar", "a tar archive"), (".zip", "a zip archive"), (".7z", "a 7-Zip archive"),
    (".rar", "a RAR archive"), (".bz2", "a bzip2-compressed file"), (".xz", "an xz-compressed file"),
    (".zst", "a zstd-compressed file"), (".lz4", "an lz4-compressed file"), (".z", "a compress (.Z) file"),
)
#: Leading bytes of the same, for files whose name does not say.
_ARCHIVE_MAGIC = (
    (b"PK\x03\x04", "a zip archive"), (b"BZh", "a bzip2-compressed file"), (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
)
_NOT_READ = "not read: only plain and gzip-compressed files are; unpack it first"


def _sniff(path: Path) -> str | None:
    """Content check for a file whose name has no known ending: None if it reads as PDB / mmCIF
    text (plain or gzipped), else why it is not read."""
    try:
        with open(path, "rb") as raw:
            magic = raw.read(8)
    except OSError as e:
        return f"cannot open file: {e.strerror or e}"
    for head, what in _ARCHIVE_MAGIC:
        if magic.startswith(head):
            return f"{what}, {_NOT_READ}"
    try:
        fh = _open_binary(path)
        with fh:
            head = fh.read(1 << 16)
    except StructureReadError as e:
        return e.reason
    except _DECOMPRESS_ERRORS as e:
        return f"corrupt or truncated gzip data ({e})"
    head = _strip_bom(head)
    if not head.strip():
        return "empty file"
    if head[:262].find(b"ustar", 257) >= 0:
        return f"a tar archive, {_NOT_READ}"
    if b"\x00" in head:
        return "binary data, not a PDB/mmCIF structure, chain_set JSONL or FASTA file"
    if _detect_format(path.name, head) is None:
        return ("not a PDB/mmCIF structure, chain_set JSONL or FASTA file (its name has no known ending and its "
                "content is neither PDB nor mmCIF)")
    return None


def _sniff_structure(path: Path) -> bool:
    """Content check for an explicitly given file whose name has no known suffix."""
    return _sniff(path) is None


def _classify(path: Path) -> str | None:
    """None if ``path`` (a regular file) is read as a source, else why not."""
    from coordformer.io.fasta import is_fasta  # fasta imports this module

    if is_structure_file(path) or is_fasta(path) or is_chain_set(path):
        return None
    name = path.name.lower()
    for suffix, what in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return f"{what}, {_NOT_READ}"
    why = _sniff(path)
    if why is not None and name.endswith(CHAIN_SET_SUFFIXES) and not why.startswith(("cannot", "empty", "corrupt")):
        return "a JSON file that is not chain_set JSONL (its first record has no 'seq' and 'coords')"
    return why


def _broken_link(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"broken symbolic link: its target {target} does not exist (or the link points to itself)"


def _walk(root: Path, found: list, problems: list[tuple[str, str]], visited: set[str], quiet: set[str]) -> None:
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
            real = os.path.realpath(folder)
            if real in quiet:
                continue
            if real in visited:
                problems.append((str(folder), f"symbolic link to a folder searched already ({real}): not searched again"))
                continue
            visited.add(real)
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
                real = os.path.realpath(q)
                if real in quiet:
                    continue
                if real in visited:
                    problems.append((str(q), f"folder searched already ({real}): not searched again"))
                    continue
                visited.add(real)
                subfolders.append(q)
            elif is_file:
                why = _classify(q)
                if why is None:
                    found.append((q.relative_to(root).parts, q))
                else:
                    problems.append((str(q), why))
            elif is_link:
                problems.append((str(q), _broken_link(q)))
            else:
                problems.append((str(q), "not a regular file or folder (a pipe, socket or device)"))
        queue.extend(reversed(subfolders))


def find_sources(paths: Sequence[str | Path], skip: Sequence[str | Path] = ()) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand files and folders into structure files, chain_set files and FASTA files.

    Folders are searched recursively in sorted (deterministic) order for files with a
    structure suffix (:data:`STRUCTURE_SUFFIXES`), chain_set files and files with a FASTA
    suffix (:data:`~coordformer.io.fasta.FASTA_SUFFIXES`), and for files with any other name
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
                problems.append((str(given), "folder contains no structure, chain_set or FASTA files"))
            for _, q in sorted(found):
                add(q)
        elif p.is_file():
            why = _classify(p)
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
