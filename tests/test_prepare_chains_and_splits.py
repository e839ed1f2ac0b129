"""prepare says plainly when --chains matches nothing (exit 2, nothing prepared), names requested
chains no input has, and warns when the dataset or the valid/test splits come out empty
(issue 20). Every chain --chains leaves out, of any input kind, is logged and counted; ids that
name no chain are not filtered; embed's messages name its own skip list."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import coordformer.progress
from coordformer.cli import main
from coordformer.data.store import PreparedDataset

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


def _skipped_rows(path):
    return Path(path).read_text().splitlines()[1:]


@pytest.fixture
def mixed(tmp_path):
    """chain_set records (1A2X.B, 1AIE.A, 1AJJ.A), FASTA records with and without a chain part,
    and structure files with chains A only (1ORC) and A and B (1LZH)."""
    d = tmp_path / "mixed"
    d.mkdir()
    for name in ("chain_set_small.jsonl", "1orc.pdb", "1lzh.pdb.gz"):
        shutil.copy(DATA / name, d / name)
    (d / "seqs.fasta").write_text(
        ">seq2 no chain part\nMKTAYIAKQRQISFVKSHFSRQ\n"
        ">1abc_A\nMKVLAAGIVGLL\n>1abc_B\nMKVLAAGIVGLLKK\n"
    )
    return d


def test_chains_logs_and_counts_what_it_leaves_out_of_every_input_kind(mixed, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _prepare(mixed, out, "--chains", "A", "--min-length", "1", "--valid-fraction", "0") == 0
    printed = capsys.readouterr().out
    rows = _skipped_rows(out / "skipped.tsv")
    left_out = {r.split(" [")[0]: r.split("\t")[1] for r in rows}
    assert left_out == {
        "1A2X.B": "not in --chains: chain B (--chains A)",
        "1ABC.B": "not in --chains: chain B (--chains A)",
        "1LZH.B": "not in --chains: chain B (--chains A)",
    }
    assert f"1A2X.B [{mixed / 'chain_set_small.jsonl'}:1]\t" in "\n".join(rows)
    # seq2 names no chain: --chains cannot select it, so it is kept, and counted as such
    assert sorted(PreparedDataset(out).ids) == [
        "1ABC.A",
        "1AIE.A",
        "1AJJ.A",
        "1LZH.A",
        "1ORC.A",
        "seq2",
    ]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["chains_filtered"] == {"not in --chains": 3}
    assert counts["chains_read"] == 9 and counts["chains_kept"] == 6
    assert counts["chains_without_chain_id"] == 1 and counts["chains_not_found"] == []
    assert "chains read: 9; kept: 6" in printed and "chains filtered: not in --chains: 3" in printed
    assert "--chains: 1 chains have an id that names no chain" in printed


def test_chains_not_found_and_no_match_with_records(mixed, tmp_path, capsys):
    out = tmp_path / "az"
    assert _prepare(mixed, out, "--chains", "A,Z", "--min-length", "1") == 0
    assert "WARNING: --chains Z: no input has" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["counts"]["chains_not_found"] == ["Z"]
    # records only, none with chain Z: nothing prepared, and the error names their chains
    out = tmp_path / "z"
    assert _prepare(mixed / "chain_set_small.jsonl", out, "--chains", "Z") == 2
    assert capsys.readouterr().err.startswith(
        "error: --chains Z matched no protein chain of the inputs (their chains: A, B)"
    )
    assert len(_skipped_rows(out / "skipped.tsv")) == 3 and not (out / "manifest.json").exists()
    # a record that names no chain is still prepared: not an error, but Z is named
    out = tmp_path / "zf"
    assert _prepare(mixed / "seqs.fasta", out, "--chains", "Z", "--min-length", "1") == 0
    assert "WARNING: --chains Z: no input has" in capsys.readouterr().out
    assert PreparedDataset(out).ids == ["seq2"]
    assert len(_skipped_rows(out / "skipped.tsv")) == 2


def test_final_progress_line_agrees_with_the_summary_and_skip_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(coordformer.progress, "PLAIN_EVERY_S", 0.0)
    d = tmp_path / "in"
    d.mkdir()
    for name in ("1A8O.pdb", "1A8O.cif", "4hhh_frag.pdb", "1orc.pdb", "SOURCES.md"):
        shutil.copy(DATA / name, d / name)  # 1A8O.A twice (a duplicate), SOURCES.md unreadable
    out = tmp_path / "ds"
    assert main(["prepare", str(d), "-o", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    last = [line for line in printed.splitlines() if line.startswith("prepare: ")][-1]
    n_kept = len(PreparedDataset(out).ids)
    n_skipped = len(_skipped_rows(out / "skipped.tsv"))
    assert (n_kept, n_skipped) == (2, 4)  # so that the line below checks the duplicate too
    assert f"kept {n_kept}, skipped {n_skipped}," in last, last
    assert f"; kept: {n_kept} (" in printed


def test_exclude_ids_not_in_the_dataset_are_printed(inputs, tmp_path, capsys):
    ex = tmp_path / "ex.txt"
    ex.write_text("1ORC.A\n9XYZ.A\n")
    out = tmp_path / "ds"
    assert _prepare(inputs, out, "--exclude", str(ex)) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "9XYZ.A" in line]
    assert len(lines) == 1 and "not in the dataset" in lines[0]
    assert str(out / "exclude_unmatched.txt") in lines[0]


def _embed(*args):
    return main(["embed", *map(str, args), "-c", "small-coords", "--quiet"])


def test_embed_names_its_skip_list_and_logs_what_chains_leaves_out(mixed, tmp_path, capsys):
    out = tmp_path / "z.npz"
    assert _embed(mixed / "chain_set_small.jsonl", "-o", out, "--chains", "Z") == 2
    err = capsys.readouterr().err
    assert f"({out}.skipped.tsv names each input's chains)" in err and "nothing was" not in err
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.pdb").write_text("not a structure\n")
    assert _embed(junk, "-o", tmp_path / "j.npz") == 2
    assert f"no readable chains in the inputs (see {tmp_path / 'j.npz'}.skipped.tsv)" in (
        capsys.readouterr().err
    )
    # raw inputs and a prepared dataset: the chains --chains leaves out are listed and counted
    out = tmp_path / "a.npz"
    assert _embed(mixed, "-o", out, "--chains", "A") == 0
    assert f"3 chains not in --chains A, see {out}.skipped.tsv" in capsys.readouterr().out
    assert len(_skipped_rows(f"{out}.skipped.tsv")) == 3
    ds = tmp_path / "ds"
    assert _prepare(mixed, ds, "--min-length", "1") == 0
    capsys.readouterr()
    out = tmp_path / "p.npz"
    assert _embed(ds, "-o", out, "--chains", "B") == 0
    assert f"5 chains not in --chains B, see {out}.skipped.tsv" in capsys.readouterr().out
    rows = _skipped_rows(f"{out}.skipped.tsv")
    assert len(rows) == 5 and all("\tnot in --chains: chain A (--chains B)" in r for r in rows)


def test_embed_refuses_a_prepared_dataset_among_other_inputs(inputs, tmp_path, capsys):
    ds = tmp_path / "ds"
    assert _prepare(inputs, ds) == 0
    capsys.readouterr()
    out = tmp_path / "m.npz"
    assert _embed(DATA / "1orc.pdb", ds, "-o", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {ds} is a prepared dataset: give it on its own")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_chains_parts_of_older_versions_are_redone_on_resume(mixed, tmp_path):
    from coordformer.config import PrepareConfig
    from coordformer.data.prepare import units

    (unit,), _ = units.plan_units([mixed / "chain_set_small.jsonl"], 500)
    result = units.process_unit(unit, PrepareConfig(chains=("A",)))
    assert result.meta.chains_read == 3 and result.meta.no_chain_ids == 0
    units.write_part(tmp_path, unit.key, result)
    assert units.read_part_meta(units.part_path(tmp_path, unit.key)) == result.meta
    # an older part dropped the records --chains left out without a row: not to be resumed
    old = dataclasses.replace(result.meta, no_chain_ids=None)
    units.write_part(tmp_path, unit.key, dataclasses.replace(result, meta=old))
    with pytest.raises(ValueError, match="older version"):
        units.read_part_meta(units.part_path(tmp_path, unit.key))
    # one without the chains it has: redone, or the error naming the inputs' chains misses them
    assert result.meta.chains_seen == ("A", "B")
    old = dataclasses.replace(result.meta, chains_seen=None)
    units.write_part(tmp_path, unit.key, dataclasses.replace(result, meta=old))
    with pytest.raises(ValueError, match="did not record the chains"):
        units.read_part_meta(units.part_path(tmp_path, unit.key))


def test_chains_not_found_carries_the_file_chains_as_data(tmp_path):
    """The error names the chains as data (the prepare workers pickle it), and the part metadata
    keeps every author chain a unit has, so the 'their chains' message parses no text."""
    import pickle

    from coordformer.config import PrepareConfig
    from coordformer.data.prepare.units import PartMeta, WorkUnit, process_unit
    from coordformer.io import ChainsNotFoundError, read_structure

    with pytest.raises(ChainsNotFoundError) as info:
        read_structure(DATA / "1orc.pdb", chains=["Z", "Y"])
    assert info.value.protein_chains == ("A",) and info.value.requested == ("Y", "Z")
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.protein_chains, str(again)) == (("A",), str(info.value))

    unit = WorkUnit("file", str(DATA / "1orc.pdb"))
    meta = process_unit(unit, PrepareConfig(chains=("Z",))).meta
    assert meta.chains_seen == ("A",) and meta.chains_found == ()
    assert PartMeta.from_json(json.loads(json.dumps(meta.to_json()))).chains_seen == ("A",)
    assert process_unit(unit, PrepareConfig()).meta.chains_seen is None
