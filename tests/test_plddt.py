"""prepare/embed --plddt-min: predicted models' low-confidence residues become missing
coordinates."""

import json

import numpy as np
import pytest

from conftest import write_jsonl
from coordformer.cli import main
from coordformer.config import ConfigError, PrepareConfig
from coordformer.data.prepare import low_plddt, prepare
from coordformer.data.store import PreparedDataset
from coordformer.embed import EmbedConfig, embed, read_embeddings
from coordformer.errors import OptionError
from coordformer.io import read_structure

N = 30
THREE = {"A": "ALA", "G": "GLY", "K": "LYS", "L": "LEU", "E": "GLU", "S": "SER"}
SEQ = ("AGKLES" * 5)[:N]
# AlphaFold-like: confident core, one dip (65) in the middle, a value exactly at the threshold
# (70: kept, the rule is strictly below) and a disordered tail.
PLDDT = np.full(N, 91.5)
PLDDT[10] = 65.0
PLDDT[11] = 70.0
PLDDT[24:] = [55.0, 48.2, 40.0, 35.5, 30.1, 28.0]
LOW = PLDDT < 70
OFFSETS = {
    "N": (-1.2, 0.5, 0.3),
    "CA": (0.0, 0.0, 0.0),
    "C": (1.3, 0.4, -0.2),
    "O": (2.0, 1.2, 0.1),
}


def _ca(i: int) -> np.ndarray:
    t = i * 100 * np.pi / 180  # alpha-helix-like trace, ~3.8 A between CAs
    return np.array([2.3 * np.cos(t), 2.3 * np.sin(t), 1.5 * i])


def write_model(path, plddt=PLDDT, scale=1.0):
    """An AlphaFold-DB-style PDB: every atom of a residue carries the residue's pLDDT as
    B-factor."""
    lines, serial = [], 1
    for i, aa in enumerate(SEQ):
        for name, off in OFFSETS.items():
            x, y, z = _ca(i) + np.array(off)
            lines.append(
                f"ATOM  {serial:5d}  {name:<3s} {THREE[aa]} A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                f"{1.0:6.2f}{plddt[i] * scale:6.2f}           {name[0]}"
            )
            serial += 1
    path.write_text("\n".join([*lines, "TER", "END"]) + "\n")
    return path


def _cfg(**kw):
    return PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0, **kw)


def _only_chain(out):
    ds = PreparedDataset(out)
    assert len(ds) == 1
    return ds, ds.sequence(0), np.asarray(ds.coords(0))


@pytest.fixture
def model_pdb(tmp_path):
    return write_model(tmp_path / "AF-TEST-F1-model_v4.pdb")


def test_default_leaves_a_model_untouched_and_plddt_min_masks_exactly_the_low_residues(
    tmp_path, model_pdb
):
    ref = read_structure(model_pdb)[0].coords
    assert np.isfinite(ref).all()
    prepare([str(model_pdb)], tmp_path / "off", _cfg(), progress=False)
    ds, seq, coords = _only_chain(tmp_path / "off")
    assert seq == SEQ and np.array_equal(coords, ref) and ds.config.plddt_min is None

    prepare([str(model_pdb)], tmp_path / "on", _cfg(plddt_min=70), progress=False)
    ds, seq, coords = _only_chain(tmp_path / "on")
    assert seq == SEQ  # low residues stay in the sequence, flagged missing
    assert np.isnan(coords[LOW]).all()  # all four atoms
    assert np.array_equal(coords[~LOW], ref[~LOW])
    assert ds.config.plddt_min == 70
    assert json.loads((tmp_path / "on" / "manifest.json").read_text())["config"]["plddt_min"] == 70


def test_cli_prepare_plddt_min(tmp_path, model_pdb):
    args = [
        "prepare",
        str(model_pdb),
        "--min-length",
        "1",
        "--valid-fraction",
        "0",
        "--test-fraction",
        "0",
        "--workers",
        "1",
        "--quiet",
    ]
    assert main([*args, "-o", str(tmp_path / "off")]) == 0
    assert main([*args, "-o", str(tmp_path / "on"), "--plddt-min", "70"]) == 0
    assert np.isfinite(_only_chain(tmp_path / "off")[2]).all()
    _, seq, coords = _only_chain(tmp_path / "on")
    assert seq == SEQ and np.isnan(coords[LOW]).all() and np.isfinite(coords[~LOW]).all()


def test_mostly_low_confidence_model_is_filtered_as_missing_ca(tmp_path):
    plddt = np.full(N, 30.0)
    plddt[:10] = 90.0  # 20 of 30 residues low: 67% > max_missing_ca 50%
    pdb = write_model(tmp_path / "disordered.pdb", plddt)
    s = prepare([str(pdb)], tmp_path / "on", _cfg(plddt_min=70), progress=False)
    assert s.chains_kept == 0 and s.chains_filtered == {"missing CA": 1}
    skipped = (tmp_path / "on" / "skipped.tsv").read_text()
    assert (
        "missing CA: 67% of residues lack CA > max_missing_ca 50% (20 residues below plddt_min 70)"
        in skipped
    )
    manifest = json.loads((tmp_path / "on" / "manifest.json").read_text())
    assert manifest["counts"]["chains_filtered"].get("missing CA") == 1
    # without the option the same file is a complete chain and is kept
    prepare([str(pdb)], tmp_path / "off", _cfg(), progress=False)
    assert len(PreparedDataset(tmp_path / "off")) == 1


def test_pLDDT_stored_as_0_to_1_is_scaled(tmp_path, model_pdb):
    esm = write_model(tmp_path / "esmfold.pdb", scale=0.01)
    assert read_structure(esm)[0].b_factors.max() <= 1
    prepare([str(model_pdb)], tmp_path / "a", _cfg(plddt_min=70), progress=False)
    prepare([str(esm)], tmp_path / "b", _cfg(plddt_min=70), progress=False)
    a, b = _only_chain(tmp_path / "a")[2], _only_chain(tmp_path / "b")[2]
    assert (
        np.array_equal(np.isnan(a), np.isnan(b))
        and np.isnan(b[LOW]).all()
        and np.isfinite(b[~LOW]).all()
    )
    # the rule itself: 0-1 values scaled only for a threshold above 1; NaN (no CA) never flagged
    assert low_plddt(np.array([0.9, 0.5, np.nan]), 70).tolist() == [False, True, False]
    assert low_plddt(np.array([0.9, 0.5]), 0.7).tolist() == [False, True]
    assert low_plddt(np.array([0.7, 0.69], dtype=np.float32), 70).tolist() == [False, True]
    assert low_plddt(np.array([90.0, 0.5]), 70).tolist() == [False, True]


@pytest.mark.parametrize("value", ["150", "-1"])
def test_out_of_range_is_a_one_line_usage_error(tmp_path, model_pdb, capsys, value):
    capsys.readouterr()
    assert (
        main(
            ["prepare", str(model_pdb), "-o", str(tmp_path / "x"), "--plddt-min", value, "--quiet"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--plddt-min" in err and len(err.splitlines()) == 1
    with pytest.raises(ConfigError, match="plddt_min must be in"):
        prepare([str(model_pdb)], tmp_path / "y", _cfg(plddt_min=float(value)), progress=False)


def test_chain_set_records_with_and_without_b_factors(tmp_path):
    chain = read_structure(write_model(tmp_path / "m.pdb"))[0]
    coords = {
        a: [None if np.isnan(r[k]).any() else r[k].tolist() for r in chain.coords]
        for k, a in enumerate(OFFSETS)
    }
    rec = {"name": "WITH.A", "seq": SEQ, "coords": coords, "b_factors": PLDDT.tolist()}
    bare = {"name": "BARE.A", "seq": SEQ, "coords": coords}
    path = write_jsonl([rec, bare], tmp_path / "set.jsonl")
    prepare([str(path)], tmp_path / "ds", _cfg(plddt_min=70), progress=False)
    ds = PreparedDataset(tmp_path / "ds")
    assert np.isnan(ds.coords(ds.index_of("WITH.A"))[LOW]).all()
    assert np.isfinite(ds.coords(ds.index_of("BARE.A"))).all()  # no B-factors: nothing to apply


def test_manifest_without_plddt_min_still_loads(tmp_path, model_pdb):
    prepare([str(model_pdb)], tmp_path / "ds", _cfg(), progress=False)
    path = tmp_path / "ds" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["config"]["plddt_min"]  # as written before the option existed
    path.write_text(json.dumps(manifest))
    assert PreparedDataset(tmp_path / "ds").config.plddt_min is None


def test_embed_plddt_min(tmp_path, model_pdb):
    out_on, out_off = tmp_path / "on.npz", tmp_path / "off.npz"
    assert (
        main(
            [
                "embed",
                str(model_pdb),
                "-c",
                "small-coords",
                "-o",
                str(out_on),
                "--plddt-min",
                "70",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    embed(
        "small-coords",
        [str(model_pdb)],
        out_off,
        EmbedConfig(),
        progress=False,
        echo=lambda s: None,
    )
    ids, on = read_embeddings(out_on)
    assert read_embeddings(out_off)[0] == ids and not np.allclose(on, read_embeddings(out_off)[1])
    # the same numbers as a chain_set record with those residues' coordinates absent
    chain = read_structure(model_pdb)[0]
    coords = {
        a: [None if LOW[i] else r[k].tolist() for i, r in enumerate(chain.coords)]
        for k, a in enumerate(OFFSETS)
    }
    masked = write_jsonl(
        [{"name": ids[0], "seq": SEQ, "coords": coords}], tmp_path / "masked.jsonl"
    )
    embed(
        "small-coords",
        [str(masked)],
        tmp_path / "m.npz",
        EmbedConfig(),
        progress=False,
        echo=lambda s: None,
    )
    assert np.allclose(on, read_embeddings(tmp_path / "m.npz")[1], atol=1e-5)
    # a prepared dataset has no B-factors left to apply the threshold to
    prepare([str(model_pdb)], tmp_path / "ds", _cfg(), progress=False)
    with pytest.raises(OptionError, match="applies to structure inputs") as err:
        embed(
            "small-coords",
            [str(tmp_path / "ds")],
            tmp_path / "x.npz",
            EmbedConfig(plddt_min=70),
            progress=False,
            echo=lambda s: None,
        )
    assert err.value.flag_message().startswith(
        "--plddt-min 70: applies to structure inputs"
    )  # what the CLI prints


def _with_expdta(path, method):
    """The same model with a PDB EXPDTA record: B-factors of an experiment, not pLDDT."""
    path.write_text(f"EXPDTA    {method}\n" + path.read_text())
    return path


@pytest.mark.parametrize("method", ["X-RAY DIFFRACTION", "SOLUTION NMR", "ELECTRON MICROSCOPY"])
def test_experimental_structures_keep_their_residues_and_store_no_plddt(
    tmp_path, model_pdb, method
):
    # An X-ray chain's B-factors run 10-80: read as pLDDT, --plddt-min 70 would have made its
    # mobile (not uncertain) residues missing, and --store-plddt would have fed them to the model
    xray = _with_expdta(write_model(tmp_path / "1XYZ.pdb"), method)
    chain = read_structure(xray)[0]
    assert chain.experimental_method == method
    assert read_structure(model_pdb)[0].experimental_method is None
    s = prepare(
        [str(xray), str(model_pdb)],
        tmp_path / "ds",
        _cfg(plddt_min=70, store_plddt=True),
        progress=False,
    )
    ds = PreparedDataset(tmp_path / "ds")
    i, j = ds.index_of("1XYZ.A"), ds.index_of("AF-TEST-F1-model_v4.A")
    assert np.isfinite(ds.coords(i)).all()  # left whole
    assert np.isnan(ds.coords(j)[LOW]).all()  # the predicted model is still masked
    assert np.isnan(ds.plddt(i)).all()  # no pLDDT: the feature reads it as certain
    assert np.allclose(ds.plddt(j), PLDDT)
    assert s.chains_experimental == 1 and "1XYZ.A" in s.experimental_examples[0]
    assert "1 kept chains come from experimental structures" in s.format()
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["counts"]["chains_experimental_no_plddt"] == 1
    # without a pLDDT option nothing is counted
    s = prepare([str(xray)], tmp_path / "off", _cfg(), progress=False)
    assert s.chains_experimental == 0
    counts = json.loads((tmp_path / "off" / "manifest.json").read_text())["counts"]
    assert "chains_experimental_no_plddt" not in counts


def test_theoretical_models_and_mmcif_methods(tmp_path, model_pdb):
    from coordformer.io.structures import experimental_method

    assert experimental_method("THEORETICAL MODEL") is None
    assert experimental_method("") is None
    assert experimental_method("x-ray  diffraction; neutron diffraction") == (
        "X-RAY DIFFRACTION; NEUTRON DIFFRACTION"
    )
    assert experimental_method("EPR") == "EPR" and experimental_method("SOLID-STATE NMR")
    theo = _with_expdta(write_model(tmp_path / "theo.pdb"), "THEORETICAL MODEL")
    assert read_structure(theo)[0].experimental_method is None
    # mmCIF: _exptl.method of a real entry
    cif = read_structure("tests/data/3JQH.cif")[0]
    assert cif.experimental_method == "X-RAY DIFFRACTION"


def test_chain_set_keeps_the_experimental_method(tmp_path):
    from coordformer.data.prepare import plddt_values
    from coordformer.io import iter_chain_set, write_chain_set

    chain = read_structure(_with_expdta(write_model(tmp_path / "1XYZ.pdb"), "X-RAY DIFFRACTION"))[0]
    assert np.isnan(plddt_values(chain)).all()
    write_chain_set([chain], tmp_path / "set.jsonl")
    back = next(iter(iter_chain_set(tmp_path / "set.jsonl")))
    assert back.experimental_method == "X-RAY DIFFRACTION"
    assert np.allclose(back.b_factors, PLDDT)  # the B-factors themselves are kept
    assert np.isnan(plddt_values(back)).all()
