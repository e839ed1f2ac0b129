"""File opening and format detection for every reader: plain or gzipped bytes and lines, the
byte-order mark, file-name endings, PDB vs mmCIF vs chain_set JSONL vs FASTA, and the reason a
file is not read at all (archives, other compressions, binary data).

Builds on :mod:`coordformer.io.chains` only; the readers build on this.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

from coordformer.io.chains import StructureReadError, is_pdb_id

__all__ = [
    "STRUCTURE_SUFFIXES",
    "CHAIN_SET_SUFFIXES",
    "FASTA_SUFFIXES",
    "GZIP_MAGIC",
    "UTF16_BOMS",
    "CorruptData",
    "is_structure_file",
    "is_fasta",
    "is_chain_set",
    "open_binary",
    "strip_bom",
    "read_bytes",
    "gunzip_blocks",
    "text_lines",
    "count_lines",
    "detect_format",
    "file_stem",
    "unreadable_reason",
]

#: File name endings read by :func:`~coordformer.io.read_structure` (also used when expanding
#: folders).
STRUCTURE_SUFFIXES = (
    ".pdb",
    ".ent",
    ".cif",
    ".mmcif",
    ".pdb.gz",
    ".ent.gz",
    ".cif.gz",
    ".mmcif.gz",
)
_PDB_SUFFIXES = (".pdb", ".ent")
_CIF_SUFFIXES = (".cif", ".mmcif")
#: File name endings recognised as chain_set files (content is checked as well).
CHAIN_SET_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".json")
#: File name endings recognised as FASTA (case-insensitive).
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fasta.gz", ".fa.gz", ".faa.gz")

GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
#: Byte-order marks of UTF-16 text (Windows tools save "Unicode text" so).
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error)

_PDB_RECORD_RE = re.compile(
    rb"(?:^|\n)(?:ATOM  |HETATM|HEADER|MODEL |CRYST1|SEQRES|COMPND|TITLE |REMARK)"
)
_CIF_START_RE = re.compile(rb"(?:[ \t\r\n]+|#[^\n]*(?:\n|$))*data_", re.IGNORECASE)


class CorruptData(Exception):
    """Raised by :func:`text_lines` / :func:`gunzip_blocks` when compressed data ends early or is
    corrupt (after everything before the damage has been handed out)."""


# --------------------------------------------------------------------------- names


def is_structure_file(path: str | Path) -> bool:
    """True if the file name ends with one of :data:`STRUCTURE_SUFFIXES` (case-insensitive)."""
    return Path(path).name.lower().endswith(STRUCTURE_SUFFIXES)


def is_fasta(path: str | Path) -> bool:
    """True if the file name ends with one of :data:`FASTA_SUFFIXES` (the content is not read)."""
    return Path(path).name.lower().endswith(FASTA_SUFFIXES)


def _strip_gz(name: str) -> str:
    name = name.lower()
    return name[:-3] if name.endswith(".gz") else name


def file_stem(path: str | Path) -> str:
    """The file name without its structure endings (``.pdb``, ``.cif.gz``, assemblies' ``.pdb1``,
    ...); the PDB archive's
    ``pdb1abc.ent.gz`` gives ``1abc`` (so ``--exclude 1ABC-A`` matches)."""
    name = Path(path).name
    lower = name.lower()
    if lower.endswith(".gz"):
        name, lower = name[:-3], lower[:-3]
    for suffix in (".pdb", ".ent", ".cif", ".mmcif"):
        if lower.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:  # a biological-assembly file: 1abc.pdb1 is entry 1abc
        assembly = re.search(r"\.pdb\d+$", lower)
        if assembly:
            name = name[: assembly.start()]
    if len(name) == 7 and name[:3].lower() == "pdb" and is_pdb_id(name[3:]):
        return name[3:]
    return name


# --------------------------------------------------------------------------- bytes


def open_binary(path: str | Path) -> BinaryIO:
    """Open a file for binary reading, transparently gunzipping it if it starts with the
    gzip magic bytes (whatever its name). Raises StructureReadError if it cannot be opened."""
    src = str(path)
    try:
        raw = open(path, "rb")
        try:
            magic = raw.read(2)
            if magic == GZIP_MAGIC:
                raw.close()
                return gzip.open(path, "rb")
            raw.seek(0)
        except BaseException:
            raw.close()
            raise
    except OSError as e:
        raise StructureReadError(src, f"cannot open file: {e.strerror or e}") from None
    return raw


def strip_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark (Windows editors write one; it would hide
    the first record or id)."""
    return data[3:] if data.startswith(_UTF8_BOM) else data


def read_bytes(path: str | Path) -> bytes:
    """Whole (decompressed) content of a file, without a leading UTF-8 byte-order mark (every text
    reader goes through this or :func:`strip_bom`); errors become StructureReadError."""
    src = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as e:
        raise StructureReadError(src, f"cannot read file: {e.strerror or e}") from None
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except _DECOMPRESS_ERRORS as e:
            raise StructureReadError(src, f"corrupt or truncated gzip data ({e})") from None
    return strip_bom(data)


# --------------------------------------------------------------------------- lines


def gunzip_blocks(raw) -> Iterator[bytes]:
    """Decompressed blocks of a (multi-member) gzip stream read from the binary file ``raw``.
    Everything that decompresses is yielded before CorruptData is raised for a truncated or
    damaged stream."""
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
                raise CorruptData(f"corrupt compressed data ({e})") from None
            if out:
                yield out
            if d.eof:
                chunk = d.unused_data
                d = zlib.decompressobj(wbits=31)
                pending = False
            else:
                chunk = b""
    if pending:
        raise CorruptData("truncated compressed data (end-of-stream marker missing)")


def text_lines(path: str | Path) -> Iterator[bytes]:
    """Lines (with their newline) of a plain or gzipped file, the first without a UTF-8 byte-order
    mark. Opening errors raise StructureReadError; a truncated / corrupt gzip stream yields every
    complete line that precedes the damage, then raises CorruptData (the partial line is
    dropped)."""
    lines = _raw_lines(path)
    try:
        first = next(lines, None)
        if first is None:
            return
        yield strip_bom(first)
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
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if not gz:
                yield from raw
                return
            rest = b""
            for block in gunzip_blocks(raw):
                parts = (rest + block).split(b"\n")
                rest = parts.pop()
                for part in parts:
                    yield part + b"\n"
            if rest:
                yield rest
        except OSError as e:
            raise CorruptData(f"read error: {e.strerror or e}") from None


def count_lines(path: str | Path) -> int:
    """Number of lines of a (possibly gzipped) text file, counting a final unterminated line.
    Raises StructureReadError if the file cannot be read or decompressed completely."""
    src = str(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            blocks = gunzip_blocks(raw) if gz else iter(lambda: raw.read(1 << 20), b"")
            n, last = 0, b"\n"
            for block in blocks:
                n += block.count(b"\n")
                last = block[-1:]
    except OSError as e:
        raise StructureReadError(src, f"cannot open file: {e.strerror or e}") from None
    except CorruptData as e:
        raise StructureReadError(src, f"cannot read or decompress: {e}") from None
    return n + (last != b"\n")


# --------------------------------------------------------------------------- formats


def detect_format(name: str, data: bytes) -> str | None:
    """'pdb' or 'cif' from the file name, overridden by unambiguous content; None if unknown."""
    base = _strip_gz(name)
    by_suffix = (
        "pdb" if base.endswith(_PDB_SUFFIXES) else "cif" if base.endswith(_CIF_SUFFIXES) else None
    )
    if _CIF_START_RE.match(data):
        return "cif"
    if by_suffix == "pdb":
        return "pdb"
    looks_pdb = _PDB_RECORD_RE.search(data, 0, 200_000) is not None
    if looks_pdb:  # also for a .cif name with PDB content
        return "pdb"
    return by_suffix


#: Non-blank lines is_chain_set reads at most to find a record that parses.
_CHAIN_SET_PROBE_LINES = 8


def is_chain_set(path: str | Path) -> bool:
    """True for a .jsonl / .jsonl.gz / .json.gz / .json file whose first line that parses as JSON
    (among its first few non-blank lines) is a chain_set record (a JSON object with 'seq' and
    'coords'): a broken first record is the reader's to log, and must not lose the file's other
    records. Never raises."""
    p = Path(path)
    if not p.name.lower().endswith(CHAIN_SET_SUFFIXES) or not p.is_file():
        return False
    try:
        lines = text_lines(p)
    except Exception:
        return False
    try:
        probed = 0
        for line in lines:
            if not line.strip():
                continue
            probed += 1
            try:
                rec = json.loads(line)
            except ValueError:
                if probed >= _CHAIN_SET_PROBE_LINES:
                    return False
                continue
            return isinstance(rec, dict) and "seq" in rec and "coords" in rec
        return False
    except Exception:
        return False
    finally:
        lines.close()


#: Name endings of archives and compressions that are not read (only gzip is), with what they are.
_ARCHIVE_SUFFIXES = (
    (".tar.gz", "a tar archive"),
    (".tgz", "a tar archive"),
    (".tar.bz2", "a tar archive"),
    (".tar.xz", "a tar archive"),
    (".tar", "a tar archive"),
    (".zip", "a zip archive"),
    (".7z", "a 7-Zip archive"),
    (".rar", "a RAR archive"),
    (".bz2", "a bzip2-compressed file"),
    (".xz", "an xz-compressed file"),
    (".zst", "a zstd-compressed file"),
    (".lz4", "an lz4-compressed file"),
    (".z", "a compress (.Z) file"),
)
#: Leading bytes of the same, for files whose name does not say.
_ARCHIVE_MAGIC = (
    (b"PK\x03\x04", "a zip archive"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
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
        fh = open_binary(path)
        with fh:
            head = fh.read(1 << 16)
    except StructureReadError as e:
        return e.reason
    except _DECOMPRESS_ERRORS as e:
        return f"corrupt or truncated gzip data ({e})"
    head = strip_bom(head)
    if not head.strip():
        return "empty file"
    if head[:262].find(b"ustar", 257) >= 0:
        return f"a tar archive, {_NOT_READ}"
    if b"\x00" in head:
        return "binary data, not a PDB/mmCIF structure, chain_set JSONL or FASTA file"
    if detect_format(path.name, head) is None:
        return (
            "not a PDB/mmCIF structure, chain_set JSONL or FASTA file "
            "(its name has no known ending and its content is neither PDB nor mmCIF)"
        )
    return None


def unreadable_reason(path: Path) -> str | None:
    """None if ``path`` (a regular file) is read as a source (structure, chain_set or FASTA file,
    by name, or PDB / mmCIF text by content), else why not."""
    if is_structure_file(path) or is_fasta(path) or is_chain_set(path):
        return None
    name = path.name.lower()
    for suffix, what in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return f"{what}, {_NOT_READ}"
    why = _sniff(path)
    if (
        why is not None
        and name.endswith(CHAIN_SET_SUFFIXES)
        and not why.startswith(("cannot", "empty", "corrupt"))
    ):
        return (
            "a JSON file that is not chain_set JSONL (its first record has no 'seq' and 'coords')"
        )
    return why
