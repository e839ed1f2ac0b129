#!/usr/bin/env python
"""Move a prepared dataset to a machine that only accepts a small upload (a lent GPU box), exactly.

    python scripts/transport_dataset.py pack work/pdb_chains_x work/gpu/pdb_chains_ca.tar
    python scripts/transport_dataset.py unpack work/gpu/pdb_chains_ca.tar /tmp/pdb_chains_x

The full coords.npy of the 19,895-chain set is 209 MB; the device tool carries 64 MiB. PDB files
give coordinates to 1/1000 A, so each coordinate is an integer number of milli-Angstrom: stored as
int32 differences between consecutive residues and compressed with LZMA, the CA trace packs to
about 17 MB and unpacks bit-identical (float32). Only CA travels by default (what the default
`--coord-mode ca` model reads); N, C and O come back as NaN, and the unpacked manifest says so in
``transport``. Everything else (sequences, offsets, chain table, splits, manifest) travels verbatim.
``unpack`` checks a SHA-256 of the CA array against the one recorded at ``pack``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import sys
import tarfile
from pathlib import Path

import numpy as np

VERBATIM = ("seq.npy", "offsets.npy", "chains.tsv", "skipped.tsv", "prepare.log")
ATOMS = ("N", "CA", "C", "O")


def _encode(coords: np.ndarray, atom: int) -> tuple[bytes, str]:
    """coords [N, 4, 3] float32 Angstrom -> LZMA of int32 milli-Angstrom row differences of one
    atom."""
    x = np.asarray(coords[:, atom], dtype=np.float32)
    missing = np.isnan(x).any(-1)
    milli = np.round(np.nan_to_num(x).astype(np.float64) * 1000.0)
    if not np.array_equal(_decode_values(milli.astype(np.int32)), np.nan_to_num(x)):
        raise SystemExit("coordinates are not whole milli-Angstrom; this format would not be exact")
    if missing.any():
        raise SystemExit("missing atoms in the packed atom; not supported by this transport format")
    diff = np.diff(milli.astype(np.int64), axis=0, prepend=0)
    if np.abs(diff).max() >= 2**31:
        raise SystemExit("coordinate jump too large for int32")
    return lzma.compress(diff.astype("<i4").tobytes(), preset=6), hashlib.sha256(
        x.tobytes()
    ).hexdigest()


def _decode_values(milli: np.ndarray) -> np.ndarray:
    return (milli.astype(np.int32) / np.float32(1000)).astype(np.float32)


def pack(src: Path, archive: Path, atoms: list[str]) -> None:
    coords = np.load(src / "coords.npy", mmap_mode="r")
    meta = {"n_residues": int(coords.shape[0]), "atoms": {}}
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:

        def add(name: str, data: bytes):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name in VERBATIM:
            add(name, (src / name).read_bytes())
        for p in sorted((src / "splits").glob("*.txt")):
            add(f"splits/{p.name}", p.read_bytes())
        for a in atoms:
            blob, digest = _encode(coords, ATOMS.index(a))
            add(f"{a}.milli.xz", blob)
            meta["atoms"][a] = digest
            print(f"{a}: {len(blob) / 1e6:.1f} MB")
        add("manifest.json", (src / "manifest.json").read_bytes())
        add("transport.json", json.dumps(meta).encode())
    print(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


def unpack(archive: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "splits").mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    meta = json.loads(files.pop("transport.json"))
    coords = np.full((meta["n_residues"], 4, 3), np.nan, dtype=np.float32)
    for a, digest in meta["atoms"].items():
        diff = np.frombuffer(lzma.decompress(files.pop(f"{a}.milli.xz")), dtype="<i4").reshape(
            -1, 3
        )
        x = _decode_values(np.cumsum(diff, axis=0, dtype=np.int64))
        if hashlib.sha256(x.tobytes()).hexdigest() != digest:
            raise SystemExit(f"{a}: checksum mismatch after unpacking")
        coords[:, ATOMS.index(a)] = x
    np.save(dst / "coords.npy", coords)
    manifest = json.loads(files.pop("manifest.json"))
    for name, data in files.items():
        (dst / name).write_bytes(data)
    manifest["transport"] = {
        "atoms_exact": sorted(meta["atoms"]),
        "other_atoms": "NaN (not transported)",
        "by": "scripts/transport_dataset.py",
    }
    (dst / "manifest.json").write_text(
        json.dumps(manifest, indent=2)
    )  # last: marks the dataset finished
    print(f"unpacked {meta['n_residues']:,} residues to {dst} (exact: {', '.join(meta['atoms'])})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("archive", type=Path)
    p.add_argument("--atoms", nargs="+", default=["CA"], choices=ATOMS)
    u = sub.add_parser("unpack")
    u.add_argument("archive", type=Path)
    u.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.src, a.archive, a.atoms)
    else:
        unpack(a.archive, a.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
