"""Issue 20 (what a new user hits), items 1 and 4: no silent loss of chains through ids.

Item 1: different proteins must not get the same id. A structure file's entry id is its PDB /
AlphaFold DB id only when it is one (structure predictors write ``data_model`` into every file); a
different chain under an id another file uses (decoys sharing a HEADER, ``ranked_0.pdb`` in several
folders) renames the files involved after their file names; the same chain twice is a real
duplicate, dropped with both files named in skipped.tsv.

Item 4: ``--exclude`` must not leak chains into train: byte-order marks are stripped by every text
reader, a listed id that matches no chain exactly but one chain up to case / separator is excluded
and named in the log, and every id that matches no chain exactly is written to
exclude_unmatched.txt.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.io import is_archive_id, iter_chain_set, iter_fasta, read_id_list, read_structure
from coordformer.io.chain_set import is_chain_set

DATA = Path(__file__).parent / "data"
BOM = b"\xef\xbb\xbf"
QUIET = dict(workers=1, progress=False)
ALL_TRAIN = dict(min_length=5, valid_fraction=0.0, test_fraction=0.0)


def _rename_block(src: Path, dst: Path, block: str) -> Path:
    """Copy an mmCIF file with its data_ block renamed (what structure predictors write)."""
    text = src.read_text()
    first, rest = text.split("\n", 1)
    assert first.startswith("data_")
    dst.write_text(f"data_{block}\n{rest}")
    return dst


def _shifted_pdb(src: Path, dst: Path, dx: float) -> Path:
    """Copy a PDB file with every atom moved by dx along x (a 'decoy' that keeps the HEADER)."""
    out = []
    for line in src.read_text().splitlines(keepends=True):
        if line.startswith(("ATOM  ", "HETATM")):
            line = f"{line[:30]}{float(line[30:38]) + dx:8.3f}{line[38:]}"
        out.append(line)
    dst.write_text("".join(out))
    return dst


def _skipped(out: Path) -> list[list[str]]:
    lines = (out / "skipped.tsv").read_text().splitlines()
    return [ln.split("\t") for ln in lines[1:]]


# ----------------------------------------------------------------------------------------------
# item 1: ids unique per input file
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, ok",
    [
        ("1abc", True),
        ("1ABC", True),
        ("pdb_00001abc", True),
        ("AF-P69905-F1", True),
        ("AF-P69905-F1-model_v4", True),
        ("model", False),
        ("s", False),
        ("0000", False),
        ("ZERO", False),
        ("abcd", False),
        ("1abcd", False),
        ("", False),
    ],
)
def test_archive_ids(name, ok):
    assert is_archive_id(name) is ok


def test_read_structure_names_chains_after_the_file_when_the_block_name_is_generic(tmp_path):
    (ref,) = [c for c in read_structure(DATA / "1A8O.cif")]
    assert ref.id == "1A8O.A" and ref.ignored_entry is None  # a PDB id block name is used
    for block in ("model", "s"):
        p = _rename_block(DATA / "1A8O.cif", tmp_path / f"pred_{block}.cif", block)
        (c,) = read_structure(p)
        assert c.id == f"pred_{block}.A" and c.ignored_entry == block
        assert c.sequence == ref.sequence
    af = _rename_block(DATA / "1A8O.cif", tmp_path / "x.cif", "AF-P69905-F1")
    assert read_structure(af)[0].id == "AF-P69905-F1.A"
    # a PDB HEADER that is not a PDB id (a decoy's made-up code) is ignored the same way
    pdb = (DATA / "1orc.pdb").read_text()
    assert pdb.startswith("HEADER") and "1ORC" in pdb.splitlines()[0]
    (tmp_path / "decoy_7.pdb").write_text(pdb.replace("1ORC", "ZZZZ", 1))
    (d,) = read_structure(tmp_path / "decoy_7.pdb")
    assert d.id == "decoy_7.A" and d.ignored_entry == "ZZZZ"


def test_three_proteins_named_data_model_are_all_kept(tmp_path):
    # the report: three different proteins, each written as data_model -> "wrote 1 chains"
    src = tmp_path / "preds"
    src.mkdir()
    for name, ref in (("alpha", "1A8O.cif"), ("beta", "3JQH.cif"), ("gamma", "5i55.cif")):
        _rename_block(DATA / ref, src / f"{name}.cif", "model")
    messages: list[str] = []
    s = prepare([src], tmp_path / "ds", PrepareConfig(**ALL_TRAIN), log=messages.append, **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    assert sorted(ds.ids) == ["alpha.A", "beta.A", "gamma.A"]
    assert s.chains_kept == 3 and not s.chains_filtered
    assert s.files_generic_entry == 3 and s.files_renamed == 0
    assert ds.manifest["counts"]["files_generic_entry"] == 3
    log = "\n".join(messages)
    assert "3 structure files" in log and "alpha.cif ('model')" in log
    assert "3 files with a generic block name" in s.format()


def test_decoys_sharing_a_header_are_renamed_and_a_real_copy_is_dropped_naming_both_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(DATA / "1orc.pdb", d / "1orc.pdb")  # the deposited entry (HEADER 1ORC)
    shutil.copy(DATA / "1orc.pdb", d / "orig_copy.pdb")  # the same chain again: a real duplicate
    _shifted_pdb(DATA / "1orc.pdb", d / "decoy_1.pdb", 1.5)  # same HEADER, different coordinates
    _shifted_pdb(DATA / "1orc.pdb", d / "decoy_2.pdb", -2.0)
    messages: list[str] = []
    s = prepare([d], tmp_path / "ds", PrepareConfig(**ALL_TRAIN), log=messages.append, **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    assert sorted(ds.ids) == ["1ORC.A", "decoy_1.A", "decoy_2.A"]
    assert ds.source(ds.index_of("1ORC.A")).endswith("1orc.pdb")
    x0, x1 = ds.coords(ds.index_of("1ORC.A")), ds.coords(ds.index_of("decoy_1.A"))
    np.testing.assert_allclose(x1[..., 0] - x0[..., 0], 1.5, atol=2e-3)
    assert s.files_renamed == 2 and s.chains_filtered == {"duplicate id": 1}
    assert ds.manifest["counts"]["files_renamed"] == 2
    (row,) = _skipped(tmp_path / "ds")
    assert row[0].startswith("1ORC.A [") and row[0].endswith(
        "orig_copy.pdb]"
    )  # the dropped copy ...
    assert (
        str(d / "1orc.pdb") in row[1] and "same sequence and coordinates" in row[1]
    )  # ... and the one kept
    assert any("decoy_1.pdb: 1ORC -> decoy_1" in m for m in messages)


def test_same_file_name_in_several_folders(tmp_path):
    # AlphaFold writes ranked_0.pdb into one folder per target, without a HEADER
    pdb = (DATA / "1orc.pdb").read_text()
    no_header = "".join(ln for ln in pdb.splitlines(keepends=True) if not ln.startswith("HEADER"))
    for folder, dx in (("t1", 0.0), ("t2", 3.0)):
        (tmp_path / "af" / folder).mkdir(parents=True)
        (tmp_path / "src.pdb").write_text(no_header)
        _shifted_pdb(tmp_path / "src.pdb", tmp_path / "af" / folder / "ranked_0.pdb", dx)
    # the same folder name twice as well: a numbered suffix is the last resort
    for top, dx in (("x", 5.0), ("y", 7.0)):
        (tmp_path / "af" / top / "t3").mkdir(parents=True)
        _shifted_pdb(tmp_path / "src.pdb", tmp_path / "af" / top / "t3" / "model.pdb", dx)
    s = prepare([tmp_path / "af"], tmp_path / "ds", PrepareConfig(**ALL_TRAIN), **QUIET)
    ds = PreparedDataset(tmp_path / "ds")
    assert sorted(ds.ids) == ["t1_ranked_0.A", "t2_ranked_0.A", "t3_model.A", "t3_model_2.A"]
    assert ds.source(ds.index_of("t3_model.A")).endswith("x/t3/model.pdb")
    assert s.files_renamed == 4 and not s.chains_filtered


def test_embed_keeps_three_proteins_named_data_model(tmp_path):
    from coordformer.embed import EmbedConfig, embed, read_embeddings

    src = tmp_path / "preds"
    src.mkdir()
    for name, ref in (("alpha", "1A8O.cif"), ("beta", "3JQH.cif"), ("gamma", "5i55.cif")):
        _rename_block(DATA / ref, src / f"{name}.cif", "model")
    out = tmp_path / "e.npz"
    res = embed(
        "small-nocoords", [str(src)], out, EmbedConfig(), progress=False, echo=lambda s: None
    )
    ids, mean = read_embeddings(out)
    assert sorted(ids) == ["alpha.A", "beta.A", "gamma.A"] and res["chains"] == 3
    assert res["prepare"]["files_generic_entry"] == 3


# ----------------------------------------------------------------------------------------------
# item 4: byte-order marks and --exclude
# ----------------------------------------------------------------------------------------------


def test_every_text_reader_strips_a_byte_order_mark(tmp_path):
    # id lists (UTF-8 and UTF-16, as Windows tools save them)
    (tmp_path / "ids.txt").write_bytes(BOM + b"12as-A\r\n1abc_B\r\n")
    assert read_id_list(tmp_path / "ids.txt") == ["12AS.A", "1ABC.B"]
    (tmp_path / "ids16.txt").write_bytes("12as-A\n1abc_B\n".encode("utf-16"))
    assert read_id_list(tmp_path / "ids16.txt") == ["12AS.A", "1ABC.B"]
    gz = tmp_path / "ids.txt.gz"
    gz.write_bytes(gzip.compress(BOM + b"12as-A\n"))
    assert read_id_list(gz) == ["12AS.A"]
    # FASTA
    (tmp_path / "s.fasta").write_bytes(BOM + b">first desc\nACDE\n>second\nKLM\n")
    assert [c.id for c in iter_fasta(tmp_path / "s.fasta")] == ["first", "second"]
    # PDB: the HEADER (the entry id) is the first line
    (tmp_path / "bom.pdb").write_bytes(BOM + (DATA / "1orc.pdb").read_bytes())
    (a,), (b,) = read_structure(tmp_path / "bom.pdb"), read_structure(DATA / "1orc.pdb")
    assert a.id == b.id == "1ORC.A" and a.sequence == b.sequence
    np.testing.assert_array_equal(a.coords, b.coords)
    # mmCIF
    (tmp_path / "bom.cif").write_bytes(BOM + (DATA / "1A8O.cif").read_bytes())
    (c,), (d,) = read_structure(tmp_path / "bom.cif"), read_structure(DATA / "1A8O.cif")
    assert c.id == d.id == "1A8O.A" and c.sequence == d.sequence
    # chain_set JSONL (plain and gzipped)
    raw = (DATA / "chain_set_small.jsonl").read_bytes()
    ref = [x.id for x in iter_chain_set(DATA / "chain_set_small.jsonl")]
    for name, content in (("bom.jsonl", BOM + raw), ("bom.jsonl.gz", gzip.compress(BOM + raw))):
        p = tmp_path / name
        p.write_bytes(content)
        assert is_chain_set(p)
        got = list(iter_chain_set(p))
        assert [x.id for x in got] == ref and not any(isinstance(x, Exception) for x in got)


def _record(name: str, n: int, rng) -> dict:
    xyz = rng.normal(scale=10.0, size=(n, 4, 3)).round(3)
    return {
        "name": name,
        "seq": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), n)),
        "coords": {a: xyz[:, k].tolist() for k, a in enumerate(("N", "CA", "C", "O"))},
    }


def test_exclude_list_with_bom_lowercase_chains_and_unmatched_ids(tmp_path):
    rng = np.random.default_rng(0)
    names = [
        "12AS.A",
        "1ZFD.N",
        "2XYZ.c",
        "2XYZ.C",
        "1ABC.AA",
        "1ABC.Aa",
        "model.B",
        "3DEF.A",
        "4GHI.A",
    ]
    js = tmp_path / "set.jsonl"
    js.write_text("".join(json.dumps(_record(n, 30, rng)) + "\n" for n in names))
    ex = tmp_path / "exclude.txt"
    # a BOM before the first id; '1zfd_n' as DeepFRI lists write it; '2xyz-c' exact
    # (case-sensitive); '1abc_aa' ambiguous (AA and Aa); 'model_B' differs by separator only; 99ZZ.Q
    # is not there
    ex.write_bytes(BOM + b"12AS-A\n1zfd_n\n2xyz-c\n1abc_aa\nmodel_B\n99ZZ.Q\n")
    messages: list[str] = []
    out = tmp_path / "ds"
    s = prepare(
        [js],
        out,
        PrepareConfig(
            min_length=5, valid_fraction=0.0, test_fraction=0.0, exclude_files=(str(ex),)
        ),
        log=messages.append,
        **QUIET,
    )
    ds = PreparedDataset(out)
    test = {ds.ids[i] for i in ds.split_indices("test")}
    train = {ds.ids[i] for i in ds.split_indices("train")}
    assert test == {
        "12AS.A",
        "1ZFD.N",
        "2XYZ.c",
        "model.B",
    }  # BOM stripped; near misses excluded too
    assert {
        "2XYZ.C",
        "1ABC.AA",
        "1ABC.Aa",
    } <= train  # exact match wins; an ambiguous near miss excludes nothing
    assert (
        s.excluded_ids_found == 4 and s.excluded_ids_listed == 6 and s.excluded_ids_unmatched == 4
    )
    assert s.excluded_near_misses == [
        "1ZFD.n -> 1ZFD.N (differs in case)",
        "model_B -> model.B (differs in separator)",
    ]
    counts = ds.manifest["counts"]
    assert counts["excluded_ids_unmatched"] == 4 and counts["excluded_near_misses"] == 2
    # the log names them, and the file lists every id without an exact match with what became of it
    log = "\n".join(messages)
    assert (
        "exclude: 1ZFD.n matches no chain exactly; excluded 1ZFD.N instead (differs in case" in log
    )
    assert (
        "1ABC.aa matches no chain exactly and several loosely (1ABC.AA, 1ABC.Aa); none excluded"
        in log
    )
    assert "not in the dataset" in log and "99ZZ.Q" in log and "exclude_unmatched.txt" in log
    unmatched = (out / "exclude_unmatched.txt").read_text()
    assert read_id_list(out / "exclude_unmatched.txt") == [
        "1ZFD.n",
        "1ABC.aa",
        "model_B",
        "99ZZ.Q",
    ]  # list order
    assert "excluded 1ZFD.N instead" in unmatched and "not in the dataset" in unmatched
    assert "exclude_unmatched.txt" in s.format()
    # a later run whose ids all match leaves no stale file behind
    ex.write_text("12AS.A\n")
    prepare(
        [js], out, PrepareConfig(min_length=5, exclude_files=(str(ex),)), overwrite=True, **QUIET
    )
    assert not (out / "exclude_unmatched.txt").exists()
