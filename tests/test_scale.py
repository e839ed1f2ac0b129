"""Scale: a 200,000-chain prepared dataset streams through the batch pipeline in flat memory."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from flat_memory import stream_once, write_synthetic_dataset  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="RssAnon is read from /proc (Linux)"
)
def test_200k_chain_dataset_iterates_in_flat_memory(tmp_path):
    path = write_synthetic_dataset(tmp_path / "flat", n_chains=200_000, length=32)
    res = stream_once(path, tokens_per_batch=16384)
    assert (
        res["chains"] == 200_000 and res["tokens"] == res["train_chains"] * 32
    )  # every chain, once
    # the arrays are 300 MB on disk; what the process itself holds must not grow with the pass
    assert res["growth_after_first_tenth_mb"] < 32, res["trace"]
    # opening holds the chain ids and their index (O(chains) strings, ~450 bytes a chain measured)
    assert res["rss_anon_after_open_mb"] - res["rss_anon_before_open_mb"] < 200


def test_deposited_copies_read_like_their_originals_under_distinct_ids(tmp_path):
    """--deposited: 6 gzipped copies of the tests/data mmCIF entries, renamed by gemmi, are 6
    distinct entries whose chains equal those prepare reads from the untouched files."""
    import numpy as np
    from prepare_throughput import DEPOSITED, write_deposited_gz

    from coordformer.config import PrepareConfig
    from coordformer.data.prepare import prepare
    from coordformer.data.store import PreparedDataset

    data = Path(__file__).parent / "data"
    write_deposited_gz(6, tmp_path / "cif")
    cfg = PrepareConfig(split="random", min_length=1)
    prepare([tmp_path / "cif"], tmp_path / "copies", cfg, workers=1, progress=False)
    prepare([data / n for n in DEPOSITED], tmp_path / "orig", cfg, workers=1, progress=False)
    copies, orig = PreparedDataset(tmp_path / "copies"), PreparedDataset(tmp_path / "orig")
    assert len(copies) == 2 * len(orig) > 0  # every copy kept: no id collides
    assert len({i.split(".")[0] for i in copies.ids}) == 6
    by_seq = {orig.sequence(i): orig.coords(i) for i in range(len(orig))}
    for i in range(len(copies)):
        np.testing.assert_array_equal(copies.coords(i), by_seq[copies.sequence(i)])


def test_gemmi_written_cif_gz_round_trips_through_prepare(tmp_path):
    """The prepare-throughput benchmark's inputs: backbone .cif.gz written by gemmi read back
    exactly."""
    import numpy as np
    from prepare_throughput import write_cif_gz

    from coordformer.config import PrepareConfig
    from coordformer.data.prepare import prepare
    from coordformer.data.store import PreparedDataset
    from coordformer.demo import bundled_chains
    from coordformer.io import iter_chain_set

    chains = [c for c, _ in zip(iter_chain_set(bundled_chains()), range(5))]
    write_cif_gz(chains, tmp_path / "cif")
    summary = prepare(
        [tmp_path / "cif"],
        tmp_path / "ds",
        PrepareConfig(split="random"),
        workers=1,
        progress=False,
    )
    assert summary.chains_kept == 5 and summary.inputs_skipped == 0
    ds = PreparedDataset(tmp_path / "ds")
    got = {ds.sequence(i): ds.coords(i) for i in range(len(ds))}
    for c in chains:
        np.testing.assert_allclose(got[c.sequence], c.coords, atol=1e-3)
