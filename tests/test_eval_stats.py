"""paired_bootstrap: refuses evaluations that are not paired, and resamples only chains that carry
masked residues (a draw of empty chains made the whole interval NaN)."""

import math

import pytest

from coordformer.eval.stats import paired_bootstrap


def _result(per_chain, **settings):
    base = {"seed": 0, "mask_prob": 0.15, "crop_length": 1024, "windows": None}
    return {"per_chain": per_chain, "settings": {**base, "masking": "all <mask>", **settings}}


def test_chains_without_masked_residues_leave_the_interval_finite():
    a = _result({"c1": [0, 0.0, 0], "c2": [0, 0.0, 0], "c3": [5, 12.0, 1], "c4": [4, 9.0, 2]})
    b = _result({"c1": [0, 0.0, 0], "c2": [0, 0.0, 0], "c3": [5, 10.0, 2], "c4": [4, 8.0, 1]})
    r = paired_bootstrap(a, b)
    assert r["n_chains"] == 2
    assert all(math.isfinite(x) for x in r["perplexity_ratio_ci95"] + r["recovery_diff_pt_ci95"])
    assert r["perplexity_ratio"] == pytest.approx(math.exp((21.0 - 18.0) / 9))
    with pytest.raises(ValueError, match="no chain has a masked residue"):
        paired_bootstrap(_result({"c1": [0, 0.0, 0]}), _result({"c1": [0, 0.0, 0]}))


def test_unpaired_evaluations_are_refused():
    a = _result({"c1": [3, 5.0, 1], "c2": [4, 6.0, 1]})
    more = _result({"c1": [3, 4.0, 1], "c2": [4, 5.0, 1], "c9": [7, 9.0, 2]})
    with pytest.raises(ValueError, match="1 chains were evaluated by one run only"):
        paired_bootstrap(a, more)
    bert = _result({"c1": [3, 4.0, 1], "c2": [4, 5.0, 1]}, masking="bert 80/10/10")
    with pytest.raises(ValueError, match="masked differently .*masking"):
        paired_bootstrap(a, bert)
    # what comparisons vary (coordinates given or hidden) is allowed
    hidden = _result({"c1": [3, 4.0, 1], "c2": [4, 5.0, 1]}, hide_coords="span", use_coords=False)
    assert paired_bootstrap(a, hidden)["n_chains"] == 2
    # results without settings (benchmarks that pair sub-tables) are compared by their counts
    assert paired_bootstrap({"per_chain": a["per_chain"]}, {"per_chain": a["per_chain"]})[
        "perplexity_ratio"
    ] == pytest.approx(1.0)


def test_max_chains_zero_is_refused_not_read_as_every_chain(prepared):
    from coordformer.config import preset
    from coordformer.errors import OptionError
    from coordformer.eval.mlm import evaluate_mlm
    from coordformer.model import CoordFormer

    model = CoordFormer(preset("tiny-0.1m"))
    with pytest.raises(OptionError, match="at least 1"):
        evaluate_mlm(model, prepared, "valid", max_chains=0, progress=False)
    assert evaluate_mlm(model, prepared, "valid", max_chains=1, progress=False)["n_chains"] == 1
