"""Turn structure files / chain_set JSONL files / FASTA files into a prepared, memory-mappable dataset.

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

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ... import __version__
from ...config import ConfigError, PrepareConfig
from ...constants import AMINO_ACIDS, BACKBONE_ATOMS, CA_INDEX, DATASET_FORMAT_VERSION, SEQRES_MODES
from ...errors import CoordformerError
from .. import splits as _splits
from .. import store
from ..sanitize import sanitize_coords

#: Records per work unit for chain_set JSONL files.
DEFAULT_CHUNK_LINES = 500
#: A gzipped chain_set file is split into at most this many units: a unit has to decompress
#: the file from its start up to its own lines, so many small units would cost O(n^2).
GZIP_MAX_UNITS = 16

# Filter categories: keys of manifest["counts"]["chains_filtered"] and the first words of the
# reason column of skipped.tsv.
TOO_SHORT = "too short"
TOO_LONG = "too long"
MISSING_CA = "missing CA"
BAD_COORDS = "bad coordinates"
NO_ID = "missing id"
DUPLICATE = "duplicate id"

_PART_SUFFIX = ".npz"
#: The protein chains read_structure names when none of the requested ones is there.
_PROTEIN_CHAINS_RE = re.compile(r"\(protein chains: ([^)]*)\)")
#: Near misses of --exclude ids logged one per line (the rest: exclude_unmatched.txt).
_MAX_LOGGED = 20


class PrepareError(CoordformerError, RuntimeError):
    """prepare() cannot run as asked (existing dataset, mismatched interrupted run, no inputs)."""


# ----------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------


@dataclass
class PrepareSummary:
    out_dir: str
    n_sources: int = 0
    n_units: int = 0
    units_resumed: int = 0
    chains_read: int = 0
    chains_kept: int = 0
    n_residues: int = 0
    inputs_skipped: int = 0
    chains_filtered: dict[str, int] = field(default_factory=dict)
    excluded_ids_found: int = 0
    excluded_ids_listed: int = 0
    #: listed ids matching no chain exactly (all in exclude_unmatched.txt), and of those the near
    #: misses excluded in their place, as "LISTED -> CHAIN (how)"
    excluded_ids_unmatched: int = 0
    excluded_near_misses: list[str] = field(default_factory=list)
    #: structure files whose own entry name (mmCIF block name / HEADER id) is not an archive id, so
    #: their chains are named after the file; and files renamed because another file used their
    #: entry id for a different chain
    files_generic_entry: int = 0
    files_renamed: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    n_clusters: int | None = None
    #: With PrepareConfig.seqres: unobserved residues put back, chains that got any, and kept
    #: structure-file chains left as modelled for want of a usable deposited sequence.
    seqres_residues_inserted: int = 0
    seqres_chains_filled: int = 0
    seqres_unavailable: list[str] = field(default_factory=list)
    seqres_mode: str = "off"
    #: kept chains whose every present coordinate is exactly 0 (a placeholder, not a structure)
    chains_zero_coords: int = 0
    zero_coords_examples: list[str] = field(default_factory=list)
    #: with PrepareConfig.chains: the requested author chain ids that no input has
    chains_not_found: list[str] = field(default_factory=list)
    #: splits that came out empty although their fraction is above 0
    empty_splits: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def n_skipped(self) -> int:
        """Rows of skipped.tsv: skipped inputs plus filtered chains."""
        return self.inputs_skipped + sum(self.chains_filtered.values())

    def format(self) -> str:
        filt = ", ".join(f"{k}: {v}" for k, v in sorted(self.chains_filtered.items())) or "none"
        spl = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        lines = [
            f"prepared dataset: {self.out_dir}",
            f"  sources: {self.n_sources} ({self.n_units} work units, {self.units_resumed} resumed from an interrupted run)",
            f"  chains read: {self.chains_read}; kept: {self.chains_kept} ({self.n_residues} residues)",
            f"  inputs skipped (unreadable files/records): {self.inputs_skipped}",
            f"  chains filtered: {filt}",
            f"  splits: {spl}" + (f" ({self.n_clusters} sequence clusters)" if self.n_clusters is not None else ""),
            f"  excluded ids found (forced to test): {self.excluded_ids_found} of {self.excluded_ids_listed} listed"
            + (f"; {self.excluded_ids_unmatched} match no chain exactly (see {store.EXCLUDE_UNMATCHED_FILE}), "
               f"{len(self.excluded_near_misses)} of them excluded as near misses" if self.excluded_ids_unmatched else ""),
        ]
        if self.files_generic_entry or self.files_renamed:
            lines.append(f"  ids from file names: {self.files_generic_entry} files with a generic block name / HEADER id, "
                         f"{self.files_renamed} files whose entry id another file uses for a different chain")
        if self.seqres_mode != "off":
            n_un = len(self.seqres_unavailable)
            eg = f" (e.g. {', '.join(self.seqres_unavailable[:3])})" if n_un else ""
            lines.append(f"  seqres ({self.seqres_mode}): {self.seqres_residues_inserted} unobserved residues put back in "
                         f"{self.seqres_chains_filled} chains; {n_un} chains without a usable deposited sequence, "
                         f"kept as modelled{eg}")
        if self.chains_not_found:
            lines.append(f"  WARNING: --chains {', '.join(self.chains_not_found)}: no input has a protein chain with "
                         f"{'this author id' if len(self.chains_not_found) == 1 else 'these author ids'}")
        if not self.chains_kept:
            lines.append("  WARNING: no chain passed, so the dataset is empty (skipped.tsv says why each input was dropped)")
        elif self.empty_splits:
            lines.append(f"  WARNING: the {' and '.join(self.empty_splits)} split{'s are' if len(self.empty_splits) > 1 else ' is'} "
                         f"empty: {self.chains_kept} chains are too few for the fractions asked; commands that use "
                         f"{'them' if len(self.empty_splits) > 1 else 'it'} (pretrain validation, evaluate --split) get no chains")
        if self.chains_zero_coords:
            lines.append(f"  WARNING: {self.chains_zero_coords} kept chains have every coordinate at (0, 0, 0), a placeholder "
                         f"rather than a structure (e.g. {', '.join(self.zero_coords_examples[:3])}); a coordinate model "
                         "sees them as one point")
        lines += [
            f"  elapsed: {self.elapsed_s:.1f} s",
        ]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# per-unit work (runs in worker processes)
# ----------------------------------------------------------------------------------------------


def _unit_key(kind: str, path: str, start: int = 0, stop: int = 0) -> str:
    return hashlib.sha256(json.dumps([kind, path, start, stop]).encode()).hexdigest()[:24]


_TO_END = 2**62  # "stop" of a chain_set unit whose line count is unknown


def _unit_label(unit: dict) -> str:
    if unit["kind"] == "chain_set":
        stop = "end" if unit["stop"] >= _TO_END else unit["stop"]
        return f"{unit['path']}:lines {unit['start'] + 1}-{stop}"
    return unit["path"]


_ASCII_TABLE = np.frombuffer(
    bytes(ord(chr(b).upper()) if chr(b).upper() in AMINO_ACIDS else ord("X") for b in range(256)), dtype=np.uint8
)


def _seq_to_bytes(seq: str) -> np.ndarray:
    """The 20 standard one-letter codes (upper-cased); anything else becomes X."""
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    return _ASCII_TABLE[raw]


def check_chain(chain: Any, filters: dict[str, Any]) -> tuple[str, str] | tuple[np.ndarray, np.ndarray]:
    """Validate/filter one chain: ``(category, detail)`` if rejected, else ``(seq uint8 [L], coords float32 [L, 4, 3])``.

    Coordinates go through ``sanitize_coords`` (non-finite atoms become missing; a chain beyond
    ``MAX_ABS_COORD`` is rejected as ``BAD_COORDS``) before the max-missing-CA filter. With
    ``filters["plddt_min"]`` set, residues whose ``chain.b_factors`` value (pLDDT, see
    :func:`low_plddt`) is below it become missing too, also before that filter; chains without
    B-factors (FASTA, chain_set records without ``b_factors``) are left as they are.
    """
    seq = chain.sequence if isinstance(chain.sequence, str) else str(chain.sequence or "")
    n = len(seq)
    try:
        raw = np.asarray(chain.coords, dtype=np.float64)
    except (TypeError, ValueError) as e:
        return BAD_COORDS, f"coordinates are not numeric ({e})"
    shape = (n, len(BACKBONE_ATOMS), 3)
    if raw.shape != shape:
        return BAD_COORDS, f"coordinate array shape {raw.shape} does not match sequence length ({shape})"
    if n < filters["min_length"]:
        return TOO_SHORT, f"{n} residues < min_length {filters['min_length']}"
    if n > filters["max_length"]:
        return TOO_LONG, f"{n} residues > max_length {filters['max_length']}"
    coords, why = sanitize_coords(raw)
    if why:
        return BAD_COORDS, why
    note = ""
    if filters.get("plddt_min") is not None:
        b = getattr(chain, "b_factors", None)
        if b is not None:
            try:
                b = np.asarray(b, dtype=np.float64)
            except (TypeError, ValueError) as e:
                return BAD_COORDS, f"b_factors are not numeric ({e})"
            if b.shape != (n,):
                return BAD_COORDS, f"b_factors shape {b.shape} does not match sequence length ({n},)"
            low = low_plddt(b, filters["plddt_min"])
            if low.any():
                coords[low] = np.nan
                note = f" ({int(low.sum())} residues below plddt_min {filters['plddt_min']:g})"
    # after sanitising and pLDDT masking: atoms made missing either way count against max_missing_ca too
    frac = float(np.isnan(coords[:, CA_INDEX, 0]).mean()) if n else 1.0
    if frac > filters["max_missing_ca"]:
        return MISSING_CA, f"{frac:.0%} of residues lack CA > max_missing_ca {filters['max_missing_ca']:.0%}{note}"
    return _seq_to_bytes(seq), coords


def low_plddt(b_factors: np.ndarray, plddt_min: float) -> np.ndarray:
    """[L] bool: residues whose B-factor, read as pLDDT, is below ``plddt_min`` (0..100).

    AlphaFold DB files store pLDDT as 0-100, but some ESMFold outputs store 0-1: a chain whose
    finite B-factors all lie in [0, 1] is read as 0-1 and scaled by 100 when ``plddt_min > 1``
    (with ``plddt_min <= 1`` the values are compared as they are). Residues with no B-factor
    (NaN: no CA in the file) are never flagged.
    """
    b = np.asarray(b_factors, dtype=np.float64)
    finite = np.isfinite(b)
    if plddt_min > 1:
        b = _plddt_percent(b)
    # B-factors arrive as float32 (0.7 -> 0.69999999): rounding back to the file's few decimals keeps a
    # value written exactly at the threshold from counting as below it
    return finite & (np.round(b, 4) < plddt_min)


def plddt_values(chain: Any) -> np.ndarray:
    """float32 [L] pLDDT (0-100) of a chain from its B-factors (0-1 files scaled as in
    :func:`low_plddt`); NaN where unknown, all NaN for chains without usable B-factors."""
    n = len(chain.sequence)
    b = getattr(chain, "b_factors", None)
    try:
        b = np.asarray(b, dtype=np.float64) if b is not None else None
    except (TypeError, ValueError):
        b = None
    if b is None or b.shape != (n,):
        return np.full(n, np.nan, dtype=np.float32)
    return _plddt_percent(np.where(np.isfinite(b), b, np.nan)).astype(np.float32)


def _plddt_percent(b: np.ndarray) -> np.ndarray:
    """B-factors read as pLDDT on the 0-100 scale: a chain whose finite values all lie in [0, 1]
    (some ESMFold outputs) is scaled by 100, any other is returned as it is."""
    finite = np.isfinite(b)
    if finite.any() and b[finite].min() >= 0 and b[finite].max() <= 1:
        return b * 100.0
    return b


def _input_row(error: BaseException, path: str) -> list[str]:
    """A skip-log row for an unreadable input: the error's own source (file or file:line) and reason."""
    return ["input", str(getattr(error, "source", None) or path), str(getattr(error, "reason", None) or error)]


def selected_chain(chain_id: str, chains: Sequence[str]) -> bool:
    """Whether a chain id ``ENTRY.CHAIN`` (or a bare id) names one of the author chain ids ``chains``."""
    return str(chain_id).rsplit(".", 1)[-1] in chains


def _read_unit_chains(unit: dict, skipped: list[list[str]], wanted: Sequence[str] = (), seqres: str = "off") -> list[Any]:
    """Read a unit's chains (only the author chain ids ``wanted`` when given; structure files with
    ``read_structure``'s ``seqres`` mode); unreadable files and records, and structure files without
    any of ``wanted``, are appended to ``skipped`` as input rows."""
    from ...io import StructureReadError, iter_chain_set_lines, iter_fasta, read_structure

    if wanted and unit["kind"] != "file":
        return [c for c in _read_unit_chains(unit, skipped) if selected_chain(getattr(c, "id", ""), wanted)]
    path = unit["path"]
    if unit["kind"] in ("file", "fasta"):  # one whole file; a FASTA file may also yield bad records
        try:
            if unit["kind"] == "file":
                items = read_structure(path, chains=list(wanted) or None, seqres=seqres)
            else:
                items = list(iter_fasta(path))
        except StructureReadError as e:
            skipped.append(_input_row(e, path))
            return []
        except Exception as e:  # noqa: BLE001 - bad input must never stop the run
            skipped.append(["input", path, f"unexpected error: {type(e).__name__}: {e}"])
            return []
        chains = []
        for item in items:
            if isinstance(item, BaseException):
                skipped.append(_input_row(item, path))
            else:
                chains.append(item)
        if not chains and unit["kind"] == "file":
            skipped.append(["input", path, "no protein chains found"])
        return chains

    def read_range(start: int, stop: int, out_chains: list, out_skipped: list) -> None:
        for item in iter_chain_set_lines(path, start, stop):
            if isinstance(item, StructureReadError):
                out_skipped.append(_input_row(item, path))
            elif isinstance(item, BaseException):
                out_skipped.append(["input", path, f"unexpected error: {type(item).__name__}: {item}"])
            else:
                out_chains.append(item)

    chains: list[Any] = []
    local_skipped: list[list[str]] = []
    try:
        read_range(unit["start"], unit["stop"], chains, local_skipped)
    except StructureReadError as e:  # the file itself cannot be read (any more)
        skipped.append(["input", _unit_label(unit), str(getattr(e, "reason", None) or e)])
        return []
    except Exception:  # noqa: BLE001 - reader broke mid-chunk: redo it record by record
        chains, local_skipped = [], []
        for line in range(unit["start"], min(unit["stop"], unit["start"] + 100_000)):
            c1: list[Any] = []
            s1: list[list[str]] = []
            try:
                read_range(line, line + 1, c1, s1)
            except Exception as e:  # noqa: BLE001
                if isinstance(e, StructureReadError):
                    local_skipped.append(["input", f"{path}:{line + 1}", str(getattr(e, "reason", None) or e)])
                    continue
                local_skipped.append(["input", f"{path}:{line + 1}", f"unexpected error: {type(e).__name__}: {e}"])
            chains.extend(c1)
            local_skipped.extend(s1)
    skipped.extend(local_skipped)
    return chains


def process_unit(unit: dict, filters: dict[str, Any]) -> dict[str, Any]:
    """Read and filter one unit; returns arrays plus a JSON-able ``meta`` dict."""
    skipped: list[list[str]] = []  # [kind ("input" | filter category), input, reason]
    seqres = filters.get("seqres", "off")
    chains = _read_unit_chains(unit, skipped, filters.get("chains", ()), seqres)
    if unit["kind"] == "fasta":  # sequence-only by choice: see the module docstring
        filters = {**filters, "max_missing_ca": 1.0}
    seqs, coords, lengths, ids, sources, plddts, digests = [], [], [], [], [], [], []
    inserted: list[int] = []  # per kept chain: unobserved residues put back; -1 = no usable deposited sequence
    zero: list[int] = []  # indices (among kept chains) of chains whose every present coordinate is 0
    for chain in chains:
        try:
            cid = "_".join(str(chain.id or "").split())
            src = str(getattr(chain, "source", None) or unit["path"])
            label = f"{cid or '?'} [{src}]"
            if not cid:
                skipped.append([NO_ID, label, f"{NO_ID}: chain has no id"])
                continue
            res = check_chain(chain, filters)
            if isinstance(res[0], str):
                skipped.append([res[0], label, f"{res[0]}: {res[1]}"])
                continue
        except Exception as e:  # noqa: BLE001
            skipped.append([BAD_COORDS, f"? [{unit['path']}]", f"{BAD_COORDS}: unexpected error: {type(e).__name__}: {e}"])
            continue
        s, c = res
        present = ~np.isnan(c)
        if present.any() and not c[present].any():
            zero.append(len(ids))
        seqs.append(s)
        coords.append(c)
        if filters.get("store_plddt"):
            plddts.append(plddt_values(chain))
        lengths.append(len(s))
        ids.append(cid)
        sources.append(src)
        digests.append(_chain_digest(s, c))
        if seqres != "off":
            observed = getattr(chain, "observed", None)
            # FASTA / chain_set inputs are whole sequences already: nothing to put back
            inserted.append(int((~observed).sum()) if observed is not None else -1 if unit["kind"] == "file" else 0)
    meta = {
        "key": unit["key"],
        "label": _unit_label(unit),
        "ids": ids,
        "sources": sources,
        "lengths": lengths,
        "skipped": skipped,
        "chains_read": len(chains),
        "digests": digests,
    }
    if zero:
        meta["zero_coords"] = zero
    if filters.get("chains"):  # which requested author chain ids this unit has (before the length filters)
        meta["chains_found"] = sorted({str(getattr(c, "id", "")).rsplit(".", 1)[-1] for c in chains})
    if unit["kind"] == "file":
        meta["ignored_entry"] = next((c.ignored_entry for c in chains if getattr(c, "ignored_entry", None)), None)
    if seqres != "off":
        meta["seqres_inserted"] = inserted
    return {
        "seq": np.concatenate(seqs) if seqs else np.zeros(0, np.uint8),
        "coords": np.concatenate(coords) if coords else np.zeros((0, len(BACKBONE_ATOMS), 3), np.float32),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "plddt": np.concatenate(plddts) if plddts else np.zeros(0, np.float32),
        "meta": meta,
    }


def _chain_digest(seq: np.ndarray, coords: np.ndarray) -> str:
    """Fingerprint of a kept chain (sequence and coordinates as stored): equal for the same chain
    read from two files (PDB and mmCIF of one entry), different for decoys of one protein."""
    c = np.array(coords, dtype=np.float32) + np.float32(0.0)  # a copy; -0.0 becomes 0.0
    c[np.isnan(c)] = np.nan  # one NaN bit pattern
    h = hashlib.blake2b(np.ascontiguousarray(seq).tobytes(), digest_size=12)
    h.update(c.tobytes())
    return h.hexdigest()


def _write_part(parts_dir: Path, key: str, result: dict[str, Any]) -> None:
    final = parts_dir / f"{key}{_PART_SUFFIX}"
    tmp = parts_dir / f".{key}.tmp.{os.getpid()}"
    meta = np.frombuffer(json.dumps(result["meta"]).encode(), dtype=np.uint8)
    with open(tmp, "wb") as f:
        np.savez(f, seq=result["seq"], coords=result["coords"], lengths=result["lengths"], meta=meta,
                 **({"plddt": result["plddt"]} if len(result.get("plddt", ())) else {}))
    os.replace(tmp, final)


def _read_part_meta(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        n = int(z["lengths"].shape[0])
    if not (len(meta["ids"]) == len(meta["lengths"]) == n):
        raise ValueError("part is inconsistent")
    return meta


def _stats(meta: dict[str, Any]) -> tuple[int, int]:
    return len(meta["ids"]), len(meta["skipped"])


def _run_unit(unit: dict, filters: dict[str, Any], parts_dir: str) -> dict[str, Any]:
    """Process one unit and write its part file; returns the part's meta (small)."""
    try:
        result = process_unit(unit, filters)
    except Exception as e:  # noqa: BLE001 - a bug or surprise on one input must not stop the run
        result = _empty_result(unit, f"unexpected error: {type(e).__name__}: {e}")
    _write_part(Path(parts_dir), unit["key"], result)
    return result["meta"]


def _empty_result(unit: dict, reason: str) -> dict[str, Any]:
    """A unit's result when the whole unit failed: no chains, one skipped-input row."""
    meta = {
        "key": unit["key"],
        "label": _unit_label(unit),
        "ids": [],
        "sources": [],
        "lengths": [],
        "skipped": [["input", _unit_label(unit), reason]],
        "chains_read": 0,
    }
    return {
        "seq": np.zeros(0, np.uint8),
        "coords": np.zeros((0, len(BACKBONE_ATOMS), 3), np.float32),
        "lengths": np.zeros(0, np.int64),
        "meta": meta,
    }


# ----------------------------------------------------------------------------------------------
# planning / resume state
# ----------------------------------------------------------------------------------------------


def _plan_units(sources: Sequence[Path], chunk_lines: int) -> tuple[list[dict], list[list]]:
    """Work units (sorted by source path, then line) and the sources' fingerprint."""
    from ...io import count_lines, is_chain_set, is_fasta

    units: list[dict] = []
    fp_sources: list[list] = []
    for src in sorted({Path(s).resolve() for s in sources}, key=str):
        p = str(src)
        try:
            st = src.stat()
            fp_sources.append([p, st.st_size, st.st_mtime_ns])
        except OSError:
            fp_sources.append([p, None, None])
        if is_fasta(src):
            units.append({"kind": "fasta", "path": p, "start": 0, "stop": 0, "key": _unit_key("fasta", p)})
            continue
        chain_set = False
        try:
            chain_set = bool(is_chain_set(src))
        except Exception:  # noqa: BLE001 - leave it to the unit to report
            chain_set = False
        if chain_set:
            try:
                n = int(count_lines(src))
            except Exception:  # noqa: BLE001 - e.g. a truncated gzip: one unit salvages what reads
                units.append({"kind": "chain_set", "path": p, "start": 0, "stop": _TO_END, "key": _unit_key("chain_set", p, 0, _TO_END)})
                continue
            step = chunk_lines
            if _is_gzip(src):
                step = max(chunk_lines, -(-n // GZIP_MAX_UNITS))
            for start in range(0, n, step):
                stop = min(start + step, n)
                units.append({"kind": "chain_set", "path": p, "start": start, "stop": stop, "key": _unit_key("chain_set", p, start, stop)})
        else:
            units.append({"kind": "file", "path": p, "start": 0, "stop": 0, "key": _unit_key("file", p)})
    return units, fp_sources


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _describe_mismatch(old: dict, new: dict) -> str:
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) == new.get(k):
            continue
        if k == "sources":
            o = {s[0]: s[1:] for s in old.get(k) or []}
            n = {s[0]: s[1:] for s in new.get(k) or []}
            added, removed = set(n) - set(o), set(o) - set(n)
            changed = {p for p in set(o) & set(n) if o[p] != n[p]}
            parts = []
            if added:
                parts.append(f"{len(added)} added (e.g. {sorted(added)[0]})")
            if removed:
                parts.append(f"{len(removed)} removed (e.g. {sorted(removed)[0]})")
            if changed:
                parts.append(f"{len(changed)} modified since (e.g. {sorted(changed)[0]})")
            diffs.append("sources: " + ", ".join(parts))
        elif k == "filters":
            o, n = old.get(k) or {}, new.get(k) or {}
            diffs.extend(f"{f}: {o.get(f)!r} -> {n.get(f)!r}" for f in sorted(set(o) | set(n)) if o.get(f) != n.get(f))
        else:
            diffs.append(f"{k}: {old.get(k)!r} -> {new.get(k)!r}")
    return "; ".join(diffs)


class _Lock:
    """Exclusive, non-blocking lock on DIR/.prepare.lock (released automatically if killed)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise PrepareError(f"another `prepare` is writing to {self.path.parent} right now (lock {self.path} is held)") from None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None


class _Log:
    def __init__(self, log):
        self.user = log
        self.lines: list[str] = []

    def __call__(self, msg: str, level: int = logging.INFO) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        self.lines.append(f"[{stamp}] {msg}")
        if self.user is None:
            if level >= logging.WARNING:
                print(msg, file=sys.stderr)
            return
        if isinstance(self.user, logging.Logger):
            self.user.log(level, msg)
        elif hasattr(self.user, "info") and not callable(self.user):
            (self.user.warning if level >= logging.WARNING else self.user.info)(msg)
        else:
            self.user(msg)


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, enabled: bool, total: int, done: int, kept: int, skipped: int):
        self.kept, self.skipped, self.done0 = kept, skipped, done
        self.t0 = time.monotonic()
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from ...progress import Progress  # rich's bar on a terminal, plain periodic lines in a log file

            self.bar = Progress(
                TextColumn("[bold]preparing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("units"),
                TextColumn("kept [green]{task.fields[kept]}[/] skipped [yellow]{task.fields[skipped]}[/]"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("prepare", total=total, completed=done, kept=kept, skipped=skipped, rate="")

    def advance(self, meta: dict[str, Any]) -> None:
        k, s = _stats(meta)
        self.kept += k
        self.skipped += s
        if self.bar is not None:
            t = self.bar.tasks[0]
            n_new = t.completed + 1 - self.done0
            rate = n_new / max(time.monotonic() - self.t0, 1e-9)
            self.bar.update(self.task, advance=1, kept=self.kept, skipped=self.skipped, rate=f"{rate:.1f} units/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ----------------------------------------------------------------------------------------------
# running units
# ----------------------------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped process is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _worker_init(main_pid: int) -> None:
    """Pool worker start-up: exit when the main process is gone (e.g. SIGKILLed), instead of
    waiting forever for work that will never come."""
    import threading

    def watch() -> None:
        while _process_alive(main_pid):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="coordformer-parent-watch", daemon=True).start()


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _run_parallel(pending: list[dict], filters: dict, parts_dir: Path, workers: int, on_done: Callable[[dict], None], log: _Log) -> None:
    """Run units in a process pool with a bounded number in flight. If a worker process dies
    (segfault, OOM kill), the units in flight are retried one at a time in isolated processes; a unit
    that kills its process again is recorded as skipped."""
    ctx = _mp_context()
    queue = list(reversed(pending))
    max_in_flight = 2 * workers
    suspects: list[dict] = []
    n_ok = [0]  # units finished by a worker process (to tell "worker crashed on an input" from "workers cannot run")

    def done_ok(meta: dict) -> None:
        n_ok[0] += 1
        on_done(meta)

    while queue:
        broken = False
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            in_flight: dict[Any, dict] = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < max_in_flight and not broken:
                        u = queue.pop()
                        try:
                            in_flight[pool.submit(_run_unit, u, filters, str(parts_dir))] = u
                        except BrokenProcessPool:
                            queue.append(u)
                            broken = True
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        u = in_flight.pop(fut)
                        try:
                            meta = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            suspects.append(u)
                        else:
                            done_ok(meta)
                    if broken:
                        # collect everything else in flight; those finished stay finished
                        for fut, u in list(in_flight.items()):
                            try:
                                meta = fut.result()
                            except BrokenProcessPool:
                                suspects.append(u)
                            else:
                                done_ok(meta)
                        in_flight.clear()
                        break
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        if broken:
            log(f"a worker process died; retrying {len(suspects)} unit(s) one at a time", logging.WARNING)
            for u in suspects:
                with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)) as solo:
                    try:
                        meta = solo.submit(_run_unit, u, filters, str(parts_dir)).result()
                        n_ok[0] += 1
                    except BrokenProcessPool:
                        if n_ok[0] == 0:
                            raise PrepareError(
                                "worker processes die before finishing any input; run with workers=1 to see why "
                                "(scripts that call prepare() with workers > 1 need an `if __name__ == '__main__':` guard)"
                            ) from None
                        result = _empty_result(u, "worker process crashed while reading this input (killed by a signal or out of memory)")
                        _write_part(parts_dir, u["key"], result)
                        meta = result["meta"]
                        log(f"{_unit_label(u)}: worker crashed on this input twice; skipped", logging.WARNING)
                on_done(meta)
            suspects = []


# ----------------------------------------------------------------------------------------------
# consolidation
# ----------------------------------------------------------------------------------------------


def _entry_names(path: str) -> list[str]:
    """Entry names for the chains of structure file ``path``, tried in order when its entry id is
    not unique: the file name without endings, then FOLDER_STEM (the numbered fallback is added by
    the caller)."""
    from ...io.structures import _file_stem, _normalize_entry

    p = Path(path)
    stem = _normalize_entry("_".join(_file_stem(p).split()))
    names = [stem]
    if p.parent.name:
        names.append("_".join(f"{p.parent.name}_{stem}".split()))
    return names


def _unique_structure_ids(units: list[dict], metas: dict[str, dict], norm: Callable[[str], str]
                          ) -> tuple[dict[int, list[str]], dict[tuple[int, int], str], list[tuple[str, str, str]]]:
    """Chain ids unique per input file, and the real duplicates.

    A chain with the same (normalised) id and the same :func:`_chain_digest` as an earlier one is a
    real duplicate (the same chain in two files): it is returned in ``copies`` with the first
    one's source, to be dropped. Where chains with one id differ, every structure file of the clash
    moves to its next entry name (:func:`_entry_names`, then NAME_2, NAME_3 ...) until no clash is
    left; chain_set / FASTA records keep their ids (the caller drops later ones as before).

    Returns ({unit index: new ids} for renamed files, copies {(unit index, chain index): first
    source}, [(path, old entry, new entry)] per renamed file).
    """
    cur: dict[int, list[str]] = {}
    dig: dict[int, list] = {}
    groups: dict[str, list[tuple[int, int]]] = {}
    first_copy: dict[tuple[str, str], str] = {}
    copies: dict[tuple[int, int], str] = {}
    for i, u in enumerate(units):
        meta = metas[u["key"]]
        cur[i] = list(meta["ids"])
        dig[i] = list(meta.get("digests") or [None] * len(meta["ids"]))  # parts of older runs: unknown
        for j, cid in enumerate(cur[i]):
            key = norm(cid)
            if dig[i][j] is not None:
                if (key, dig[i][j]) in first_copy:
                    copies[(i, j)] = first_copy[(key, dig[i][j])]
                    continue
                first_copy[(key, dig[i][j])] = meta["sources"][j]
            groups.setdefault(key, []).append((i, j))
    files = {i for i, u in enumerate(units) if u["kind"] == "file" and cur[i]}
    tried: dict[int, int] = {}  # file -> how many of its _entry_names it has used
    final: set[int] = set()  # files on a numbered name, unique by construction
    first_entry: dict[int, str] = {}
    queue = [k for k, g in groups.items() if len(g) > 1]
    while queue:
        key = queue.pop()
        members = groups.get(key, ())
        if len(members) < 2 or len({dig[i][j] for i, j in members} - {None}) < 2:
            continue  # unique, or unknown (parts from an older version)
        owners = {i for i, _ in members}
        movers = sorted(i for i in owners if i in files and i not in final)
        stayed = False
        for n, i in enumerate(movers):
            old = cur[i][0].rpartition(".")[0]
            names = _entry_names(units[i]["path"])
            t = tried.get(i, 0)
            tried[i] = t + 1
            if t < len(names):
                new = names[t]
                if new == old:  # already on this name (e.g. the file holding the real 1ABC): others move
                    stayed = True
                    continue
            elif n == 0 and owners <= set(movers):  # names exhausted; the first file keeps the name
                final.add(i)
                stayed = True
                continue
            else:  # names exhausted: the last one with the first free number
                chains = [cid.rpartition(".")[2] for cid in cur[i]]
                k = 2
                while any(groups.get(norm(f"{names[-1]}_{k}.{c}")) for c in chains):
                    k += 1
                new = f"{names[-1]}_{k}"
                final.add(i)
            first_entry.setdefault(i, old)
            live = [j for j in range(len(cur[i])) if (i, j) not in copies]
            for j in live:
                groups[norm(cur[i][j])].remove((i, j))
            cur[i] = [f"{new}.{cid.rpartition('.')[2]}" for cid in cur[i]]
            for j in live:
                k2 = norm(cur[i][j])
                groups.setdefault(k2, []).append((i, j))
                queue.append(k2)
        if stayed:
            queue.append(key)  # the clash may remain between files that did not move this round
    renamed = {i: cur[i] for i in first_entry if cur[i] != list(metas[units[i]["key"]]["ids"])}
    log = [(units[i]["path"], first_entry[i], cur[i][0].rpartition(".")[0]) for i in sorted(renamed)]
    return renamed, copies, log


def _examples(items: Sequence[str], n: int = 10) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" ... ({len(items) - n} more)" if len(items) > n else "")


def _consolidate(
    out: Path,
    units: list[dict],
    metas: dict[str, dict],
    bad_paths: list[tuple[str, str]],
    config: PrepareConfig,
    excluded: list[str],
    workers: int,
    summary: PrepareSummary,
    log: _Log,
    t0: float,
) -> None:
    from ...io import normalize_chain_id as norm

    parts_dir = out / store.WORK_DIR / "parts"
    skipped_rows: list[tuple[str, str]] = [(str(p), str(r)) for p, r in bad_paths]
    filtered: dict[str, int] = {}
    inputs_skipped = len(bad_paths)
    chains_read = 0
    renamed, copies, renames = _unique_structure_ids(units, metas, norm)
    generic = [(u["path"], metas[u["key"]]["ignored_entry"]) for u in units
               if u["kind"] == "file" and metas[u["key"]].get("ignored_entry") and metas[u["key"]]["ids"]]
    if generic:
        log(f"ids: {len(generic)} structure files name themselves with a generic or non-archive entry name (mmCIF "
            f"block name / PDB HEADER id, not a PDB or AlphaFold DB id); their chains are named after the file instead: "
            + _examples([f"{Path(p).name} ({name!r})" for p, name in generic]))
    if renames:
        log(f"ids: {len(renames)} structure files use an entry id that another input file uses for a different chain "
            f"(decoys or models sharing a HEADER / block name, or files of the same name); renamed after the file: "
            + _examples([f"{Path(p).name}: {old} -> {new}" for p, old, new in renames]), logging.WARNING)
    seen: dict[str, tuple[str, Any]] = {}
    ids: list[str] = []
    sources: list[str] = []
    lengths_list: list[np.ndarray] = []
    keep_masks: list[np.ndarray] = []
    for ui, u in enumerate(units):
        meta = metas[u["key"]]
        digests = meta.get("digests") or [None] * len(meta["ids"])
        chains_read += int(meta["chains_read"])
        for kind, inp, reason in meta["skipped"]:
            skipped_rows.append((inp, reason))
            if kind == "input":
                inputs_skipped += 1
            else:
                filtered[kind] = filtered.get(kind, 0) + 1
        keep = np.ones(len(meta["ids"]), dtype=bool)
        zero_coords = set(meta.get("zero_coords", ()))
        for j, (cid, src) in enumerate(zip(renamed.get(ui, meta["ids"]), meta["sources"])):
            key = norm(cid)
            if (ui, j) in copies:  # the same chain as one read before (see _unique_structure_ids)
                keep[j] = False
                filtered[DUPLICATE] = filtered.get(DUPLICATE, 0) + 1
                old = meta["ids"][j]
                skipped_rows.append((f"{old} [{src}]", f"{DUPLICATE}: {old} already read from {copies[(ui, j)]} "
                                                       "(the same sequence and coordinates; kept the first)"))
                continue
            if key in seen:
                keep[j] = False
                filtered[DUPLICATE] = filtered.get(DUPLICATE, 0) + 1
                first_src, first_digest = seen[key]
                same = None if first_digest is None or digests[j] is None else first_digest == digests[j]
                what = {True: "the same sequence and coordinates", False: "a different chain", None: "not compared"}[same]
                skipped_rows.append((f"{cid} [{src}]", f"{DUPLICATE}: {cid} already read from {first_src} ({what}; kept the first)"))
                continue
            seen[key] = (src, digests[j])
            if j in zero_coords:
                summary.chains_zero_coords += 1
                if len(summary.zero_coords_examples) < 10:
                    summary.zero_coords_examples.append(f"{cid} [{src}]")
            ids.append(cid)
            sources.append(src)
            if "seqres_inserted" in meta:
                n_in = meta["seqres_inserted"][j]
                if n_in < 0:
                    summary.seqres_unavailable.append(f"{cid} [{src}]")
                else:
                    summary.seqres_residues_inserted += n_in
                    summary.seqres_chains_filled += n_in > 0
        keep_masks.append(keep)
        lengths_list.append(np.asarray(meta["lengths"], dtype=np.int64)[keep])
    del seen
    if config.chains and all("chains_found" in metas[u["key"]] for u in units):
        found = {c for u in units for c in metas[u["key"]]["chains_found"]}
        summary.chains_not_found = [c for c in config.chains if c not in found]
        if not found:  # nothing to prepare: say which chains the inputs have, and leave no dataset behind
            store.write_tsv(out / store.SKIPPED_FILE, store.SKIPPED_HEADER, skipped_rows)
            have = sorted({c for _, r in skipped_rows for m in [_PROTEIN_CHAINS_RE.search(r)] if m for c in m.group(1).split(", ")})
            shutil.rmtree(out / store.WORK_DIR, ignore_errors=True)
            raise PrepareError(f"--chains {','.join(config.chains)} matched no protein chain of the inputs"
                               + (f" (their chains: {_examples(have, 20)})" if have else "")
                               + "; nothing was prepared (skipped.tsv names each input's chains)")

    lengths = np.concatenate(lengths_list) if lengths_list else np.zeros(0, np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_res = int(offsets[-1])
    assert len(lengths) == len(ids)

    # arrays -> temporary names, then os.replace into place
    tmp = {name: out / f".{name}.tmp" for name in store.ARRAY_FILES}
    seq_mm = np.lib.format.open_memmap(tmp[store.SEQ_FILE], mode="w+", dtype=np.uint8, shape=(n_res,))
    crd_mm = np.lib.format.open_memmap(tmp[store.COORDS_FILE], mode="w+", dtype=np.float32, shape=(n_res, len(BACKBONE_ATOMS), 3))
    if config.store_plddt:
        tmp[store.PLDDT_FILE] = out / f".{store.PLDDT_FILE}.tmp"
        pl_mm = np.lib.format.open_memmap(tmp[store.PLDDT_FILE], mode="w+", dtype=np.float32, shape=(n_res,))
    pos = 0
    for u, keep in zip(units, keep_masks):
        if not keep.any():
            continue
        with np.load(parts_dir / f"{u['key']}{_PART_SUFFIX}") as z:
            lens = z["lengths"]
            res_keep = np.repeat(keep, lens)
            n = int(res_keep.sum())
            seq_mm[pos : pos + n] = z["seq"][res_keep]
            crd_mm[pos : pos + n] = z["coords"][res_keep]
            if config.store_plddt:
                pl_mm[pos : pos + n] = z["plddt"][res_keep] if "plddt" in z.files else np.nan
        pos += n
    assert pos == n_res
    seq_mm.flush()
    crd_mm.flush()
    if config.store_plddt:
        pl_mm.flush()
        del pl_mm
    with open(tmp[store.OFFSETS_FILE], "wb") as f:  # a file object: np.save adds no ".npy"
        np.save(f, offsets)

    # splits
    if config.split == "identity":
        seqs = [bytes(seq_mm[offsets[i] : offsets[i + 1]]).decode("ascii") for i in range(len(ids))]
        codes, n_clusters, clusters = _splits.identity_split(ids, seqs, config, threads=workers, log=log, tmp_root=out / store.WORK_DIR)
        summary.n_clusters = n_clusters
        log(f"MMseqs2 found {n_clusters} clusters at {config.split_identity:.0%} identity among {len(ids)} chains")
    else:
        codes, clusters = _splits.random_split(ids, config), None
    del seq_mm, crd_mm
    match = _splits.apply_exclusions(ids, codes, excluded, norm, clusters)
    n_found = match.n_found
    split_counts = {name: int((codes == k).sum()) for k, name in enumerate(_splits.SPLIT_NAMES)}
    summary.empty_splits = [name for name, frac in (("valid", config.valid_fraction), ("test", config.test_fraction))
                            if frac > 0 and ids and not split_counts[name]]

    for name in tmp:
        os.replace(tmp[name], out / name)
    store.write_tsv(out / store.CHAINS_FILE, store.CHAINS_HEADER, zip(ids, lengths.tolist(), sources))
    (out / store.SPLITS_DIR).mkdir(exist_ok=True)
    for k, name in enumerate(_splits.SPLIT_NAMES):
        store.write_id_list(out / store.SPLITS_DIR / f"{name}.txt", (c for c, s in zip(ids, codes) if s == k))
    store.write_tsv(out / store.SKIPPED_FILE, store.SKIPPED_HEADER, skipped_rows)
    unmatched = match.unmatched
    if unmatched:  # an id list (read_id_list reads it back), each id with what became of it
        notes = {e: f"excluded {c} instead ({how})" for e, c, how in match.near}
        notes.update({e: f"ambiguous, nothing excluded: {', '.join(cs)}" for e, cs in match.ambiguous})
        store.atomic_write_text(out / store.EXCLUDE_UNMATCHED_FILE, "".join(
            f"{e}\t# {notes.get(e, 'not in the dataset')}\n" for e in unmatched))

    summary.chains_read = chains_read
    summary.seqres_mode = config.seqres
    summary.chains_kept = len(ids)
    summary.n_residues = n_res
    summary.inputs_skipped = inputs_skipped
    summary.chains_filtered = dict(sorted(filtered.items()))
    summary.excluded_ids_found = n_found
    summary.excluded_ids_listed = len(excluded)
    summary.excluded_ids_unmatched = len(unmatched)
    summary.excluded_near_misses = [f"{e} -> {c} ({how})" for e, c, how in match.near]
    summary.files_generic_entry = len(generic)
    summary.files_renamed = len(renames)
    summary.splits = split_counts
    if unmatched:
        log(f"exclude: {len(unmatched)} of {len(excluded)} listed ids match no chain exactly; all are in "
            f"{out / store.EXCLUDE_UNMATCHED_FILE} with what became of each", logging.WARNING)
        for e, c, how in match.near[:_MAX_LOGGED]:
            log(f"exclude: {e} matches no chain exactly; excluded {c} instead ({how}, the only near match)", logging.WARNING)
        for e, cs in match.ambiguous[:_MAX_LOGGED]:
            log(f"exclude: {e} matches no chain exactly and several loosely ({', '.join(cs)}); none excluded", logging.WARNING)
        n_more = max(0, len(match.near) - _MAX_LOGGED) + max(0, len(match.ambiguous) - _MAX_LOGGED)
        if n_more:
            log(f"exclude: {n_more} more near misses (see {store.EXCLUDE_UNMATCHED_FILE})", logging.WARNING)
        if match.missing:
            log(f"exclude: {len(match.missing)} listed ids are not in the dataset (nothing to exclude for them): "
                + _examples(match.missing, 20))

    manifest = {
        "format_version": DATASET_FORMAT_VERSION,
        "coordformer_version": __version__,
        "config": config.to_dict(),
        "n_chains": len(ids),
        "n_residues": n_res,
        "atoms": list(BACKBONE_ATOMS),
        "counts": {
            "sources": summary.n_sources,
            "units": summary.n_units,
            "chains_read": chains_read,
            "chains_kept": len(ids),
            "inputs_skipped": inputs_skipped,
            "chains_filtered": summary.chains_filtered,
            "excluded_ids_found": n_found,
            "excluded_ids_unmatched": len(unmatched),
            "excluded_near_misses": len(match.near),
            "files_generic_entry": len(generic),
            "files_renamed": len(renames),
            "chains_zero_coords": summary.chains_zero_coords,
            **({"chains_not_found": summary.chains_not_found} if config.chains else {}),
            "empty_splits": summary.empty_splits,
            **({"seqres_residues_inserted": summary.seqres_residues_inserted,
                "seqres_chains_filled": summary.seqres_chains_filled,
                "seqres_unavailable": len(summary.seqres_unavailable)} if config.seqres != "off" else {}),
        },
        "splits": split_counts,
        "n_clusters": summary.n_clusters,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    summary.elapsed_s = time.monotonic() - t0
    log(summary.format())
    store.atomic_write_text(out / store.LOG_FILE, "\n".join(log.lines) + "\n")
    _before_manifest(out)
    store.write_manifest(out, manifest)
    shutil.rmtree(out / store.WORK_DIR, ignore_errors=True)


def _before_manifest(out: Path) -> None:
    """Hook point between writing the data files and the manifest (tests simulate a kill here)."""


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------


def _check_config(config: PrepareConfig) -> None:
    _splits.check_split_config(config)
    if config.min_length < 0 or config.max_length < config.min_length:
        raise ConfigError(f"need 0 <= min_length <= max_length, got {config.min_length}, {config.max_length}")
    if not 0 <= config.max_missing_ca <= 1:
        raise ConfigError(f"max_missing_ca must be in [0, 1], got {config.max_missing_ca}")
    if config.plddt_min is not None and not 0 <= config.plddt_min <= 100:
        raise ConfigError(f"plddt_min must be in [0, 100] (pLDDT), got {config.plddt_min}")
    if config.seqres not in SEQRES_MODES:
        raise ConfigError(f"seqres must be one of {', '.join(SEQRES_MODES)}, got {config.seqres!r}")


def _remove_dataset(out: Path) -> None:
    for name in store.DATASET_ENTRIES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.rmtree(out / store.WORK_DIR, ignore_errors=True)
    for p in out.glob(".*.tmp*"):
        p.unlink(missing_ok=True)


def prepare(
    sources: Iterable[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: PrepareConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | logging.Logger | None = None,
    overwrite: bool = False,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
) -> PrepareSummary:
    """Prepare a dataset in ``out_dir`` from structure files, folders, chain_set JSONL and FASTA files.

    FASTA records become chains with every coordinate missing (NaN) and are exempt from
    ``config.max_missing_ca``; structure and chain_set inputs are filtered by it.

    Re-running with the same arguments after an interruption resumes; ``overwrite=True`` discards
    an existing dataset or interrupted run in ``out_dir`` and starts over. Unreadable inputs and
    filtered chains are listed in ``skipped.tsv``; they never stop the run.
    """
    from ...io import find_sources, read_id_list

    t0 = time.monotonic()
    config = config or PrepareConfig()
    _check_config(config)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [Path(s) for s in sources]
    workers = max(1, int(workers or 1))
    if chunk_lines < 1:
        raise ValueError("chunk_lines must be >= 1")
    out = Path(out_dir)
    logger = _Log(log)

    # fail fast on things that would only break at the end
    excluded: dict[str, None] = {}  # in list order (a set would make the report's order vary between runs)
    for f in config.exclude_files:
        if not Path(f).is_file():
            raise PrepareError(f"exclude file {f} does not exist")
        try:
            excluded.update(dict.fromkeys(read_id_list(f)))
        except Exception as e:  # noqa: BLE001 - StructureReadError
            raise PrepareError(f"cannot read exclude file {f}: {getattr(e, 'reason', e)}") from None
    if config.split == "identity" and not _splits.mmseqs_available():
        raise PrepareError(
            "split='identity' needs MMseqs2 (`mmseqs` not found on PATH): install it "
            "(`apt-get install mmseqs2` or `conda install -c bioconda mmseqs2`) or use `--split random`"
        )

    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out / ".prepare.lock"):
        if store.is_finished_dataset(out):
            if not overwrite:
                raise PrepareError(f"{out} already holds a prepared dataset; choose another folder or pass --overwrite to replace it")
            logger(f"overwrite: removing the existing dataset in {out}")
            _remove_dataset(out)
        elif overwrite:
            _remove_dataset(out)

        srcs, bad_paths = find_sources(sources, skip=[out])
        srcs = list(srcs)
        bad_paths = [(str(p), str(r)) for p, r in bad_paths]
        if not srcs:
            detail = "; ".join(f"{p}: {r}" for p, r in bad_paths[:5])
            raise PrepareError(f"no structure files found in {', '.join(map(str, sources))}" + (f" ({detail})" if detail else ""))
        units, fp_sources = _plan_units(srcs, chunk_lines)
        fingerprint = {
            "format_version": DATASET_FORMAT_VERSION,
            "filters": {"min_length": config.min_length, "max_length": config.max_length, "max_missing_ca": config.max_missing_ca,
                        # only when set, so a run interrupted before the option existed still resumes
                        **({"plddt_min": config.plddt_min} if config.plddt_min is not None else {}),
                        **({"chains": list(config.chains)} if config.chains else {}),
                        **({"store_plddt": True} if config.store_plddt else {}),
                        **({"seqres": config.seqres} if config.seqres != "off" else {})},
            "chunk_lines": chunk_lines,
            "sources": fp_sources,
            "bad_paths": sorted(map(list, bad_paths)),
        }
        fingerprint = json.loads(json.dumps(fingerprint))

        work = out / store.WORK_DIR
        parts_dir = work / "parts"
        state_path = work / "state.json"
        if state_path.exists():
            try:
                old = json.loads(state_path.read_text())
            except ValueError:
                old = None
            if old != fingerprint:
                why = _describe_mismatch(old or {}, fingerprint) if old else "unreadable state.json"
                raise PrepareError(
                    f"{out} holds an interrupted prepare run with different inputs or filters ({why}); "
                    "re-run with the original sources and settings to resume it, or pass --overwrite to start over"
                )
        elif work.exists():
            shutil.rmtree(work)
        parts_dir.mkdir(parents=True, exist_ok=True)
        if not state_path.exists():
            store.atomic_write_text(state_path, json.dumps(fingerprint))
        for p in parts_dir.glob(".*.tmp.*"):
            p.unlink(missing_ok=True)

        # resume: parts already written by an interrupted run
        metas: dict[str, dict] = {}
        for u in units:
            p = parts_dir / f"{u['key']}{_PART_SUFFIX}"
            if p.exists():
                try:
                    metas[u["key"]] = _read_part_meta(p)
                except Exception:  # noqa: BLE001 - corrupt part: redo the unit
                    p.unlink(missing_ok=True)
        pending = [u for u in units if u["key"] not in metas]
        summary = PrepareSummary(out_dir=str(out), n_sources=len(srcs), n_units=len(units), units_resumed=len(metas))
        n_cs = len({u["path"] for u in units if u["kind"] == "chain_set"})
        logger(
            f"prepare {out}: {len(srcs)} sources ({n_cs} chain_set files), {len(bad_paths)} bad paths, "
            f"{len(units)} work units, workers={workers}"
        )
        if metas:
            logger(f"resuming an interrupted run: {len(metas)} of {len(units)} units already done")

        kept0 = sum(_stats(m)[0] for m in metas.values())
        skip0 = sum(_stats(m)[1] for m in metas.values())
        bar = _Progress(progress, len(units), len(metas), kept0, skip0)
        filters = fingerprint["filters"]

        def on_done(meta: dict) -> None:
            metas[meta["key"]] = meta
            bar.advance(meta)

        try:
            if workers == 1 or len(pending) <= 1:
                for u in pending:
                    on_done(_run_unit(u, filters, str(parts_dir)))
            else:
                _run_parallel(pending, filters, parts_dir, workers, on_done, logger)
        finally:
            bar.close()
        _consolidate(out, units, metas, bad_paths, config, list(excluded), workers, summary, logger, t0)
    return summary
