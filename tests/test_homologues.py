"""splits.find_homologues: held-out chains with a homologue in train, coverage of the shorter
sequence counted (a fragment of a train chain is its homologue)."""

import shutil

import numpy as np
import pytest

from coordformer.data.splits import SplitError, find_homologues

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="MMseqs2 not installed")
AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def _random_protein(rng, n):
    return "".join(rng.choice(AA, n))


def _mutate(rng, seq, identity):
    s = np.array(list(seq))
    pos = rng.choice(len(s), int(round(len(s) * (1 - identity))), replace=False)
    s[pos] = [rng.choice(AA[AA != c]) for c in s[pos]]
    return "".join(s)


@needs_mmseqs
def test_fragments_and_close_homologues_are_found_unrelated_chains_are_not():
    rng = np.random.default_rng(0)
    train = [_random_protein(rng, 300) for _ in range(3)]
    queries = [
        train[0][50:170],  # a 120-residue fragment of a train chain: 40% of it, 100% of itself
        _mutate(rng, train[1], 0.6),  # 60% identical over the whole length
        _random_protein(rng, 200),  # unrelated
    ]
    hits = find_homologues(queries, train, min_seq_id=0.3, min_coverage=0.5)
    assert set(hits) == {0, 1}
    assert hits[0].target == 0 and hits[0].identity == pytest.approx(1.0)
    assert hits[0].query_coverage == pytest.approx(1.0) and hits[0].target_coverage < 0.5
    assert hits[1].target == 1 and 0.5 < hits[1].identity < 0.7
    # a stricter identity or coverage of the shorter sequence drops them
    assert set(find_homologues(queries, train, min_seq_id=0.8)) == {0}
    assert find_homologues(queries[:1], train, 0.3, min_coverage=1.01) == {}
    assert find_homologues([], train, 0.3) == {}


def test_without_mmseqs_the_error_says_what_to_install():
    with pytest.raises(SplitError, match="apt-get install mmseqs2"):
        find_homologues(["ACDE"], ["ACDE"], 0.3, executable="no-such-mmseqs")
