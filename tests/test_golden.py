"""Issue 17's safety net: the redesign must not change what the commands write. One small pipeline
(prepare -> pretrain -> evaluate -> embed -> score, tests/golden_pipeline.py) against the values
recorded before it (tests/data/golden.json): dataset arrays bit for bit, metrics to 1e-4,
trained weights to 1e-3 (they differ between CPUs)."""

import json

import pytest

import golden_pipeline


@pytest.mark.slow
def test_pipeline_outputs_match_the_recorded_ones(tmp_path):
    want = json.loads(golden_pipeline.GOLDEN.read_text())
    got = json.loads(json.dumps(golden_pipeline.run(tmp_path), sort_keys=True))
    # trained weights differ between CPUs by rounding that Adam's normalised steps amplify (1.5e-4
    # relative after 12 steps on an AMD EPYC against the machine that recorded them): they are
    # held to 1e-3 (a changed behaviour moves them by a step of lr 3e-3 or more); everything
    # else, the metrics computed from those weights included, to 1e-4
    weights = [want["pretrain"].pop("weights"), got["pretrain"].pop("weights")]
    diffs = golden_pipeline.compare(*weights[::-1], path=".pretrain.weights", rtol=1e-3, atol=1e-4)
    diffs += golden_pipeline.compare(got, want)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:8])


def test_compare_reports_what_differs():
    assert golden_pipeline.compare({"a": [1.0, "x"]}, {"a": [1.0, "x"]}) == []
    assert golden_pipeline.compare({"a": [1.001, "x"]}, {"a": [1.0, "x"]}) == [
        ".a[0]: 1.001 != 1.0"
    ]
    assert golden_pipeline.compare({"a": 1}, {"b": 1}) == [": keys ['a'] != ['b']"]
