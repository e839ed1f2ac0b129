#!/usr/bin/env python
"""How held out is a held-out split? The share of its chains with a homologue in the train split.

The paper validated on a random 1% of a 95%-non-redundant PDB set; our test split holds out whole
30%-identity clusters. This measures both on the same chains: the prepared dataset's own held-out
splits against its train split, and a random split of the same chains made as `prepare --split
random` makes it (the paper's protocol: seeded hash of the chain id), against its train split.
For each held-out chain, its best train hit (MMseqs2 easy-search, E <= 1e-3, over at least half of
the shorter sequence, `coordformer.data.splits.find_homologues`); reported: the share with a hit
at or above each sequence identity, and the share with an identical sequence in train.

    python benchmarks/holdout_homologues.py --data work/pdb_chains_x --json work/holdout.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from coordformer.config import PrepareConfig
from coordformer.data.splits import TEST, TRAIN, VALID, find_homologues, random_split
from coordformer.data.store import PreparedDataset


def homologue_shares(
    sequences: list[str], codes: np.ndarray, held: int, identities: list[float], threads: int
) -> dict:
    """{"n_held_out", "identical", "at_least": {identity: share}} for the chains of split code
    ``held`` against those of TRAIN."""
    queries = np.flatnonzero(codes == held)
    train = np.flatnonzero(codes == TRAIN)
    hits = find_homologues(
        [sequences[i] for i in queries],
        [sequences[i] for i in train],
        min(identities),
        threads=threads,
    )
    best = np.array([hits[q].identity if q in hits else 0.0 for q in range(len(queries))])
    train_seqs = {sequences[i] for i in train}
    identical = sum(sequences[i] in train_seqs for i in queries)
    n = max(len(queries), 1)
    return {
        "n_held_out": int(len(queries)),
        "n_train": int(len(train)),
        "identical": identical / n,
        "at_least": {f"{t:g}": float((best >= t).sum() / n) for t in identities},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared dataset folder")
    ap.add_argument(
        "--valid-fraction", type=float, default=0.01, help="the random split's held-out share"
    )
    ap.add_argument("--seed", type=int, default=0, help="the random split's seed")
    ap.add_argument("--identities", type=float, nargs="+", default=[0.3, 0.5, 0.95])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    t0 = time.time()
    ds = PreparedDataset(args.data)
    sequences = [ds.sequence(i) for i in range(len(ds))]
    own = np.full(len(ds), -1, dtype=np.int8)
    for code, name in ((TRAIN, "train"), (VALID, "valid"), (TEST, "test")):
        if name in ds.split_names:
            own[ds.split_indices(name)] = code
    cfg = PrepareConfig(split="random", valid_fraction=args.valid_fraction, test_fraction=0.0)
    rand = random_split(ds.ids, PrepareConfig.from_dict({**cfg.to_dict(), "seed": args.seed}))
    results = {
        f"{ds.config.split} split ({ds.path.name}), test": homologue_shares(
            sequences, own, TEST, args.identities, args.threads
        ),
        f"{ds.config.split} split ({ds.path.name}), valid": homologue_shares(
            sequences, own, VALID, args.identities, args.threads
        ),
        f"random split, valid {args.valid_fraction:g} (the paper's protocol)": homologue_shares(
            sequences, rand, VALID, args.identities, args.threads
        ),
    }
    head = ["held-out set", "chains", "identical in train"] + [
        f">= {float(t):.0%} identity" for t in args.identities
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        cells = [name, f"{r['n_held_out']:,}", f"{r['identical']:.1%}"]
        cells += [f"{v:.1%}" for v in r["at_least"].values()]
        print("| " + " | ".join(cells) + " |")
    record = {
        "data": {"path": str(ds.path.resolve()), "fingerprint": ds.fingerprint},
        "settings": vars(args),
        "results": results,
        "seconds": time.time() - t0,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
