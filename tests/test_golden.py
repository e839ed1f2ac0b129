"""Issue 17's safety net: the redesign must not change what the commands write. One small pipeline
(prepare -> pretrain -> evaluate -> embed -> score, tests/golden_pipeline.py) against the values
recorded before it (tests/data/golden.json): dataset arrays bit for bit, weights and metrics to
1e-4."""

import json

import pytest

import golden_pipeline


@pytest.mark.slow
def test_pipeline_outputs_match_the_recorded_ones(tmp_path):
    want = json.loads(golden_pipeline.GOLDEN.read_text())
    got = json.loads(json.dumps(golden_pipeline.run(tmp_path), sort_keys=True))
    diffs = golden_pipeline.compare(got, want)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:8])


def test_compare_reports_what_differs():
    assert golden_pipeline.compare({"a": [1.0, "x"]}, {"a": [1.0, "x"]}) == []
    assert golden_pipeline.compare({"a": [1.001, "x"]}, {"a": [1.0, "x"]}) == [
        ".a[0]: 1.001 != 1.0"
    ]
    assert golden_pipeline.compare({"a": 1}, {"b": 1}) == [": keys ['a'] != ['b']"]
