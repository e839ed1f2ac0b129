"""The one rule for numerically unsafe coordinates, applied where chains enter a dataset.

``prepare`` calls it on every chain (``ChainPolicy.check``), and the direct-input commands
(``embed``, ``score``) apply the same policy, so no other code path needs to repeat it. The model
may then rely on coordinates being finite (or NaN = missing) and bounded.
"""

from __future__ import annotations

import numpy as np

#: Largest allowed |coordinate| in Angstrom. The PDB format's 8.3f fields cannot hold more than
#: 9999.999, so any structure that can be written as PDB stays within it; beyond it a value is a
#: unit or parsing error, not a structure. The bound also keeps the model's inputs safe: after
#: centring each component is at most 2e4 A, so the |x/16|^2 feature stays below 3 (2e4/16)^2 ~ 5e6,
#: far inside float32.
MAX_ABS_COORD = 1e4

#: Start of the skip-log reason for a chain rejected by the bound.
OUT_OF_RANGE = f"coordinates beyond ±{MAX_ABS_COORD:g} Å"


def sanitize_coords(coords) -> tuple[np.ndarray, str | None]:
    """Apply the coordinate rule to one chain.

    Args:
        coords: [L, A, 3] coordinates in Angstrom (any real dtype; NaN = missing).
    Returns:
        (float32 [L, A, 3] with every atom that has a non-finite component (NaN, +/-Inf) set wholly
        to NaN, i.e. missing; None) when the chain is usable, or (that array, reason) when a present
        atom lies beyond ``MAX_ABS_COORD``, in which case the chain must be rejected: a few absurd
        atoms mean its other coordinates cannot be trusted either.
    """
    # float64 so that values beyond float32's range are caught by the bound, not turned into Inf
    # (and then silently masked) by the cast.
    raw = np.asarray(coords, dtype=np.float64)
    missing = ~np.isfinite(raw).all(axis=-1)  # [L, A]
    biggest = float(np.abs(raw[~missing]).max(initial=0.0))
    with np.errstate(
        over="ignore"
    ):  # values beyond float32 overflow to Inf; the bound rejects them below
        out = raw.astype(np.float32)
    out[missing] = np.nan
    if biggest > MAX_ABS_COORD:
        return out, f"{OUT_OF_RANGE} (max |x| = {biggest:.3g} Å)"
    return out, None
