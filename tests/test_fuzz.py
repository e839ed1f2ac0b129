"""Property-based fuzzing of the PDB / mmCIF / chain_set readers (a short, deterministic campaign).

The targets (input generators and the property checked) live in benchmarks/fuzz_parsers.py,
which runs the same targets as a longer campaign. The property: a reader either returns chains
that satisfy the Chain invariants or fails with StructureReadError naming the file; any other
exception, or a broken invariant, fails the test (hypothesis then shrinks the input).
"""

import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_parsers as fuzz  # noqa: E402

# Examples per target, sized so the whole file takes well under 20 s on 2 shared cores; the
# record targets draw far more hypothesis choices per input, so they get fewer.
EXAMPLES = {
    "pdb_mutated": 150,
    "cif_mutated": 150,
    "structure_bytes": 150,
    "jsonl_mutated": 150,
    "jsonl_bytes": 150,
    "jsonl_records": 100,
    "jsonl_valid_records": 60,
}


def test_every_target_has_a_budget():
    assert set(EXAMPLES) == set(fuzz.TARGETS)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_reader_fails_only_with_structure_read_error(name):
    target = fuzz.TARGETS[name]
    outcomes = []

    # derandomize: the same inputs on every run, so CI failures are reproducible
    @settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=fuzz.FUZZ_HEALTH_CHECKS,
    )
    @given(case=target.strategy)
    def reads_or_raises_structure_read_error(case):
        # not pytest's tmp_path: hypothesis rejects function-scoped fixtures under @given
        with tempfile.TemporaryDirectory() as tmp:
            outcomes.append(fuzz.run_case(target, case, Path(tmp)))

    reads_or_raises_structure_read_error()
    assert len(outcomes) >= EXAMPLES[name] // 2  # the generator is not stuck on rejected inputs
    if name not in ("structure_bytes", "jsonl_bytes"):  # random bytes are never a valid file
        assert "ok" in outcomes, f"{name}: no input parsed, so the deep checks were never reached"
