"""Scale: a 200,000-chain prepared dataset streams through the batch pipeline in flat memory."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flat_memory import stream_once, write_synthetic_dataset  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon is read from /proc (Linux)")
def test_200k_chain_dataset_iterates_in_flat_memory(tmp_path):
    path = write_synthetic_dataset(tmp_path / "flat", n_chains=200_000, length=32)
    res = stream_once(path, tokens_per_batch=16384)
    assert res["chains"] == 200_000 and res["tokens"] == res["train_chains"] * 32  # every chain, once
    # the arrays are 300 MB on disk; what the process itself holds must not grow with the pass
    assert res["growth_after_first_tenth_mb"] < 32, res["trace"]
    # opening holds the chain ids and their index (O(chains) strings, ~450 bytes a chain measured)
    assert res["rss_anon_after_open_mb"] - res["rss_anon_before_open_mb"] < 200
