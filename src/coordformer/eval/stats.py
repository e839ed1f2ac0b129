"""Paired comparisons of two evaluations on the same masked residues."""

from __future__ import annotations

import math

import numpy as np

from ..config import SEED

#: evaluate_mlm settings that decide which residues are masked, and how: a paired comparison
#: needs them equal (hide_coords and use_coords are what comparisons vary)
_SAME_MASKS = ("seed", "mask_prob", "crop_length", "windows", "masking")


def paired_bootstrap(a: dict, b: dict, n_boot: int = 2000, seed: int = SEED) -> dict:
    """Bootstrap over chains (resampled with replacement, the same draw for both models).

    a, b: evaluate_mlm() outputs with ``per_chain`` on the same chains and masks (ValueError
    otherwise: chains evaluated by one run only, or mask settings that differ); chains without a
    masked residue are left out (``n_chains`` counts the others).
    Returns the perplexity ratio a/b and recovery difference a - b (percentage points) with 95%
    intervals. Captures variation due to which chains and residues are evaluated, not training
    seeds.
    """
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    differ = [k for k in _SAME_MASKS if k in sa and k in sb and sa[k] != sb[k]]
    if differ:
        raise ValueError(
            "the evaluations masked differently ("
            + ", ".join(f"{k} {sa[k]!r} vs {sb[k]!r}" for k in differ)
            + "): compare runs of one protocol"
        )
    only = set(a["per_chain"]) ^ set(b["per_chain"])
    if only:
        raise ValueError(
            f"{len(only)} chains were evaluated by one run only (e.g. {sorted(only)[0]}): "
            "evaluate both on the same chains (split, max_chains)"
        )
    # chains without a masked residue carry nothing, and a draw of only those would divide by 0
    ids = sorted(i for i in a["per_chain"] if a["per_chain"][i][0] > 0)
    if not ids:
        raise ValueError("no chain has a masked residue: nothing to compare")
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
