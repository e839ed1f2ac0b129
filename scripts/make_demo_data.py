#!/usr/bin/env python
"""Build the demo bundle shipped in the package: real held-out PDB chains with stated provenance.

Chains are drawn (seeded) from the *test* split of a dataset prepared with `coordformer prepare
--split identity` from ../shared/data/pdb_chains, the same dataset whose *train* split trains the
shipped models, so no bundled chain (nor any chain in its 30%-identity MMseqs2 cluster) was seen in
training. Writes src/coordformer/resources/demo/heldout_chains.jsonl.gz and PROVENANCE.md.

    python scripts/make_demo_data.py --data work/pdb_chains --n 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from coordformer.data.store import PreparedDataset
from coordformer.io import Chain, write_chain_set

OUT = Path(__file__).resolve().parents[1] / "src" / "coordformer" / "resources" / "demo"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        required=True,
        help="prepared dataset (identity split) the shipped models train on",
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--min-length", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=350)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = PreparedDataset(args.data)
    test = ds.split_indices("test")
    ok = test[(ds.lengths[test] >= args.min_length) & (ds.lengths[test] <= args.max_length)]
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(ok, size=min(args.n, len(ok)), replace=False))
    chains = [
        Chain(
            id=ds.ids[i],
            sequence=ds.sequence(i),
            coords=np.array(ds.coords(i)),
            source=ds.source(i),
        )
        for i in chosen
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "heldout_chains.jsonl.gz"
    write_chain_set(chains, out, decimals=2)
    n_res = int(sum(len(c) for c in chains))
    prov = f"""# Bundled demo data: held-out PDB chains

`heldout_chains.jsonl.gz`: {len(chains)} real protein chains ({n_res} residues), chain_set JSONL
(CATH-4.2 style: name, seq, coords N/CA/C/O in Angstrom rounded to 0.01).

- Origin: `../shared/data/pdb_chains/chains.jsonl.gz` of the coordformer development machines, which
  is ProMod3's structure database (Debian `promod3-data` 3.2.1), derived from the Protein Data Bank.
  PDB data is CC0; ProMod3 is Apache-2.0 (Studer et al., PLoS Comput Biol 2021).
- Selection: `python scripts/make_demo_data.py --data {args.data} --n {args.n} \
--min-length {args.min_length} --max-length {args.max_length} --seed {args.seed}`:
  a seeded random sample of chains of length {args.min_length}-{args.max_length} \
from the **test** split of
  the dataset prepared with the command in `../models/README.md` \
(MMseqs2 clusters at 30% identity never
  cross splits; DeepFRI EC/GO valid+test chains are forced into test). \
The shipped models were trained
  on that dataset's train split only, so they have seen neither these chains nor their 30%-identity
  cluster members.
- Dataset manifest at selection time: {ds.manifest.get("n_chains")} chains, \
splits {json.dumps(ds.manifest.get("splits"))},
  created {ds.manifest.get("created")}.
- SHA-256 of this file: {sha256(out)}

Chain ids: {", ".join(c.id for c in chains)}
"""
    (OUT / "PROVENANCE.md").write_text(prov)
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {len(chains)} chains, {n_res} residues)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
