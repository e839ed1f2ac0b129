#!/usr/bin/env python
"""Bring a float16 weights file back from a lent GPU box in parts, exactly and with margin.

    python scripts/transport_weights.py pack work/paper-coords.fp16.pt $OUT/paper-coords.fp16
    python scripts/transport_weights.py unpack $OUT/paper-coords.fp16 work/issue16/paper-coords.pt

A device call returns at most 8 files of 16 MiB and 64 MiB in all. `paper-33m` in float16 is
67.5 MB; gzip -1 alone takes it to about 62.6 MB (92.7%), leaving about 4 MiB for the rest of the
stage's record. Trained float16 weights compress badly because the low byte of each value is
nearly random, while the high byte (sign, exponent, top mantissa bits) is not. Storing all even
bytes first and all odd bytes after ("byte shuffle", as Blosc and HDF5 do) lets zlib find the
high bytes' redundancy: 87.4% instead of 92.7% on `small-coords.pt` (level 1). The transform is a
permutation of the file's bytes, so it needs to know nothing about the file's format.

``pack`` writes ``PREFIX.partNN`` (each at most ``--part-mb`` MiB) and ``PREFIX.json`` (the
original size, its SHA-256 and the part names); ``unpack`` joins, inflates, un-shuffles and checks
the SHA-256, and refuses a missing or altered part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np


def shuffle(data: bytes) -> bytes:
    """Even bytes first, then odd bytes. A permutation: `unshuffle` inverts it for any length."""
    a = np.frombuffer(data, dtype=np.uint8)
    return a[0::2].tobytes() + a[1::2].tobytes()


def unshuffle(data: bytes) -> bytes:
    a = np.frombuffer(data, dtype=np.uint8)
    n_even = (len(a) + 1) // 2
    out = np.empty_like(a)
    out[0::2] = a[:n_even]
    out[1::2] = a[n_even:]
    return out.tobytes()


def pack(src: Path, prefix: Path, part_mb: float = 15.0, level: int = 1) -> list[Path]:
    data = src.read_bytes()
    blob = zlib.compress(shuffle(data), level)
    size = int(part_mb * 2**20)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, max(len(blob), 1), size):
        p = prefix.with_name(f"{prefix.name}.part{len(parts):02d}")
        p.write_bytes(blob[i : i + size])
        parts.append(p)
    manifest = {
        "source": src.name,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "parts": [p.name for p in parts],
        "packed_bytes": len(blob),
        "by": "scripts/transport_weights.py",
    }
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(manifest, indent=2))
    print(
        f"{src}: {len(data) / 1e6:.1f} MB -> {len(blob) / 1e6:.1f} MB "
        f"({len(blob) / max(len(data), 1):.1%}) in {len(parts)} part(s)"
    )
    return parts


def unpack(prefix: Path, dst: Path) -> None:
    manifest_path = prefix.with_name(prefix.name + ".json")
    if not manifest_path.is_file():
        raise SystemExit(f"no {manifest_path}: give the PREFIX that pack wrote (without .json)")
    manifest = json.loads(manifest_path.read_text())
    missing = [n for n in manifest["parts"] if not (prefix.parent / n).is_file()]
    if missing:
        raise SystemExit(f"missing part(s) {', '.join(missing)} beside {manifest_path}")
    blob = b"".join((prefix.parent / n).read_bytes() for n in manifest["parts"])
    try:
        data = unshuffle(zlib.decompress(blob))
    except zlib.error as e:
        raise SystemExit(f"{prefix}: the parts do not inflate ({e}); is one cut short?") from None
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"{prefix}: checksum mismatch after unpacking; a part is damaged")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    print(f"unpacked {dst} ({len(data) / 1e6:.1f} MB, SHA-256 checked)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("prefix", type=Path)
    p.add_argument("--part-mb", type=float, default=15.0, help="MiB per part (the tool: 16)")
    p.add_argument("--level", type=int, default=1, choices=range(1, 10), help="zlib level")
    u = sub.add_parser("unpack")
    u.add_argument("prefix", type=Path)
    u.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.src, a.prefix, a.part_mb, a.level)
    else:
        unpack(a.prefix, a.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
