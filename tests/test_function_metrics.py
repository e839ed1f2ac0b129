from __future__ import annotations

import math

import numpy as np
import pytest

from coordformer.function.metrics import (
    CAFA_THRESHOLDS,
    breakdown_by_identity,
    evaluated_classes,
    flattened_max_f1,
    fmax,
    function_fmax,
    function_metrics,
    micro_aupr,
)

# Three proteins, three classes; protein 3 has no label, so fmax ignores it entirely.
FMAX_TRUE = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
FMAX_SCORE = np.array([[0.9, 0.6, 0.2], [0.3, 0.8, 0.1], [0.7, 0.7, 0.7]])

# Flattened pairs in decreasing score: 0.9(+) 0.8(-) 0.8(+) 0.4(-) 0.3(+) 0.1(-); the two 0.8
# form a tie.
FLAT_TRUE = np.array([[1, 0, 0], [1, 0, 1]])
FLAT_SCORE = np.array([[0.9, 0.8, 0.1], [0.8, 0.4, 0.3]])


def brute_fmax(y_true, y_score, thresholds):
    """Straight transcription of the CAFA definition, one threshold at a time."""
    keep = y_true.any(1)
    y_true, y_score = y_true[keep].astype(bool), y_score[keep]
    best, best_t = math.nan, math.nan
    for t in np.unique(thresholds):
        pred = y_score >= t
        covered = pred.any(1)
        if not covered.any():
            continue
        tp = (pred & y_true).sum(1)
        p = (tp[covered] / pred[covered].sum(1)).mean()
        r = (tp / y_true.sum(1)).mean()
        f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
        if math.isnan(best) or f > best + 1e-12:
            best, best_t = f, t
    return best, best_t


def random_case(seed: int, n: int = 40, c: int = 25, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < 0.15
    y[0, 0] = True
    s = rng.integers(0, 6, (n, c)) / 5 if ties else rng.random((n, c))
    return y.astype(np.float32), s


def test_fmax_hand_computed():
    # Protein 3 (no label) is dropped. With thresholds 0.25, 0.5, 0.85:
    # t=0.85: P1 predicts {c0}: prec 1, rec 1/2; P2 predicts nothing (not averaged into
    #         precision), rec 0.
    #         P = 1, R = (1/2 + 0)/2 = 1/4, F = 2*1*(1/4)/(5/4) = 0.4
    # t=0.5:  P1 {c0,c1}: prec 1/2, rec 1/2; P2 {c1}: prec 1, rec 1. P = 3/4, R = 3/4, F = 0.75
    # t=0.25: P1 {c0,c1}: prec 1/2, rec 1/2; P2 {c0,c1}: prec 1/2, rec 1.
    #         P = 1/2, R = 3/4, F = 2*(3/8)/(5/4) = 0.6
    f, t = fmax(FMAX_TRUE, FMAX_SCORE, thresholds=[0.25, 0.5, 0.85])
    assert f == pytest.approx(0.75) and t == 0.5


def test_fmax_hand_computed_default_grid_and_exact():
    # Any t in (0.6, 0.8]: P1 {c0}: prec 1, rec 1/2; P2 {c1}: prec 1, rec 1.
    # P = 1, R = 3/4, F = 1.5/1.75 = 6/7, higher than t in (0.8, 0.9] (F = 0.4) or t in (0.3, 0.6]
    # (F = 0.75). The grid returns the smallest such t, 0.61; the exact mode returns the smallest
    # distinct score in the interval, 0.8.
    f, t = fmax(FMAX_TRUE, FMAX_SCORE)
    assert f == pytest.approx(6 / 7) and t == pytest.approx(0.61)
    f, t = fmax(FMAX_TRUE, FMAX_SCORE, thresholds=None)
    assert f == pytest.approx(6 / 7) and t == 0.8


def test_fmax_excludes_proteins_without_labels():
    # If protein 3 counted, at t=0.7 it would add precision 0 and recall 0.
    assert fmax(FMAX_TRUE, FMAX_SCORE) == fmax(FMAX_TRUE[:2], FMAX_SCORE[:2])


def test_micro_aupr_hand_computed():
    # Distinct thresholds, 3 positives in all:
    #   0.9: TP 1 of 1 predicted -> P 1,   R 1/3
    #   0.8: TP 2 of 3 (tie)     -> P 2/3, R 2/3
    #   0.4: TP 2 of 4           -> P 1/2, R 2/3
    #   0.3: TP 3 of 5           -> P 3/5, R 1
    #   0.1: TP 3 of 6           -> P 1/2, R 1
    # AP = (1/3)*1 + (1/3)*(2/3) + 0*(1/2) + (1/3)*(3/5) + 0*(1/2) = 1/3 + 2/9 + 1/5 = 34/45
    assert micro_aupr(FLAT_TRUE, FLAT_SCORE) == pytest.approx(34 / 45)


def test_flattened_max_f1_hand_computed():
    # Same curve as above; F1 = 2PR/(P+R):
    #   0.9: 2*(1)(1/3)/(4/3) = 1/2;  0.8: 2/3;  0.4: 2*(1/2)(2/3)/(7/6) = 4/7;
    #   0.3: 2*(3/5)(1)/(8/5) = 3/4;  0.1: 2/3
    assert flattened_max_f1(FLAT_TRUE, FLAT_SCORE) == pytest.approx(0.75)


def test_ties_are_one_threshold():
    # Swapping which of the two tied 0.8 pairs comes first must not matter (a sort-order tie-break
    # would give P 1 at R 2/3 when the positive happens to come first).
    swapped_true, swapped_score = FLAT_TRUE[::-1], FLAT_SCORE[::-1]
    assert micro_aupr(swapped_true, swapped_score) == pytest.approx(34 / 45)
    assert flattened_max_f1(swapped_true, swapped_score) == pytest.approx(0.75)
    y, s = random_case(3, ties=True)
    np.testing.assert_allclose(fmax(y, s, None), fmax(y[::-1], s[::-1], None), rtol=1e-12)


def test_breakdown_by_identity_hand_computed():
    ids = ["1AAA.A", "1BBB.B", "1CCC.C"]
    y = np.array([[1, 0], [0, 1], [1, 1]])
    s = np.array([[0.9, 0.1], [0.8, 0.3], [0.6, 0.6]])
    bins = {
        "1AAA.A": {"<30%": True, "<50%": True},
        "1BBB.B": {"<30%": False, "<50%": True},
        "1CCC.C": {"<30%": False, "<50%": False},
    }
    out = breakdown_by_identity(ids, y, s, bins)
    assert list(out) == ["<30%", "<50%"]
    # <30% = {A}: A is ranked perfectly -> Fmax 1, AUPR 1.
    assert out["<30%"] == {"n": 1, "fmax": pytest.approx(1.0), "aupr": pytest.approx(1.0)}
    # <50% = {A, B}. Fmax: t in (0.1, 0.3]: A {c0}: prec 1, rec 1; B {c0, c1}: prec 1/2, rec 1
    #   -> P 3/4, R 1, F = 1.5/1.75 = 6/7
    #   (t in (0.3, 0.8]: P 1/2, R 1/2; (0.8, 0.9]: P 1, R 1/2 -> 2/3).
    # AUPR: 0.9(+) P 1 R 1/2; 0.8(-); 0.3(+) P 2/3 R 1; 0.1(-) -> 1/2*1 + 1/2*2/3 = 5/6.
    assert out["<50%"] == {"n": 2, "fmax": pytest.approx(6 / 7), "aupr": pytest.approx(5 / 6)}


def test_breakdown_empty_bin_and_id_mismatch():
    y, s = np.array([[1, 0]]), np.array([[0.9, 0.1]])
    out = breakdown_by_identity(["1AAA.A"], y, s, {"1AAA.A": {"<30%": False}})
    assert (
        out["<30%"]["n"] == 0
        and math.isnan(out["<30%"]["fmax"])
        and math.isnan(out["<30%"]["aupr"])
    )
    with pytest.raises(ValueError, match="conventions"):
        breakdown_by_identity(["1AAA-A"], y, s, {"1AAA.A": {"<30%": True}})
    with pytest.raises(ValueError, match="2 ids"):
        breakdown_by_identity(["1AAA.A", "1BBB.B"], y, s, {"1AAA.A": {"<30%": True}})


def test_no_positive_labels_gives_nan():
    y, s = np.zeros((3, 4)), np.random.default_rng(0).random((3, 4))
    f, t = fmax(y, s)
    assert math.isnan(f) and math.isnan(t)
    assert math.isnan(micro_aupr(y, s))
    assert math.isnan(flattened_max_f1(y, s))
    assert math.isnan(fmax(np.zeros((0, 4)), np.zeros((0, 4)))[0])


def test_no_threshold_with_predictions_gives_nan():
    f, t = fmax(np.array([[1, 0]]), np.array([[0.2, 0.1]]), thresholds=[0.5, 0.9])
    assert math.isnan(f) and math.isnan(t)


def test_input_validation():
    with pytest.raises(ValueError, match="shapes"):
        fmax(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="0 and 1"):
        micro_aupr(np.array([[2, 0]]), np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="NaN"):
        flattened_max_f1(np.array([[1, 0]]), np.array([[np.nan, 0.5]]))
    with pytest.raises(ValueError, match="thresholds"):
        fmax(np.array([[1, 0]]), np.array([[0.5, 0.5]]), thresholds=[])


@pytest.mark.parametrize(
    "metric",
    [micro_aupr, flattened_max_f1, lambda y, s: fmax(y, s)[0], lambda y, s: fmax(y, s, None)[0]],
)
def test_perfect_scores_give_one_and_random_scores_less(metric):
    y, s = random_case(0)
    assert metric(y, y) == pytest.approx(1.0)
    assert metric(y, y.astype(bool)) == pytest.approx(1.0)
    assert metric(y, s) < metric(y, y) - 0.1


@pytest.mark.parametrize(
    "metric", [micro_aupr, flattened_max_f1, fmax, lambda y, s: fmax(y, s, None)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_permuting_proteins_or_classes_changes_nothing(metric, ties):
    y, s = random_case(1, ties=ties)
    rng = np.random.default_rng(2)
    rows, cols = rng.permutation(y.shape[0]), rng.permutation(y.shape[1])
    ref = np.asarray(metric(y, s))
    np.testing.assert_allclose(metric(y[rows], s[rows]), ref, rtol=1e-12)
    np.testing.assert_allclose(metric(y[:, cols], s[:, cols]), ref, rtol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_fmax_matches_brute_force(seed):
    y, s = random_case(seed, n=30, c=12, ties=seed % 2 == 0)
    y[-3:] = 0  # some proteins without labels
    for grid in (CAFA_THRESHOLDS, np.unique(s[y.any(1)])):
        f, t = fmax(y, s, grid)
        bf, bt = brute_fmax(y, s, grid)
        assert f == pytest.approx(bf, abs=1e-12) and t == pytest.approx(bt)
    assert fmax(y, s, None) == fmax(y, s, np.unique(s[y.any(1)]))


def test_fmax_blocks_do_not_change_the_result(monkeypatch):
    import coordformer.function.metrics as m

    y, s = random_case(4, n=50, c=10, ties=True)
    ref = fmax(y, s, None)
    monkeypatch.setattr(m, "_BLOCK_ELEMENTS", 25)  # 2 proteins per block
    f, t = fmax(y, s, None)
    assert f == pytest.approx(ref[0], abs=1e-12) and t == ref[1]


@pytest.mark.parametrize("ties", [False, True])
def test_micro_aupr_matches_sklearn(ties):
    sk_metrics = pytest.importorskip("sklearn.metrics")
    y, s = random_case(5, ties=ties)
    assert micro_aupr(y, s) == pytest.approx(
        sk_metrics.average_precision_score(y.ravel(), s.ravel()), abs=1e-12
    )


def deepfri_fmax(y_true, y_score, classes):
    """DeepFRI's EC evaluation written out plainly: partial EC columns dropped, thresholds
    0.01..0.99 with score > t, precision over proteins with a prediction, recall over all."""
    keep = np.array(["-" not in c for c in classes])
    y, s = y_true[:, keep].astype(bool), y_score[:, keep]
    best = math.nan
    for t in np.arange(1, 100) / 100:
        pred = s > t
        covered = pred.any(1)
        if not covered.any():
            continue
        tp = (pred & y).sum(1)
        p = (tp[covered] / pred[covered].sum(1)).mean()
        r = np.where(y.any(1), tp / np.maximum(y.sum(1), 1), 0.0).mean()
        if p + r > 0:
            best = max(2 * p * r / (p + r), -1 if math.isnan(best) else best)
    return best


def test_function_metrics_leave_partial_ec_numbers_out():
    classes = ["3.2.2.9", "3.2.2.1", "3.2.2.-"]
    # the right first three digits (the partial parent) would earn credit if it were scored
    y, s = np.array([[1, 0, 1]]), np.array([[0.05, 0.9, 0.9]])
    assert fmax(y, s)[0] == pytest.approx(0.8)
    assert function_metrics(y, s, classes)["fmax"] == pytest.approx(2 / 3)
    assert evaluated_classes(classes).tolist() == [True, True, False]
    assert evaluated_classes(["GO:0003674", "GO:0005488"]).all()  # GO ids have no '-'


def test_a_chain_left_without_labels_counts_in_recall():
    classes = ["1.1.1.1", "1.1.1.2", "1.1.1.-"]
    # the second chain's only label is partial: dropped from the columns, kept in the recall mean
    y = np.array([[1, 0, 1], [0, 0, 1]])
    s = np.array([[0.9, 0.1, 0.9], [0.1, 0.1, 0.9]])
    m = function_metrics(y, s, classes)
    assert m["fmax"] == pytest.approx(2 / 3) and m["n"] == 2  # P 1 (one chain predicts), R 1/2
    keep = evaluated_classes(classes)
    assert fmax(y[:, keep], s[:, keep])[0] == pytest.approx(1.0)  # dropping the chain instead


def test_function_aupr_scores_only_classes_present():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.6, 0.9], [0.2, 0.8], [0.5, 0.7]])
    assert micro_aupr(y, s) == pytest.approx(0.325)  # the absent class adds only negatives
    m = function_metrics(y, s)
    assert m["micro_aupr"] == pytest.approx(1.0) and m["n_classes"] == 1
    assert m["flattened_max_f1"] == pytest.approx(1.0)


def test_function_fmax_uses_deepfris_strict_grid():
    # a sigmoid saturates to exactly 1.0 in float32; t = 1.00 with >= would pick it out alone
    y, s = np.array([[1, 0]]), np.array([[1.0, 0.995]])
    assert fmax(y, s)[0] == pytest.approx(1.0)
    m = function_metrics(y, s)
    assert m["fmax"] == pytest.approx(2 / 3) and m["fmax_threshold"] == pytest.approx(0.01)
    # strict: a score equal to a threshold is not predicted there
    y, s = np.array([[1, 0]]), np.array([[0.5, 0.5]])
    assert fmax(y, s, [0.5], strict=True)[0] != fmax(y, s, [0.5])[0]


@pytest.mark.parametrize("seed", range(6))
def test_function_fmax_matches_deepfris_loop(seed):
    rng = np.random.default_rng(seed)
    classes = [f"1.{i // 4}.1.{i % 4 + 1}" if i % 5 else f"1.{i}.1.-" for i in range(30)]
    y = (rng.random((50, 30)) < 0.1).astype(np.float32)
    y[y.sum(1) == 0, 0] = 1.0  # every chain labelled in the full label space, as loaded
    s = np.round(rng.random((50, 30)), 2 if seed % 2 else 6)  # ties with the grid, or none
    assert function_metrics(y, s, classes)["fmax"] == pytest.approx(
        deepfri_fmax(y, s, classes), abs=1e-12
    )
    assert function_fmax(y, s, classes) == function_metrics(y, s, classes)["fmax"]


def test_function_metrics_refuses_a_wrong_class_list():
    with pytest.raises(ValueError, match="class names"):
        function_metrics(np.ones((2, 3)), np.ones((2, 3)), ["1.1.1.1"])
