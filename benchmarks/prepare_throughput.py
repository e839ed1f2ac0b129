r"""`prepare` throughput on gzipped mmCIF files, in structures/s, for 1..N worker processes.

    python benchmarks/prepare_throughput.py --structures 400 --workers 1 2

There is no mmCIF corpus offline, so the inputs are written first: the bundled held-out chains
(real PDB backbones, src/coordformer/resources/demo) as one .cif.gz per chain (N, CA, C, O atoms,
written by gemmi as a deposited file would be). Then `coordformer prepare` (random split) reads the
folder with each worker count into a fresh output folder; the time covers finding, parsing,
filtering, writing the memory-mapped arrays and the splits. Real deposited files carry side chains,
waters and ligands as well, so they parse slower per residue than these backbone-only files.

    python benchmarks/prepare_throughput.py --deposited --structures 400 --workers 1 2

reads whole deposited entries instead: the mmCIF files of tests/data (PDB 1A8O, 3JQH, 5I55, as
distributed by the PDB, with side chains, alternate locations, waters and ligands), copied
round-robin under new entry ids (gemmi, every other line untouched) and gzipped.

    python benchmarks/prepare_throughput.py --deposited --structures 400 --workers 1 \
        --seqres off gaps

times each `--seqres` mode side by side (same files, same run) and prints its throughput relative
to the first mode given.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path


def write_cif_gz(chains, folder: Path) -> int:
    """One backbone-only .cif.gz per chain; returns the number of residues written."""
    import gemmi
    import numpy as np

    from coordformer.constants import BACKBONE_ATOMS

    folder.mkdir(parents=True, exist_ok=True)
    n_res = 0
    for k, ch in enumerate(chains):
        st = gemmi.Structure()
        st.name = f"X{k:04d}"
        model = gemmi.Model(1)
        chain = gemmi.Chain("A")
        for i, aa in enumerate(ch.sequence):
            res = gemmi.Residue()
            res.name = gemmi.expand_one_letter(aa, gemmi.ResidueKind.AA) or "UNK"
            res.seqid = gemmi.SeqId(i + 1, " ")
            res.entity_type = gemmi.EntityType.Polymer
            for a, name in enumerate(BACKBONE_ATOMS):
                xyz = ch.coords[i, a]
                if np.isnan(xyz).any():
                    continue
                atom = gemmi.Atom()
                atom.name = name
                atom.element = gemmi.Element(name[0])
                atom.pos = gemmi.Position(*map(float, xyz))
                atom.occ = 1.0
                res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
        st.add_model(model)
        st.setup_entities()
        text = st.make_mmcif_document().as_string()
        with gzip.open(folder / f"{st.name}.cif.gz", "wt") as fh:
            fh.write(text)
        n_res += len(ch.sequence)
    return n_res


DEPOSITED = ("1A8O.cif", "3JQH.cif", "5i55.cif")


def _entry_id(k: int) -> str:
    """A distinct PDB-style id (digit + 3 alphanumerics) per copy."""
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "9" + "".join(digits[(k // 36**i) % 36] for i in (2, 1, 0))


def write_deposited_gz(n: int, folder: Path) -> tuple[int, int]:
    """n gzipped copies of the deposited mmCIF files in tests/data, each under its own entry id;
    returns (files, residues of the protein chains, as prepare counts them in one copy each)."""
    import gemmi

    folder.mkdir(parents=True, exist_ok=True)
    data = Path(__file__).resolve().parent.parent / "tests" / "data"
    n_res = 0
    per_file = {}
    for name in DEPOSITED:
        st = gemmi.read_structure(str(data / name))
        per_file[name] = sum(len(ch.get_polymer()) for ch in st[0])
    for k in range(n):
        name = DEPOSITED[k % len(DEPOSITED)]
        doc = gemmi.cif.read(str(data / name))
        block = doc.sole_block()
        new = _entry_id(k)
        block.name = new
        block.set_pair("_entry.id", new)
        with gzip.open(folder / f"{new}.cif.gz", "wt") as fh:
            fh.write(doc.as_string())
        n_res += per_file[name]
    return n, n_res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--structures", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--deposited",
        action="store_true",
        help="whole deposited entries (tests/data mmCIF files), not backbone-only files",
    )
    ap.add_argument(
        "--seqres",
        nargs="+",
        default=["off"],
        choices=["off", "gaps", "all"],
        help="prepare --seqres modes to time side by side (default: off)",
    )
    a = ap.parse_args(argv)

    from coordformer.config import PrepareConfig
    from coordformer.data.prepare import prepare
    from coordformer.demo import bundled_chains
    from coordformer.io import iter_chain_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cif"
        if a.deposited:
            n_files, n_res = write_deposited_gz(a.structures, src)
        else:
            chains = [c for c in iter_chain_set(bundled_chains()) if not isinstance(c, Exception)][
                : a.structures
            ]
            n_files, n_res = len(chains), write_cif_gz(chains, src)
        size = sum(p.stat().st_size for p in src.iterdir())
        print(
            f"wrote {n_files} .cif.gz files ({n_res:,} protein residues, {size / 1e6:.1f} MB) "
            f"to {src}"
        )
        for w in a.workers:
            first = None
            for k, mode in enumerate(
                a.seqres
            ):  # a mode may repeat (e.g. off ... off, to see the noise)
                out = Path(tmp) / f"out{w}-{k}-{mode}"
                t0 = time.perf_counter()
                summary = prepare(
                    [src],
                    out,
                    PrepareConfig(split="random", seqres=mode),
                    workers=w,
                    progress=False,
                    log=lambda s: None,
                )
                dt = time.perf_counter() - t0
                first = first or dt
                kept = summary.chains_kept
                rows.append(
                    {
                        "workers": w,
                        "seqres": mode,
                        "files": n_files,
                        "deposited": a.deposited,
                        "chains_kept": kept,
                        "residues_kept": summary.n_residues,
                        "seconds": round(dt, 2),
                        "structures_per_s": round(n_files / dt, 1),
                        "residues_per_s": round(n_res / dt),
                    }
                )
                print(
                    f"{w} worker(s), seqres {mode}: {n_files} files in {dt:.1f} s = "
                    f"{n_files / dt:.1f} structures/s, {n_res / dt:,.0f} residues/s "
                    f"({kept} chains, {summary.n_residues:,} residues kept)"
                    + (
                        f"; throughput {first / dt:.2f}x that of the first ({a.seqres[0]})"
                        if k
                        else ""
                    )
                )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
