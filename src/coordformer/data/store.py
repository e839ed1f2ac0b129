"""On-disk layout of a prepared dataset, its writer helpers and the memory-mapped reader.

Layout of a prepared dataset folder (format version ``constants.DATASET_FORMAT_VERSION``)::

    manifest.json   format_version, coordformer_version, config, counts, splits, created, ...
    seq.npy         uint8   [N_res]          ASCII one-letter codes
    coords.npy      float32 [N_res, 4, 3]    Angstrom, N/CA/C/O, NaN = missing
    offsets.npy     int64   [n_chains + 1]   chain i = rows offsets[i]:offsets[i+1]
    plddt.npy       float32 [N_res]          optional (prepare --store-plddt): pLDDT 0-100,
                                             NaN unknown
    chains.tsv      "id<TAB>length<TAB>source", one row per chain, in index order
    splits/{train,valid,test}.txt             chain ids, one per line
    skipped.tsv     "input<TAB>reason", every skipped input / record / filtered chain
    prepare.log     human-readable summary of the run

``manifest.json`` is written last, so a folder holding one is a finished dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import ConfigError, PrepareConfig
from ..constants import BACKBONE_ATOMS, DATASET_FORMAT_VERSION
from ..errors import CoordformerError
from ..io import normalize_chain_id

MANIFEST = "manifest.json"
SEQ_FILE = "seq.npy"
COORDS_FILE = "coords.npy"
OFFSETS_FILE = "offsets.npy"
CHAINS_FILE = "chains.tsv"
SKIPPED_FILE = "skipped.tsv"
LOG_FILE = "prepare.log"
#: Ids of the --exclude lists that match no chain exactly (written only when there are any).
EXCLUDE_UNMATCHED_FILE = "exclude_unmatched.txt"
SPLITS_DIR = "splits"
WORK_DIR = ".work"
SPLIT_NAMES = ("train", "valid", "test")
CHAINS_HEADER = ("id", "length", "source")
SKIPPED_HEADER = ("input", "reason")
PLDDT_FILE = "plddt.npy"
ARRAY_FILES = (SEQ_FILE, COORDS_FILE, OFFSETS_FILE)
#: Every file/folder a finished dataset consists of (what ``overwrite`` removes).
DATASET_ENTRIES = (
    MANIFEST,
    *ARRAY_FILES,
    PLDDT_FILE,
    CHAINS_FILE,
    SKIPPED_FILE,
    LOG_FILE,
    SPLITS_DIR,
    EXCLUDE_UNMATCHED_FILE,
)


class UnknownSplitError(CoordformerError, KeyError):
    """A split name the dataset does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DatasetFormatError(CoordformerError):
    """A folder is not a readable prepared dataset (missing files, wrong format version,
    corrupt)."""


# ----------------------------------------------------------------------------------------------
# writer helpers
# ----------------------------------------------------------------------------------------------


def tsv_field(value: Any) -> str:
    """A value made safe for one TSV cell (tabs and line breaks become spaces)."""
    return str(value).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never a half file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_tsv(path: str | Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a TSV (header + rows) atomically."""
    lines = ["\t".join(header)]
    lines.extend("\t".join(tsv_field(v) for v in row) for row in rows)
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_tsv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open(
        path, encoding="utf-8-sig"
    ) as f:  # -sig: a file saved by a Windows editor starts with a BOM
        lines = f.read().splitlines()
    if not lines:
        return [], []
    return lines[0].split("\t"), [ln.split("\t") for ln in lines[1:] if ln]


def write_id_list(path: str | Path, ids: Iterable[str]) -> None:
    ids = list(ids)
    atomic_write_text(path, "".join(f"{i}\n" for i in ids))


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically; call it last, it marks the dataset as finished."""
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=2) + "\n")


#: Manifest fields that say when and by which version a dataset was written, not what it holds.
_NOT_CONTENT = ("created", "coordformer_version")


def content_digest(directory: str | Path, ids: Sequence[str], codes: np.ndarray) -> str:
    """A hash of what a dataset folder holds: its chain ids in order, their split codes, and the
    bytes of its arrays (sequences, coordinates, offsets, pLDDT when stored). The manifest keeps
    it as ``content_digest``, from which :func:`manifest_fingerprint` is made."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update("\n".join(ids).encode())
    h.update(np.ascontiguousarray(codes, dtype=np.int8).tobytes())
    for name in (*ARRAY_FILES, PLDDT_FILE):
        path = Path(directory) / name
        h.update(name.encode())
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
    return h.hexdigest()


def manifest_fingerprint(manifest: dict[str, Any]) -> str:
    """A short hash of what a dataset holds, so that the same inputs prepared again, or the folder
    moved, give the same fingerprint, and other data another. ``pretrain`` refuses to resume a run
    on a dataset with another one.

    From the manifest's ``content_digest`` (the chains' ids, splits and arrays) and format version:
    settings that do not change what is stored (how an --exclude file's path was written) do not
    count, and data that differs with equal counts does. Datasets prepared before the digest was
    recorded keep their fingerprint of the manifest (settings, counts, split sizes), without the
    creation time and writer version."""
    import hashlib

    if manifest.get("content_digest"):
        content = {k: manifest.get(k) for k in ("content_digest", "format_version")}
    else:
        content = {k: v for k, v in manifest.items() if k not in _NOT_CONTENT}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def is_finished_dataset(directory: str | Path) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def refuse_unfinished_datasets(inputs) -> None:
    """DatasetFormatError for the first of ``inputs`` that is a prepared dataset folder a `prepare`
    run has not finished (its work folder or lock, no manifest): read as structure inputs, its
    array files would each be listed as skipped, and nothing would say why."""
    for p in map(Path, inputs):
        if (
            p.is_dir()
            and not is_finished_dataset(p)
            and ((p / WORK_DIR).exists() or (p / ".prepare.lock").exists())
        ):
            raise DatasetFormatError(
                f"{p}: an unfinished prepared dataset (no {MANIFEST}: `coordformer prepare` was "
                "interrupted or still runs); re-run prepare with the same arguments to finish it"
            )


# ----------------------------------------------------------------------------------------------
# reader
# ----------------------------------------------------------------------------------------------


class ChainArrays:
    """Per-chain access to chains stored concatenated residue by residue, shared by
    :class:`PreparedDataset` (memory maps) and ``data.memory.MemoryDataset`` (arrays in memory).

    Subclasses set ``ids`` [n]; ``_offsets`` int64 [n + 1] (chain i is residues
    offsets[i]:offsets[i + 1]); ``_seq`` uint8 [N_res]; ``_coords`` float32 [N_res, 4, 3];
    ``_plddt`` float32 [N_res] or None. Every accessor returns a view.
    """

    ids: list[str]
    _offsets: np.ndarray
    _seq: np.ndarray
    _coords: np.ndarray
    _plddt: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_residues(self) -> int:
        return int(self._offsets[-1])

    @property
    def offsets(self) -> np.ndarray:
        """int64 [n + 1]: chain i is residues offsets[i]:offsets[i + 1]."""
        return self._offsets

    def _span(self, i: int) -> slice:
        n = len(self.ids)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"chain index {i} out of range for dataset of {n} chains")
        return slice(int(self._offsets[i]), int(self._offsets[i + 1]))

    def seq_bytes(self, i: int) -> np.ndarray:
        """uint8 [L] view of chain ``i``'s ASCII one-letter codes."""
        return self._seq[self._span(i)]

    def sequence(self, i: int) -> str:
        return self.seq_bytes(i).tobytes().decode("ascii")

    def coords(self, i: int) -> np.ndarray:
        """float32 [L, 4, 3] view (Angstrom, N/CA/C/O, NaN missing) of chain ``i``."""
        return self._coords[self._span(i)]

    @property
    def has_plddt(self) -> bool:
        """Whether per-residue pLDDT is held (``prepare --store-plddt``, or kept on reading)."""
        return self._plddt is not None

    def plddt(self, i: int) -> np.ndarray | None:
        """float32 [L] view of chain ``i``'s pLDDT (0-100, NaN unknown), or None if not held."""
        return None if self._plddt is None else self._plddt[self._span(i)]

    @property
    def has_known_plddt(self) -> bool:
        """Whether any residue's pLDDT is known: a dataset of experimental structures prepared
        with ``--store-plddt`` holds the array, all NaN (their B-factors are no pLDDT)."""
        return self._plddt is not None and bool(np.isfinite(self._plddt).any())


class PreparedDataset(ChainArrays):
    """Read-only, memory-mapped view of a prepared dataset folder.

    Arrays are memory-mapped, so opening is cheap and per-chain access returns views; the only
    per-chain Python objects are the id list (and a lazily built id -> index dict).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        d = self.path
        if not d.is_dir():
            raise DatasetFormatError(
                f"{d}: not a folder (expected a dataset made by `coordformer prepare`)"
            )
        mpath = d / MANIFEST
        if not mpath.is_file():
            hint = (
                " (an unfinished run? re-run prepare with the same arguments to finish it)"
                if (d / WORK_DIR).exists()
                else ""
            )
            raise DatasetFormatError(f"{d}: no {MANIFEST}; not a finished prepared dataset{hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as e:
            raise DatasetFormatError(f"{mpath}: unreadable manifest ({e})") from e
        version = self.manifest.get("format_version")
        if version != DATASET_FORMAT_VERSION:
            raise DatasetFormatError(
                f"{d}: dataset format version {version!r}, but this coordformer reads version "
                f"{DATASET_FORMAT_VERSION}; re-run `coordformer prepare` with this version "
                f"(dataset written by coordformer {self.manifest.get('coordformer_version', '?')})"
            )
        missing = [n for n in (*ARRAY_FILES, CHAINS_FILE) if not (d / n).is_file()]
        if missing:
            raise DatasetFormatError(f"{d}: missing dataset file(s) {', '.join(missing)}")
        try:
            self.config = PrepareConfig.from_dict(self.manifest.get("config", {}))
        except (ConfigError, TypeError) as e:
            raise DatasetFormatError(f"{d}: manifest config unreadable: {e}") from e
        try:
            self._seq = np.load(d / SEQ_FILE, mmap_mode="r")
            self._coords = np.load(d / COORDS_FILE, mmap_mode="r")
            self._offsets = np.load(d / OFFSETS_FILE, mmap_mode="r")
            self._plddt = (
                np.load(d / PLDDT_FILE, mmap_mode="r") if (d / PLDDT_FILE).is_file() else None
            )
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty .npy
            raise DatasetFormatError(
                f"{d}: unreadable array file ({type(e).__name__}: {e or 'empty file'}); prepare "
                "the dataset again"
            ) from e
        header, rows = read_tsv(d / CHAINS_FILE)
        if tuple(header) != CHAINS_HEADER:
            raise DatasetFormatError(
                f"{d / CHAINS_FILE}: header {header}, expected {list(CHAINS_HEADER)}"
            )
        self.ids: list[str] = [r[0] for r in rows]
        self._sources = None
        n = len(self.ids)
        off = np.asarray(self._offsets, dtype=np.int64)
        n_res = off[-1] if len(off) else -1
        if (
            self._offsets.shape != (n + 1,)
            or self._seq.dtype != np.uint8
            or self._seq.shape != (n_res,)
            or self._coords.shape != (n_res, len(BACKBONE_ATOMS), 3)
            or self._coords.dtype != np.float32
            or off[0] != 0
        ):
            raise DatasetFormatError(
                f"{d}: inconsistent arrays (chains.tsv has {n} chains, "
                f"offsets {self._offsets.shape}, seq {self._seq.shape} {self._seq.dtype}, "
                f"coords {self._coords.shape} {self._coords.dtype})"
            )
        if self._plddt is not None and self._plddt.shape != (n_res,):
            raise DatasetFormatError(
                f"{d}: {PLDDT_FILE} has shape {self._plddt.shape}, expected ({n_res},)"
            )
        self.lengths: np.ndarray = np.diff(off).astype(np.int64)
        if (self.lengths < 0).any():
            raise DatasetFormatError(f"{d}: offsets are not increasing")
        self._index: dict[str, int] | None = None
        self._splits: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return (
            f"PreparedDataset({str(self.path)!r}, chains={len(self)}, "
            f"residues={int(self.lengths.sum())})"
        )

    @property
    def fingerprint(self) -> str:
        """See :func:`manifest_fingerprint`."""
        return manifest_fingerprint(self.manifest)

    def source(self, i: int) -> str:
        if self._sources is None:
            _, rows = read_tsv(self.path / CHAINS_FILE)
            self._sources = [r[2] if len(r) > 2 else "" for r in rows]
        return self._sources[i]

    def index_of(self, chain_id: str) -> int:
        """Index of a chain id (exact, else after normalising spellings like ``12AS-A``)."""
        if self._index is None:
            self._index = {c: i for i, c in enumerate(self.ids)}
        if chain_id in self._index:
            return self._index[chain_id]
        norm = normalize_chain_id(chain_id)
        if norm in self._index:
            return self._index[norm]
        raise KeyError(f"chain id {chain_id!r} not in dataset {self.path}")

    @property
    def split_names(self) -> list[str]:
        sd = self.path / SPLITS_DIR
        return sorted(p.stem for p in sd.glob("*.txt")) if sd.is_dir() else []

    def split_indices(self, name: str) -> np.ndarray:
        """int64 indices (ascending, i.e. dataset order) of the chains in split ``name``."""
        if name not in self._splits:
            f = self.path / SPLITS_DIR / f"{name}.txt"
            if not f.is_file():
                raise UnknownSplitError(
                    f"unknown split {name!r} in {self.path}; "
                    f"available: {', '.join(self.split_names) or 'none'}"
                )
            ids = [
                ln.strip() for ln in f.read_text(encoding="utf-8-sig").splitlines() if ln.strip()
            ]
            try:
                idx = [self.index_of(c) for c in ids]
            except KeyError as e:
                raise DatasetFormatError(f"{f}: {e.args[0]}") from None
            self._splits[name] = np.sort(np.asarray(idx, dtype=np.int64))
        return self._splits[name]
