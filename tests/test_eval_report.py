"""The comparison table of `evaluate` and `demo`: per-residue rows are the first model's real
gains over the second, said as such, in percentage points."""

from coordformer.constants import AMINO_ACIDS
from coordformer.eval.report import comparison_rows


def _metrics(per_residue: dict[str, float]) -> dict:
    return {
        "perplexity": 12.0,
        "recovery": 0.2,
        "n_masked": 100,
        "per_residue_recovery": {aa: per_residue.get(aa, 0.0) for aa in AMINO_ACIDS},
    }


def test_only_gains_are_listed_under_a_row_that_names_both_models():
    a = _metrics({"G": 0.45, "P": 0.30, "K": 0.10})
    b = _metrics({"G": 0.20, "P": 0.35, "K": 0.05})
    header, rows = comparison_rows({"coords": a, "nocoords": b})
    assert header == ["", "coords", "nocoords"]
    labels = [r[0] for r in rows]
    assert "largest recovery gains, coords over nocoords:" in labels
    gains = labels[labels.index("largest recovery gains, coords over nocoords:") + 1 :]
    # P is worse and the 17 residues at 0% on both sides gain nothing: neither is a "gain"
    assert gains == ["recovery G (+25.0 points)", "recovery K (+5.0 points)"]
    assert rows[labels.index("recovery G (+25.0 points)")][1:] == ["45.0%", "20.0%"]


def test_no_gain_no_gain_rows():
    same = _metrics({"G": 0.4})
    _, rows = comparison_rows({"x": same, "y": same})
    assert [r[0] for r in rows] == ["perplexity", "recovery", "masked residues"]
