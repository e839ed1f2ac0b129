"""Multi-label function-prediction metrics: protein-centric Fmax, micro-averaged AUPR, flattened max
F1.

Every metric takes ``y_true`` [N, C] (0/1 or bool; N proteins, C classes) and ``y_score`` [N, C]
(scores in [0, 1], e.g. sigmoid outputs) and returns a Python float, NaN when it is undefined (no
positive label at all). A threshold ``t`` predicts every (protein, class) pair with ``score >= t``;
tied scores are always predicted together, so the results do not depend on the order of proteins or
classes (up to floating-point rounding).
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

# CAFA's grid: thresholds 0.00, 0.01, ..., 1.00.
CAFA_THRESHOLDS = np.linspace(0.0, 1.0, 101)
#: DeepFRI's evaluation grid (Gligorijevic et al. 2021): 0.01, ..., 0.99, a pair predicted when its
#: score is strictly above the threshold.
DEEPFRI_THRESHOLDS = np.arange(1, 100) / 100.0

# Rows per block in fmax, so that the sorted copies of a block stay around 16 MB whatever N is.
_BLOCK_ELEMENTS = 2_000_000


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    yt = np.asarray(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.ndim != 2 or yt.shape != ys.shape:
        raise ValueError(
            f"y_true and y_score must both be [N, C] arrays, got shapes {yt.shape} and {ys.shape}"
        )
    if yt.dtype != bool:
        if np.any((yt != 0) & (yt != 1)):
            raise ValueError("y_true must contain only 0 and 1")
        yt = yt != 0
    if np.isnan(ys).any():
        raise ValueError("y_score contains NaN")
    return yt, ys


def fmax(
    y_true,
    y_score,
    thresholds: Iterable[float] | None = CAFA_THRESHOLDS,
    strict: bool = False,
    keep_unlabelled: bool = False,
) -> tuple[float, float]:
    """Protein-centric maximum F-measure (CAFA; Radivojac et al. 2013) and the threshold that
    attains it.

    Proteins with no true label are dropped first. For each threshold t, precision is the mean of
    TP/(TP+FP) over the proteins with at least one score >= t, recall the mean of TP/(TP+FN) over
    all remaining proteins, and F(t) = 2PR/(P+R); thresholds at which no protein has a prediction
    are skipped. Returns ``(max F, t)``, the smallest such t on ties, or ``(nan, nan)`` when no
    protein has a label.

    ``thresholds``: the default is CAFA's grid 0.00..1.00 in steps of 0.01 (so scores should lie in
    [0, 1]); ``None`` uses every distinct score, i.e. the exact maximum over all thresholds. The
    latter is what torchdrug's ``f1_max`` (used by ProteinWorkshop) computes, with two differences:
    torchdrug walks the score-sorted pairs one at a time, so it splits ties in sort order, and it
    divides the recall sum by all N proteins, so proteins without a label count as recall 0 instead
    of being excluded. Without ties and unlabelled proteins the two agree.

    ``strict``: predict pairs with ``score > t`` (DeepFRI's rule) instead of ``>= t``.
    ``keep_unlabelled``: proteins without a true label stay in the recall average with recall 0 (and
    in precision where they have predictions), as DeepFRI counts EC test chains whose every label is
    a partial EC number once those columns are left out (:func:`function_metrics`).
    """
    yt, ys = _check(y_true, y_score)
    labelled = yt.any(axis=1)
    if not labelled.any():
        return float("nan"), float("nan")
    if not keep_unlabelled:
        yt, ys = yt[labelled], ys[labelled]
    n, c = yt.shape
    if thresholds is None:
        grid = np.unique(ys)
    else:
        grid = np.unique(np.asarray(list(thresholds), dtype=np.float64))
        if grid.size == 0 or not np.isfinite(grid).all():
            raise ValueError("thresholds must be a non-empty sequence of finite numbers")

    # Per-protein precision and recall are step functions of t that change only at that protein's
    # own scores. Adding each step's change into the bucket of the largest grid threshold <= its
    # score, then summing the buckets from the top, gives the sums over proteins at every grid
    # threshold in O(N C log C) time.
    prec_sum = np.zeros(grid.size)
    rec_sum = np.zeros(grid.size)
    n_pred = np.zeros(grid.size)
    block = max(1, _BLOCK_ELEMENTS // max(c, 1))
    for lo in range(0, n, block):
        t_blk, s_blk = yt[lo : lo + block], ys[lo : lo + block]
        order = np.argsort(-s_blk, axis=1, kind="stable")
        s = np.take_along_axis(s_blk, order, axis=1)
        tp = np.cumsum(np.take_along_axis(t_blk, order, axis=1), axis=1)
        # A threshold equal to a score predicts the whole tie run, so only the last pair of each run
        # is a step.
        run_end = np.ones_like(s, dtype=bool)
        run_end[:, :-1] = s[:, :-1] != s[:, 1:]
        rows, cols = np.nonzero(run_end)  # row-major: each protein's steps in decreasing score
        prec = tp[rows, cols] / (cols + 1)
        rec = tp[rows, cols] / np.maximum(tp[rows, -1], 1)  # a protein without labels: recall 0
        first = np.ones(rows.size, dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        d_prec = np.diff(prec, prepend=0.0)
        d_rec = np.diff(rec, prepend=0.0)
        d_prec[first] = prec[first]
        d_rec[first] = rec[first]
        # the largest grid threshold that predicts the step: <= its score, or < it when strict
        k = np.searchsorted(grid, s[rows, cols], side="left" if strict else "right") - 1
        ok = k >= 0  # steps below the lowest threshold never apply
        prec_sum += np.bincount(k[ok], weights=d_prec[ok], minlength=grid.size)
        rec_sum += np.bincount(k[ok], weights=d_rec[ok], minlength=grid.size)
        n_pred += np.bincount(k[ok & first], minlength=grid.size)
    prec_sum, rec_sum, n_pred = (np.cumsum(a[::-1])[::-1] for a in (prec_sum, rec_sum, n_pred))

    with np.errstate(invalid="ignore", divide="ignore"):
        precision = prec_sum / n_pred
        recall = rec_sum / n
        f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f[n_pred == 0] = np.nan
    if np.isnan(f).all():
        return float("nan"), float("nan")
    best = int(np.nanargmax(f))
    return float(f[best]), float(grid[best])


def _flat_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall [K] at each distinct score (decreasing) over all flattened pairs; None
    if no positive."""
    yt, ys = _check(y_true, y_score)
    t = yt.ravel()
    if not t.any():
        return None
    s = ys.ravel()
    order = np.argsort(-s, kind="stable")
    s, tp = s[order], np.cumsum(t[order])
    run_end = np.ones(s.size, dtype=bool)
    run_end[:-1] = s[:-1] != s[1:]
    n_pred = np.flatnonzero(run_end) + 1
    tp = tp[run_end]
    return tp / n_pred, tp / tp[-1]


def micro_aupr(y_true, y_score) -> float:
    """Micro-averaged area under the precision-recall curve, as average precision over all flattened
    pairs.

    AP = sum_k (R_k - R_{k-1}) P_k over distinct score thresholds in decreasing order (R_0 = 0): the
    step-wise sum with no interpolation, equal to
    ``sklearn.metrics.average_precision_score(y_true.ravel(), y_score.ravel())``. NaN when there is
    no positive label.
    """
    curve = _flat_curve(y_true, y_score)
    if curve is None:
        return float("nan")
    precision, recall = curve
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def flattened_max_f1(y_true, y_score) -> float:
    """Maximum F1 over all distinct score thresholds, with all (protein, class) pairs flattened into
    one binary task.

    The metric of Ellmen et al.; unlike :func:`fmax` it weights proteins by their number of labels.
    NaN when there is no positive label.
    """
    curve = _flat_curve(y_true, y_score)
    if curve is None:
        return float("nan")
    precision, recall = curve
    f = 2 * precision * recall / np.maximum(precision + recall, np.finfo(float).tiny)
    return float(f.max())


#: How :func:`function_metrics` scores, recorded in every metrics.json.
METRICS_PROTOCOL = (
    "DeepFRI's evaluation: partial EC classes (x.x.x.-) left out; Fmax over every chain on "
    "thresholds 0.01-0.99 (score > t); micro-AUPR and flattened max-F1 over the classes with a "
    "positive in the set scored"
)


def evaluated_classes(classes: Iterable[str]) -> np.ndarray:
    """Which classes the function metrics score, [C] bool: all but partial EC numbers ("3.2.2.-").
    DeepFRI trains on them but leaves them out of evaluation, so that a right first three digits
    earn no credit (every EC chain is labelled with the partial parent of its full number too)."""
    return np.array(["-" not in str(c) for c in classes], dtype=bool)


def _scored_columns(y_true, y_score, classes):
    """``y_true``, ``y_score`` checked, less the columns :func:`function_metrics` does not score."""
    yt, ys = _check(y_true, y_score)
    if classes is None:
        return yt, ys
    keep = evaluated_classes(classes)
    if keep.size != yt.shape[1]:
        raise ValueError(f"{keep.size} class names for {yt.shape[1]} columns")
    return yt[:, keep], ys[:, keep]


def _deepfri_fmax(yt, ys) -> tuple[float, float]:
    return fmax(yt, ys, DEEPFRI_THRESHOLDS, strict=True, keep_unlabelled=True)


def function_fmax(y_true, y_score, classes: Iterable[str] | None = None) -> float:
    """:func:`function_metrics`'s Fmax alone (validation every epoch, bootstrap resamples: no
    AUPR to compute)."""
    return _deepfri_fmax(*_scored_columns(y_true, y_score, classes))[0]


def function_metrics(y_true, y_score, classes: Iterable[str] | None = None) -> dict[str, float]:
    """The function-prediction metrics under DeepFRI's evaluation protocol (its ``evaluation.py``),
    for ``y_true`` / ``y_score`` [N, C] with class names ``classes`` [C]:

    * the columns of partial EC numbers are left out (:func:`evaluated_classes`; all columns
      without ``classes``);
    * Fmax over every given protein (one left with no label counts with recall 0) on DeepFRI's grid
      0.01..0.99, a pair predicted when its score is strictly above the threshold;
    * micro-AUPR and flattened max-F1 over the classes with at least one positive among these
      proteins (recomputed per subset: a class absent from it would only add negatives).

    GO terms are scored as given: DeepFRI also extends true and predicted GO terms to their
    ancestors (go-basic.obo), which is not done here. Returns {"n", "n_classes" (scored by the
    AUPR), "fmax", "fmax_threshold", "micro_aupr", "flattened_max_f1"}.
    """
    yt, ys = _scored_columns(y_true, y_score, classes)
    f, t = _deepfri_fmax(yt, ys)
    present = yt.any(axis=0)
    yp, sp = yt[:, present], ys[:, present]
    return {
        "n": int(yt.shape[0]),
        "n_classes": int(present.sum()),
        "fmax": f,
        "fmax_threshold": t,
        "micro_aupr": micro_aupr(yp, sp),
        "flattened_max_f1": flattened_max_f1(yp, sp),
    }


def breakdown_by_identity(
    ids: Iterable[str],
    y_true,
    y_score,
    bins: Mapping[str, Mapping[str, bool]],
    classes: Iterable[str] | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`function_metrics` on the test chains in each sequence-identity bin.

    ``ids`` [N] names the rows of ``y_true`` / ``y_score`` [N, C]; ``bins`` is
    :func:`read_identity_bins` output (chain id -> bin name -> flag). A chain belongs to bin '<30%'
    when its '<30%' flag is set, so bins are nested. Returns {bin name: {"n": chains in the bin,
    "fmax": ..., "aupr": micro AUPR over the classes present in the bin}} in the table's bin order;
    chains absent from the table are in no bin. Ids must use the table's convention (both readers
    normalise them).
    """
    ids = list(ids)
    yt, ys = _check(y_true, y_score)
    if len(ids) != yt.shape[0]:
        raise ValueError(f"{len(ids)} ids for {yt.shape[0]} rows of y_true")
    if ids and bins and not any(i in bins for i in ids):
        raise ValueError(
            "none of the ids is in the identity-bin table (different chain-id conventions?)"
        )
    names: dict[str, None] = {}
    for flags in bins.values():
        names.update(dict.fromkeys(flags))
    out: dict[str, dict[str, float]] = {}
    for name in names:
        mask = np.array([bool(bins.get(i, {}).get(name, False)) for i in ids], dtype=bool)
        m = function_metrics(yt[mask], ys[mask], classes)
        out[name] = {"n": int(mask.sum()), "fmax": m["fmax"], "aupr": m["micro_aupr"]}
    return out
