from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from coordformer.errors import CoordformerError
from coordformer.function.labels import (
    FunctionDataError,
    LabelSet,
    function_dataset,
    normalise_chain_id,
    read_annotations,
    read_identity_bins,
    read_split,
)

DEEPFRI = Path("/work/shared/data/deepfri")

EC_ANNOT = (
    "### EC-numbers\n"
    "1.1.1.1\t2.7.11.1\t3.4.21.-\t\n"  # trailing tab: not an extra class
    "### PDB-chain\tEC-numbers\n"
    "12as-A\t3.4.21.-,1.1.1.1\n"
    "6UE0-AAA\t2.7.11.1,9.9.9.9\n"  # 9.9.9.9 is not a class
    "1ABC-aL\t2.7.11.1\n"  # chain ids are case-sensitive
    "2XYZ-B\t9.9.9.9\n"  # only an unknown class: unlabelled
)

GO_ANNOT = (
    "### GO-terms (molecular_function)\n"
    "GO:0000001\tGO:0000002\n"
    "### GO-names (molecular_function)\n"
    "binding\tcatalytic activity, broadly\n"
    "### GO-terms (biological_process)\n"
    "GO:0000010\tGO:0000011\tGO:0000012\n"
    "### GO-names (biological_process)\n"
    "a\tb\tc\n"
    "### GO-terms (cellular_component)\n"
    "GO:0000020\n"
    "### GO-names (cellular_component)\n"
    "membrane\n"
    "### PDB-chain\tGO-terms (molecular_function)\tGO-terms (biological_process)\t"
    "GO-terms (cellular_component)\n"
    "1AAA-A\tGO:0000002,GO:0000001\t\tGO:0000020\n"
    "1BBB-B\t\tGO:0000012\t\n"
    "1CCC-C\tGO:0000001\n"  # trailing empty columns missing altogether
)


def write(tmp_path: Path, name: str, text: str, crlf: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode())
    return path


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("12AS-A", "12AS.A"),
        ("12AS.A", "12AS.A"),
        ("12as_A", "12AS.A"),
        ("12as-a", "12AS.a"),
        ("6UE0-AAA", "6UE0.AAA"),
        (" 1abc-aL\r", "1ABC.aL"),
    ],
)
def test_normalise_chain_id(raw, expected):
    assert normalise_chain_id(raw) == expected


@pytest.mark.parametrize("raw", ["12AS", "", "12AS-"])
def test_normalise_chain_id_rejects_ids_without_chain(raw):
    with pytest.raises(ValueError):
        normalise_chain_id(raw)


@pytest.mark.parametrize("crlf", [False, True])
def test_read_ec_annotations(tmp_path, crlf):
    ls = read_annotations(write(tmp_path, "nrPDB-EC_annot.tsv", EC_ANNOT, crlf), "ec")
    assert ls.task == "ec"
    assert ls.classes == ("1.1.1.1", "2.7.11.1", "3.4.21.-")  # file order = DeepFRI's column order
    assert ls.n_classes == 3
    assert sorted(ls.labels) == ["12AS.A", "1ABC.aL", "6UE0.AAA"]
    assert ls.labels["12AS.A"].tolist() == [0, 2]  # sorted indices
    assert ls.labels["12AS.A"].dtype == np.int64
    assert ls.labels["6UE0.AAA"].tolist() == [1]
    assert ls.n_unknown == 2 and ls.n_unlabelled == 1
    assert ls.class_names == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ls.task = "go-mf"


def test_read_go_annotations(tmp_path):
    path = write(tmp_path, "nrPDB-GO_annot.tsv", GO_ANNOT, crlf=True)
    mf = read_annotations(path, "go-mf")
    assert mf.classes == ("GO:0000001", "GO:0000002")
    assert mf.class_names == ("binding", "catalytic activity, broadly")
    assert {k: v.tolist() for k, v in mf.labels.items()} == {"1AAA.A": [0, 1], "1CCC.C": [0]}
    assert mf.n_unlabelled == 1
    bp = read_annotations(path, "go-bp")
    assert bp.n_classes == 3
    assert {k: v.tolist() for k, v in bp.labels.items()} == {"1BBB.B": [2]}
    cc = read_annotations(path, "go-cc")
    assert {k: v.tolist() for k, v in cc.labels.items()} == {"1AAA.A": [0]}
    assert cc.class_names == ("membrane",)


def test_dense_matrix(tmp_path):
    ls = read_annotations(write(tmp_path, "a.tsv", EC_ANNOT), "ec")
    y = ls.dense(["6UE0.AAA", "12AS.A"])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[0, 1, 0], [1, 0, 1]])
    with pytest.raises(KeyError):
        ls.dense(["2XYZ.B"])


def test_wrong_task_or_file_kind(tmp_path):
    ec = write(tmp_path, "ec.tsv", EC_ANNOT)
    with pytest.raises(FunctionDataError, match="GO-terms \\(molecular_function\\)"):
        read_annotations(ec, "go-mf")
    with pytest.raises(FunctionDataError, match="unknown function task"):
        read_annotations(ec, "go")
    with pytest.raises(FunctionDataError, match="not found"):
        read_annotations(tmp_path / "missing.tsv", "ec")


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("1.1.1.1\n### PDB-chain\tEC-numbers\n", 1, "header"),
        ("### EC-numbers\n1.1.1.1\t1.1.1.1\n### PDB-chain\tEC-numbers\n", 2, "listed twice"),
        ("### EC-numbers\n1.1.1.1\t\t2.2.2.2\n### PDB-chain\tEC-numbers\n", 2, "empty entry"),
        ("### EC-numbers\n### PDB-chain\tEC-numbers\n", 1, "not followed"),
        (
            "### EC-numbers\n1.1.1.1\n### PDB-chain\tEC-numbers\n"
            "1ABC-A\t1.1.1.1\n1abc_A\t1.1.1.1\n",
            5,
            "already listed",
        ),
        (
            "### EC-numbers\n1.1.1.1\n### PDB-chain\tEC-numbers\n1ABC-A\t1.1.1.1\tx\n",
            4,
            "header has 2",
        ),
        ("### EC-numbers\n1.1.1.1\n### PDB-chain\tEC-numbers\n\n1ABC\t1.1.1.1\n", 5, "chain id"),
    ],
)
def test_malformed_annotations_name_file_and_line(tmp_path, text, line, match):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(FunctionDataError, match=match) as info:
        read_annotations(path, "ec")
    assert str(info.value).startswith(f"{path}, line {line}:")
    assert isinstance(info.value, CoordformerError)


def test_annotations_without_chain_table(tmp_path):
    with pytest.raises(FunctionDataError, match="PDB-chain"):
        read_annotations(write(tmp_path, "bad.tsv", "### EC-numbers\n1.1.1.1\n"), "ec")


def test_go_names_count_mismatch(tmp_path):
    text = GO_ANNOT.replace("membrane\n", "membrane\tnucleus\n")
    with pytest.raises(FunctionDataError, match="line 12: 2 names for 1 classes"):
        read_annotations(write(tmp_path, "go.tsv", text), "go-cc")


def test_read_split(tmp_path):
    path = write(tmp_path, "x_train.txt", "12as-A\n\n6UE0-AAA\n1abc-aL", crlf=True)
    assert read_split(path) == ["12AS.A", "6UE0.AAA", "1ABC.aL"]
    with pytest.raises(FunctionDataError, match="line 2: chain 12AS.A already listed on line 1"):
        read_split(write(tmp_path, "dup.txt", "12AS-A\n12AS.A\n"))
    with pytest.raises(FunctionDataError, match="line 1: expected one chain id"):
        read_split(write(tmp_path, "two.txt", "12AS-A 1ABC-B\n"))


def test_read_identity_bins(tmp_path):
    text = "PDB-chain,<30%,<40%,<50%,<70%,<95%\n2FOR-A,0,0,1,1,1\n1nw6-A,1,1,1,1,1\n"
    bins = read_identity_bins(write(tmp_path, "x_test.csv", text, crlf=True))
    assert list(bins) == ["2FOR.A", "1NW6.A"]
    assert bins["2FOR.A"] == {
        "<30%": False,
        "<40%": False,
        "<50%": True,
        "<70%": True,
        "<95%": True,
    }
    assert all(bins["1NW6.A"].values())
    with pytest.raises(FunctionDataError, match="line 2: identity flags must be 0 or 1, got '2'"):
        read_identity_bins(write(tmp_path, "bad.csv", "PDB-chain,<30%\n2FOR-A,2\n"))
    with pytest.raises(FunctionDataError, match="line 3: 3 comma-separated fields"):
        read_identity_bins(write(tmp_path, "bad2.csv", "PDB-chain,<30%\n2FOR-A,1\n1NW6-A,1,0\n"))
    with pytest.raises(FunctionDataError, match="line 1: expected a header"):
        read_identity_bins(write(tmp_path, "bad3.csv", "chain,<30%\n2FOR-A,1\n"))


def test_function_dataset(tmp_path):
    ls = read_annotations(write(tmp_path, "a.tsv", EC_ANNOT), "ec")
    split = [
        "6UE0-AAA",
        "2XYZ-B",
        "9ZZZ-A",
        "12AS-A",
        "1ABC-aL",
        "6ue0.AAA",
    ]  # last one repeats the first
    available = ["12as_A", "6UE0.AAA", "9ZZZ.A", "not-a-pdb-name"]
    ids, y, report = function_dataset(ls, split, available)
    assert ids == ["6UE0.AAA", "12AS.A"]  # split order
    np.testing.assert_array_equal(y, [[0, 1, 0], [1, 0, 1]])
    assert y.dtype == np.float32
    # 2XYZ.B and 9ZZZ.A have no labels; 1ABC.aL has labels but no structure.
    assert report == {"in_split": 5, "without_labels": 2, "without_structure": 1, "kept": 2}
    ids, y, report = function_dataset(ls, [], available)
    assert ids == [] and y.shape == (0, 3) and report["kept"] == 0


def test_missing_structure_hint_names_per_chain_file_ids(tmp_path):
    from coordformer.function.labels import missing_structure_hint

    ls = read_annotations(write(tmp_path, "a.tsv", EC_ANNOT), "ec")
    split = ["6UE0-AAA", "12AS-A", "1ABC-aL"]
    assert missing_structure_hint(ls, split, ["6UE0.AAA", "12AS.A", "1ABC.aL"]) is None
    hint = missing_structure_hint(
        ls, split, ["6UE0.AAA", "12AS-A.A"]
    )  # 12as-A.pdb read by an earlier version
    assert hint.startswith(
        "2 labelled chains have no structure in the dataset (e.g. 12AS.A, 1ABC.aL)"
    )
    assert (
        "1 of them are there under ids made from per-chain file names (12AS-A.A for 12AS.A)" in hint
    )


def test_label_set_is_a_plain_dataclass():
    ls = LabelSet("ec", ("a", "b"), {"1ABC.A": np.array([1])})
    assert ls.n_unknown == 0 and ls.n_unlabelled == 0
    np.testing.assert_array_equal(ls.dense(["1ABC.A"]), [[0, 1]])


@pytest.mark.skipif(not DEEPFRI.is_dir(), reason="DeepFRI benchmark files are only on dev machines")
def test_real_deepfri_ec_files():
    ls = read_annotations(DEEPFRI / "nrPDB-EC_2020.04_annot.tsv", "ec")
    assert ls.n_classes == 538
    splits = {
        s: read_split(DEEPFRI / f"nrPDB-EC_2020.04_{s}.txt") for s in ("train", "valid", "test")
    }
    assert {s: len(v) for s, v in splits.items()} == {
        "train": 15_551,
        "valid": 1_729,
        "test": 1_919,
    }
    assert all(cid in ls.labels for ids in splits.values() for cid in ids)
    ids, y, report = function_dataset(ls, splits["test"], splits["test"])
    assert report["kept"] == 1_919 and y.shape == (1_919, 538) and (y.sum(1) >= 1).all()
    bins = read_identity_bins(DEEPFRI / "nrPDB-EC_2020.04_test.csv")
    assert set(bins) == set(splits["test"])
    assert list(next(iter(bins.values()))) == ["<30%", "<40%", "<50%", "<70%", "<95%"]
