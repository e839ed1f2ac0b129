#!/usr/bin/env python
"""The no-context baseline: perplexity and recovery of predicting train-split
amino-acid frequencies.

A masked-LM that has learned nothing beyond residue frequencies scores exactly this, so it is the
floor every model's evaluation should be read against.

    python benchmarks/frequency_baseline.py --data work/pdb_chains_x --split test
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from coordformer.constants import AMINO_ACIDS
from coordformer.data.store import PreparedDataset

AA = np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)


def residue_counts(ds: PreparedDataset, idx: np.ndarray) -> np.ndarray:
    counts = np.zeros(256, dtype=np.int64)
    for i in idx:
        counts += np.bincount(ds.seq_bytes(int(i)), minlength=256)
    return counts[AA]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    ds = PreparedDataset(args.data)
    p = residue_counts(ds, ds.split_indices("train")).astype(float)
    q = residue_counts(ds, ds.split_indices(args.split)).astype(float)
    p, q = p / p.sum(), q / q.sum()
    res = {
        "perplexity": float(np.exp(-(q * np.log(p)).sum())),
        "recovery": float(q[p.argmax()]),
        "always_predicts": AMINO_ACIDS[int(p.argmax())],
        "split": args.split,
    }
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
