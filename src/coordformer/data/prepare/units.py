"""Work units: one per structure or FASTA file, one per line range of a chain_set JSONL file.

A unit is read and filtered (:func:`process_unit`, in a worker process) and its kept chains, with a
small JSON :class:`PartMeta`, are written atomically to ``DIR/.work/parts/<unit key>.npz``; a part
that exists is a finished unit, which is what lets an interrupted run resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ...config import PrepareConfig
from ...constants import BACKBONE_ATOMS
from .policy import (
    BAD_COORDS,
    NO_ID,
    NOT_SELECTED,
    ChainPolicy,
    Rejected,
    author_chain,
    chain_id,
    not_selected_row,
    selected_chain,
)

#: Records per work unit for chain_set JSONL files.
DEFAULT_CHUNK_LINES = 500
#: A gzipped chain_set file is split into at most this many units: a unit has to decompress
#: the file from its start up to its own lines, so many small units would cost O(n^2).
GZIP_MAX_UNITS = 16

PART_SUFFIX = ".npz"
_TO_END = 2**62  # "stop" of a chain_set unit whose line count is unknown

UnitKind = Literal["file", "chain_set", "fasta"]


@dataclass(frozen=True)
class WorkUnit:
    """One input file, or lines ``[start, stop)`` (0-based) of a chain_set file; ``path`` is
    absolute."""

    kind: UnitKind
    path: str
    start: int = 0
    stop: int = 0

    @property
    def key(self) -> str:
        """Names the unit's part file; stable across versions so that old parts resume."""
        key = json.dumps([self.kind, self.path, self.start, self.stop])
        return hashlib.sha256(key.encode()).hexdigest()[:24]

    @property
    def label(self) -> str:
        """The unit as logs and skipped.tsv name it."""
        if self.kind == "chain_set":
            stop = "end" if self.stop >= _TO_END else self.stop
            return f"{self.path}:lines {self.start + 1}-{stop}"
        return self.path


@dataclass(frozen=True)
class PartMeta:
    """What a finished unit found, stored as JSON in its part file (consolidation reads only this
    and the arrays). Per kept chain, in order: ``ids``, ``sources``, ``lengths``, ``digests``
    (:func:`chain_digest`; None for parts of older versions and failed units)."""

    key: str
    label: str
    ids: tuple[str, ...]
    sources: tuple[str, ...]
    lengths: tuple[int, ...]
    #: (kind: "input" or a filter category, input, reason) rows for skipped.tsv
    skipped: tuple[tuple[str, str, str], ...]
    chains_read: int
    digests: tuple[str, ...] | None = None
    #: indices (among kept chains) of chains whose every present coordinate is 0
    zero_coords: tuple[int, ...] = ()
    #: with PrepareConfig.plddt_min or store_plddt: indices (among kept chains) of chains of
    #: experimental structures, whose B-factors were not read as pLDDT
    experimental: tuple[int, ...] = ()
    #: with PrepareConfig.chains: the requested author chain ids the unit has (before the length
    #: filters); None when not known (no --chains, or the unit failed)
    chains_found: tuple[str, ...] | None = None
    #: with PrepareConfig.chains: every author chain id the unit's input has, requested or not
    #: (to name them when no input has a requested one); None when not known
    chains_seen: tuple[str, ...] | None = None
    #: with PrepareConfig.chains: chains read whose id names no chain (FASTA ``>seq2``), which
    #: --chains does not filter; None in parts of versions that dropped them unlogged
    no_chain_ids: int | None = None
    #: structure files: the generic entry name the reader ignored (chains named after the file)
    ignored_entry: str | None = None
    #: with PrepareConfig.seqres: per kept chain, unobserved residues put back (-1 = no usable
    #: deposited sequence)
    seqres_inserted: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "key": self.key,
            "label": self.label,
            "ids": list(self.ids),
            "sources": list(self.sources),
            "lengths": list(self.lengths),
            "skipped": [list(r) for r in self.skipped],
            "chains_read": self.chains_read,
        }
        if self.digests is not None:
            d["digests"] = list(self.digests)
        if self.zero_coords:
            d["zero_coords"] = list(self.zero_coords)
        if self.experimental:
            d["experimental"] = list(self.experimental)
        if self.chains_found is not None:
            d["chains_found"] = list(self.chains_found)
        if self.chains_seen is not None:
            d["chains_seen"] = list(self.chains_seen)
        if self.no_chain_ids is not None:
            d["no_chain_ids"] = self.no_chain_ids
        if self.ignored_entry is not None:
            d["ignored_entry"] = self.ignored_entry
        if self.seqres_inserted is not None:
            d["seqres_inserted"] = list(self.seqres_inserted)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PartMeta:
        def opt(name: str, conv=tuple):
            v = d.get(name)
            return None if v is None else conv(v)

        return cls(
            key=d["key"],
            label=d["label"],
            ids=tuple(d["ids"]),
            sources=tuple(d["sources"]),
            lengths=tuple(int(n) for n in d["lengths"]),
            skipped=tuple(tuple(r) for r in d["skipped"]),
            chains_read=int(d["chains_read"]),
            digests=opt("digests") or None,
            zero_coords=tuple(d.get("zero_coords") or ()),
            experimental=tuple(d.get("experimental") or ()),
            chains_found=opt("chains_found"),
            chains_seen=opt("chains_seen"),
            no_chain_ids=opt("no_chain_ids", int),
            ignored_entry=d.get("ignored_entry"),
            seqres_inserted=opt("seqres_inserted"),
        )

    @property
    def n_kept(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class UnitResult:
    """A unit's kept chains, concatenated: ``seq`` uint8 [N], ``coords`` float32 [N, 4, 3]
    (Angstrom, NaN = missing), ``lengths`` int64 [chains], ``plddt`` float32 [N] or [0] (stored only
    with PrepareConfig.store_plddt); N = sum(lengths)."""

    seq: np.ndarray
    coords: np.ndarray
    lengths: np.ndarray
    meta: PartMeta
    plddt: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


# ----------------------------------------------------------------------------------------------
# planning
# ----------------------------------------------------------------------------------------------


def plan_units(sources: Sequence[Path], chunk_lines: int) -> tuple[list[WorkUnit], list[list]]:
    """Work units (sorted by source path, then line) and the sources' fingerprint
    ([path, size, mtime_ns] per source, for the resume check)."""
    from ...io import count_lines, is_chain_set, is_fasta

    units: list[WorkUnit] = []
    fp_sources: list[list] = []
    # absolute, not resolved: a symbolic link names its chains (and sorts) by its own name, as
    # read_structure does, not by its target's (find_sources has dropped links to a file given)
    for src in sorted({Path(os.path.abspath(s)) for s in sources}, key=str):
        p = str(src)
        try:
            st = src.stat()
            fp_sources.append([p, st.st_size, st.st_mtime_ns])
        except OSError:
            fp_sources.append([p, None, None])
        if is_fasta(src):
            units.append(WorkUnit("fasta", p))
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
                units.append(WorkUnit("chain_set", p, 0, _TO_END))
                continue
            step = chunk_lines
            if _is_gzip(src):
                step = max(chunk_lines, -(-n // GZIP_MAX_UNITS))
            units.extend(
                WorkUnit("chain_set", p, start, min(start + step, n)) for start in range(0, n, step)
            )
        else:
            units.append(WorkUnit("file", p))
    return units, fp_sources


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# per-unit work (runs in worker processes)
# ----------------------------------------------------------------------------------------------


def _input_row(error: BaseException, path: str) -> list[str]:
    """A skip-log row for an unreadable input: the error's own source (file or file:line) and
    reason."""
    return [
        "input",
        str(getattr(error, "source", None) or path),
        str(getattr(error, "reason", None) or error),
    ]


def read_unit_chains(
    unit: WorkUnit,
    skipped: list[list[str]],
    wanted: Sequence[str] = (),
    seqres: str = "off",
    seen: set[str] | None = None,
) -> list[Any]:
    """Read a unit's chains (only those :func:`selected_chain` keeps for the author chain ids
    ``wanted``, when given; structure files with ``read_structure``'s ``seqres`` mode); unreadable
    files and records, and structure files without any of ``wanted``, are appended to ``skipped``
    as input rows, and the chains ``wanted`` leaves out as ``NOT_SELECTED`` rows. With ``wanted``,
    ``seen`` (if given) gets every author chain id the input has, kept or left out."""
    from ...io import (
        ChainsNotFoundError,
        StructureReadError,
        iter_chain_set_lines,
        iter_fasta,
        read_structure,
    )

    seen = set() if seen is None else seen
    if wanted and unit.kind != "file":
        chains = []
        for c in read_unit_chains(unit, skipped):
            cid = chain_id(c)
            if (author := author_chain(cid)) is not None:
                seen.add(author)
            if selected_chain(cid, wanted):
                chains.append(c)
            else:
                src = getattr(c, "source", None) or unit.path
                skipped.append(not_selected_row(cid, src, wanted))
        return chains
    path = unit.path
    if unit.kind in ("file", "fasta"):  # one whole file; a FASTA file may also yield bad records
        left_out: list[str] = []
        try:
            if unit.kind == "file":
                items = read_structure(
                    path, chains=list(wanted) or None, seqres=seqres, left_out=left_out
                )
            else:
                items = list(iter_fasta(path))
        except StructureReadError as e:
            if isinstance(e, ChainsNotFoundError):
                seen.update(e.protein_chains)
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
        if not chains and unit.kind == "file":
            skipped.append(["input", path, "no protein chains found"])
        else:
            for cid in left_out:
                skipped.append(not_selected_row(cid, path, wanted))
        seen.update(a for a in map(author_chain, map(chain_id, chains)) if a is not None)
        seen.update(a for a in map(author_chain, left_out) if a is not None)
        return chains

    def read_range(start: int, stop: int, out_chains: list, out_skipped: list) -> None:
        for item in iter_chain_set_lines(path, start, stop):
            if isinstance(item, StructureReadError):
                out_skipped.append(_input_row(item, path))
            elif isinstance(item, BaseException):
                out_skipped.append(
                    ["input", path, f"unexpected error: {type(item).__name__}: {item}"]
                )
            else:
                out_chains.append(item)

    chains: list[Any] = []
    local_skipped: list[list[str]] = []
    try:
        read_range(unit.start, unit.stop, chains, local_skipped)
    except StructureReadError as e:  # the file itself cannot be read (any more)
        skipped.append(["input", unit.label, str(getattr(e, "reason", None) or e)])
        return []
    except Exception:  # noqa: BLE001 - reader broke mid-chunk: redo it record by record
        chains, local_skipped = [], []
        for line in range(unit.start, min(unit.stop, unit.start + 100_000)):
            c1: list[Any] = []
            s1: list[list[str]] = []
            try:
                read_range(line, line + 1, c1, s1)
            except Exception as e:  # noqa: BLE001
                if isinstance(e, StructureReadError):
                    local_skipped.append(
                        ["input", f"{path}:{line + 1}", str(getattr(e, "reason", None) or e)]
                    )
                    continue
                local_skipped.append(
                    ["input", f"{path}:{line + 1}", f"unexpected error: {type(e).__name__}: {e}"]
                )
            chains.extend(c1)
            local_skipped.extend(s1)
    skipped.extend(local_skipped)
    return chains


def process_unit(unit: WorkUnit, config: PrepareConfig) -> UnitResult:
    """Read one unit and apply the chain policy of ``config`` to each chain."""
    skipped: list[list[str]] = []  # [kind ("input" | filter category), input, reason]
    seen: set[str] = set()  # with --chains: every author chain id the input has
    chains = read_unit_chains(unit, skipped, config.chains, config.seqres, seen)
    policy = ChainPolicy.from_config(config)
    if unit.kind == "fasta":  # sequence-only by choice: see the package docstring
        policy = policy.sequence_only()
    seqs, coords, lengths, ids, sources, plddts, digests = [], [], [], [], [], [], []
    inserted: list[
        int
    ] = []  # per kept chain: unobserved residues put back; -1 = no usable deposited sequence
    zero: list[
        int
    ] = []  # indices (among kept chains) of chains whose every present coordinate is 0
    experimental: list[int] = []  # ... of experimental structures, when pLDDT is asked for
    reads_plddt = config.plddt_min is not None or config.store_plddt
    for chain in chains:
        try:
            cid = chain_id(chain)
            src = str(getattr(chain, "source", None) or unit.path)
            label = f"{cid or '?'} [{src}]"
            if not cid:
                skipped.append([NO_ID, label, f"{NO_ID}: chain has no id"])
                continue
            kept = policy.check(chain)
            if isinstance(kept, Rejected):
                skipped.append([kept.reason, label, kept.message])
                continue
        except Exception as e:  # noqa: BLE001
            skipped.append(
                [
                    BAD_COORDS,
                    f"? [{unit.path}]",
                    f"{BAD_COORDS}: unexpected error: {type(e).__name__}: {e}",
                ]
            )
            continue
        if kept.zero_coords:
            zero.append(len(ids))
        if kept.experimental and reads_plddt:
            experimental.append(len(ids))
        seqs.append(kept.seq)
        coords.append(kept.coords)
        if config.store_plddt:
            plddts.append(kept.plddt)
        lengths.append(len(kept.seq))
        ids.append(cid)
        sources.append(src)
        digests.append(chain_digest(kept.seq, kept.coords))
        if config.seqres != "off":
            observed = getattr(chain, "observed", None)
            # FASTA / chain_set inputs are whole sequences already: nothing to put back
            inserted.append(
                int((~observed).sum()) if observed is not None else -1 if unit.kind == "file" else 0
            )
    meta = PartMeta(
        key=unit.key,
        label=unit.label,
        ids=tuple(ids),
        sources=tuple(sources),
        lengths=tuple(lengths),
        skipped=tuple(tuple(r) for r in skipped),
        chains_read=len(chains) + sum(r[0] == NOT_SELECTED for r in skipped),
        digests=tuple(digests),
        zero_coords=tuple(zero),
        experimental=tuple(experimental),
        chains_found=tuple(sorted({author_chain(chain_id(c)) for c in chains} - {None}))
        if config.chains
        else None,
        chains_seen=tuple(sorted(seen)) if config.chains else None,
        no_chain_ids=sum(bool(cid) and author_chain(cid) is None for cid in map(chain_id, chains))
        if config.chains
        else None,
        ignored_entry=next(
            (c.ignored_entry for c in chains if getattr(c, "ignored_entry", None)), None
        )
        if unit.kind == "file"
        else None,
        seqres_inserted=tuple(inserted) if config.seqres != "off" else None,
    )
    return UnitResult(
        seq=np.concatenate(seqs) if seqs else np.zeros(0, np.uint8),
        coords=np.concatenate(coords)
        if coords
        else np.zeros((0, len(BACKBONE_ATOMS), 3), np.float32),
        lengths=np.asarray(lengths, dtype=np.int64),
        plddt=np.concatenate(plddts) if plddts else np.zeros(0, np.float32),
        meta=meta,
    )


def chain_digest(seq: np.ndarray, coords: np.ndarray) -> str:
    """Fingerprint of a kept chain (sequence and coordinates as stored): equal for the same chain
    read from two files (PDB and mmCIF of one entry), different for decoys of one protein."""
    c = np.array(coords, dtype=np.float32) + np.float32(0.0)  # a copy; -0.0 becomes 0.0
    c[np.isnan(c)] = np.nan  # one NaN bit pattern
    h = hashlib.blake2b(np.ascontiguousarray(seq).tobytes(), digest_size=12)
    h.update(c.tobytes())
    return h.hexdigest()


def empty_result(unit: WorkUnit, reason: str) -> UnitResult:
    """A unit's result when the whole unit failed: no chains, one skipped-input row."""
    meta = PartMeta(
        key=unit.key,
        label=unit.label,
        ids=(),
        sources=(),
        lengths=(),
        skipped=(("input", unit.label, reason),),
        chains_read=0,
    )
    return UnitResult(
        seq=np.zeros(0, np.uint8),
        coords=np.zeros((0, len(BACKBONE_ATOMS), 3), np.float32),
        lengths=np.zeros(0, np.int64),
        meta=meta,
    )


def safe_process_unit(unit: WorkUnit, config: PrepareConfig) -> UnitResult:
    """:func:`process_unit`, with an unexpected error recorded as the unit's skip-log row."""
    try:
        return process_unit(unit, config)
    except Exception as e:  # noqa: BLE001 - a bug or surprise on one input must not stop the run
        return empty_result(unit, f"unexpected error: {type(e).__name__}: {e}")


def run_unit(unit: WorkUnit, config: PrepareConfig, parts_dir: str) -> PartMeta:
    """Process one unit and write its part file; returns the part's meta (small)."""
    result = safe_process_unit(unit, config)
    write_part(Path(parts_dir), unit.key, result)
    return result.meta


# ----------------------------------------------------------------------------------------------
# part files
# ----------------------------------------------------------------------------------------------


def part_path(parts_dir: Path, key: str) -> Path:
    return parts_dir / f"{key}{PART_SUFFIX}"


def write_part(parts_dir: Path, key: str, result: UnitResult) -> None:
    """Write a part atomically (temporary name, then ``os.replace``): it exists only when
    complete."""
    final = part_path(parts_dir, key)
    tmp = parts_dir / f".{key}.tmp.{os.getpid()}"
    meta = np.frombuffer(json.dumps(result.meta.to_json()).encode(), dtype=np.uint8)
    with open(tmp, "wb") as f:
        np.savez(
            f,
            seq=result.seq,
            coords=result.coords,
            lengths=result.lengths,
            meta=meta,
            **({"plddt": result.plddt} if len(result.plddt) else {}),
        )
    os.replace(tmp, final)


def read_part_meta(path: Path) -> PartMeta:
    """A part's meta; raises if the part is unreadable or inconsistent (the unit is then redone)."""
    with np.load(path) as z:
        meta = PartMeta.from_json(json.loads(z["meta"].tobytes().decode()))
        n = int(z["lengths"].shape[0])
    if not (len(meta.ids) == len(meta.lengths) == len(meta.sources) == n):
        raise ValueError("part is inconsistent")
    if meta.chains_found is not None and meta.no_chain_ids is None:
        raise ValueError("part of an older version, which did not log what --chains left out")
    if meta.chains_found is not None and meta.chains_seen is None:
        # redone, so that an error naming the inputs' chains names this unit's too
        raise ValueError("part of an older version, which did not record the chains it has")
    return meta
