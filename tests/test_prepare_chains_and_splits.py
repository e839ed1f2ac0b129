"""prepare says plainly when --chains matches nothing (exit 2, nothing prepared), names requested
chains no input has, and warns when the dataset or the valid/test splits come out empty
(issue 20)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coordformer.cli import main

DATA = Path(__file__).parent / "data"


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("1orc.pdb", "1A8O.pdb"):
        shutil.copy(DATA / name, d / name)
    return d


def _prepare(inputs, out, *extra):
    return main(["prepare", str(inputs), "-o", str(out), "--quiet", "--workers", "1", *extra])


def test_chains_matching_nothing_is_an_error_and_leaves_no_dataset(inputs, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _prepare(inputs, out, "--chains", "Z") == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: --chains Z matched no protein chain of the inputs (their chains: A)"
    )
    assert not (out / "manifest.json").exists()
    assert "none of the requested chains" in (out / "skipped.tsv").read_text()
    # the same folder takes a corrected run, without --overwrite
    assert (
        _prepare(inputs, out, "--chains", "A", "--valid-fraction", "0", "--test-fraction", "0") == 0
    )
    assert json.loads((out / "manifest.json").read_text())["n_chains"] == 2


def test_requested_chains_not_found_are_named(inputs, tmp_path, capsys):
    out = tmp_path / "ds"
    assert (
        _prepare(inputs, out, "--chains", "A,Z,Q", "--valid-fraction", "0", "--test-fraction", "0")
        == 0
    )
    assert (
        "WARNING: --chains Z, Q: no input has a protein chain with these author ids"
        in capsys.readouterr().out
    )
    assert json.loads((out / "manifest.json").read_text())["counts"]["chains_not_found"] == [
        "Z",
        "Q",
    ]


def test_empty_splits_and_empty_dataset_are_said_plainly(inputs, tmp_path, capsys):
    assert (
        _prepare(inputs, tmp_path / "a", "--valid-fraction", "0.001", "--test-fraction", "0.001")
        == 0
    )
    out = capsys.readouterr().out  # 2 chains, 0.1% each (seeded hash): none
    assert (
        "WARNING: the valid and test splits are empty: 2 chains are too few for the fractions asked"
        in out
    )
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["counts"]["empty_splits"] == [
        "valid",
        "test",
    ]
    assert _prepare(inputs, tmp_path / "b", "--min-length", "1000") == 0
    assert "WARNING: no chain passed, so the dataset is empty" in capsys.readouterr().out


def test_embed_chains_matching_nothing_keeps_the_skipped_list(inputs, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert (
        main(
            ["embed", str(inputs), "-c", "small-coords", "-o", str(out), "--chains", "Z", "--quiet"]
        )
        == 2
    )
    assert "matched no protein chain" in capsys.readouterr().err
    assert "none of the requested chains" in (tmp_path / "e.npz.skipped.tsv").read_text()
