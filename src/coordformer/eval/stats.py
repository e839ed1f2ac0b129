"""Paired comparisons of two evaluations on the same masked residues."""

from __future__ import annotations

import math

import numpy as np

from ..config import SEED


def paired_bootstrap(a: dict, b: dict, n_boot: int = 2000, seed: int = SEED) -> dict:
    """Bootstrap over chains (resampled with replacement, the same draw for both models).

    a, b: evaluate_mlm() outputs with ``per_chain`` on the same dataset split and masking seed.
    Returns the perplexity ratio a/b and recovery difference a - b (percentage points) with 95%
    intervals. Captures variation due to which chains and residues are evaluated, not training
    seeds.
    """
    ids = sorted(set(a["per_chain"]) & set(b["per_chain"]))
    if not ids:
        raise ValueError("no chains in common: were both evaluated on the same split?")
    A = np.array([a["per_chain"][i] for i in ids], dtype=float)  # [C, 3]: n, nll, correct
    B = np.array([b["per_chain"][i] for i in ids], dtype=float)
    if not np.array_equal(A[:, 0], B[:, 0]):
        raise ValueError(
            "masked-residue counts differ per chain: evaluations did not use identical masks"
        )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    n = A[draws, 0].sum(1)
    ratio = np.exp((A[draws, 1].sum(1) - B[draws, 1].sum(1)) / n)
    diff = (A[draws, 2].sum(1) - B[draws, 2].sum(1)) / n * 100
    tot = A[:, 0].sum()
    return {
        "n_chains": len(ids),
        "perplexity_ratio": math.exp((A[:, 1].sum() - B[:, 1].sum()) / tot),
        "perplexity_ratio_ci95": [
            float(np.percentile(ratio, 2.5)),
            float(np.percentile(ratio, 97.5)),
        ],
        "recovery_diff_pt": float((A[:, 2].sum() - B[:, 2].sum()) / tot * 100),
        "recovery_diff_pt_ci95": [
            float(np.percentile(diff, 2.5)),
            float(np.percentile(diff, 97.5)),
        ],
    }
