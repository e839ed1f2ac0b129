"""CATH-4.2 ``chain_set.jsonl`` reader / writer (the format of ProteinMPNN, ESM-IF, GVP).

One JSON object per line::

    {"name": "12AS.A", "seq": "AYIAK...",
     "coords": {"N": [[x, y, z], ...], "CA": [...], "C": [...], "O": [...]}, ...}

Missing atoms are ``null`` (or ``NaN``) and read as NaN. Extra keys are ignored on reading,
except the optional ``b_factors`` ([L] numbers / null), ``residue_ids`` ([L] strings) and
``experimental_method`` (a string such as "X-RAY DIFFRACTION": the B-factors are then not pLDDT),
which this module also writes when a Chain has them. Files may be gzipped (detected from
the content, so a ``.gz`` suffix is not required).

No torch here: this runs in data-preparation workers.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from coordformer.alphabet import normalize_sequence
from coordformer.constants import BACKBONE_ATOMS
from coordformer.io.chains import Chain, StructureReadError, normalize_chain_id, short_reason
from coordformer.io.files import (
    CHAIN_SET_SUFFIXES,
    CorruptData,
    count_lines,
    is_chain_set,
    text_lines,
)
from coordformer.io.sources import find_sources  # noqa: F401 - importable from here before the io split

__all__ = [
    "iter_chain_set",
    "iter_chain_set_lines",
    "write_chain_set",
    "count_lines",
    "is_chain_set",
    "find_sources",
    "CHAIN_SET_SUFFIXES",
]

_N_ATOMS = len(BACKBONE_ATOMS)


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
        raise ValueError(
            f"length mismatch: seq has {n} residues but coords.{atom} has {len(value)}"
        )
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
                    [[[math.nan] * 3 if a is None else a for a in r] for r in coords],
                    dtype=np.float32,
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
    method = rec.get("experimental_method")
    if method is not None and not isinstance(method, str):
        raise ValueError("'experimental_method' is not a string")
    return Chain(
        id=normalize_chain_id(name),
        sequence=normalize_sequence(seq),
        coords=xyz,
        source=source,
        b_factors=b_factors,
        residue_ids=residue_ids,
        experimental_method=method or None,
    )


def _parse_line(line: bytes, source: str) -> Chain | StructureReadError:
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        return StructureReadError(source, f"invalid JSON: {short_reason(e, 120)}")
    try:
        return _record_to_chain(rec, source)
    except (ValueError, TypeError) as e:
        return StructureReadError(source, short_reason(e))
    except Exception as e:  # never let anything else escape the iterator
        return StructureReadError(source, f"unexpected {type(e).__name__}: {short_reason(e)}")


def _iter_lines(
    path: str | Path, start: int, stop: int | None
) -> Iterator[Chain | StructureReadError]:
    src = str(path)
    lines = text_lines(path)
    try:  # eager: a file that cannot be opened or decompressed at all raises now
        first = next(lines, None)
    except CorruptData as e:
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
                except CorruptData as e:
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


def iter_chain_set_lines(
    path: str | Path, start: int, stop: int
) -> Iterator[Chain | StructureReadError]:
    """Like :func:`iter_chain_set`, restricted to lines with 0-based index in [start, stop)
    (blank lines count as lines; see :func:`count_lines`)."""
    if start < 0 or stop < start:
        raise ValueError(f"invalid line range [{start}, {stop})")
    return _iter_lines(path, start, stop)


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
    if chain.experimental_method:
        rec["experimental_method"] = chain.experimental_method
    return rec


def write_chain_set(chains: Iterable[Chain], path: str | Path, decimals: int = 3) -> int:
    """Write chains as chain_set JSONL (gzipped, reproducibly, if ``path`` ends with .gz).

    Coordinates are rounded to ``decimals`` (default 3, the precision of PDB files), NaN is
    written as null, and optional b_factors / residue_ids / experimental_method are included when
    present. The
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
                    line = json.dumps(
                        _chain_record(chain, decimals), separators=(",", ":"), allow_nan=False
                    )
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
