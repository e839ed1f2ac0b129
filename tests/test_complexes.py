"""Complexes: chain selection, chains of one file embedded together with a position gap, per-chain
and per-complex pooling, and too-long complexes skipped with a logged reason."""

import shutil
from pathlib import Path

import gemmi
import h5py
import numpy as np
import pytest
import torch

from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.data.complexes import complex_batch, complex_span, group_complexes
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.errors import UsageError
from coordformer.model.checkpoints import load_model

DATA = Path(__file__).parent / "data"


def _embed(*args) -> int:
    return main(["embed", *map(str, args), "-c", "small-coords", "--quiet"])


def _read(path):
    with h5py.File(path, "r") as f:
        chains = {
            i.decode(): (int(n), m) for i, n, m in zip(f["ids"][:], f["lengths"][:], f["mean"][:])
        }
        cx = f.get("complexes")
        complexes = (
            {}
            if cx is None
            else {
                i.decode(): (c.decode(), int(n), m)
                for i, c, n, m in zip(
                    cx["ids"][:], cx["chains"][:], cx["lengths"][:], cx["mean"][:]
                )
            }
        )
        residues = {k: f["residues"][k][:] for k in f["residues"]} if "residues" in f else {}
    return chains, complexes, residues


@pytest.fixture
def inputs(tmp_path):
    """1LZH (two lysozyme chains, CA only) and 1ORC (one chain) in one folder."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(DATA / "1lzh.pdb.gz", d)
    shutil.copy(DATA / "1orc.pdb", d)
    return d


def test_complexes_pool_per_chain_and_per_complex(tmp_path, inputs):
    out = tmp_path / "cx.h5"
    assert _embed(inputs, "-o", out, "--complexes", "--per-residue") == 0
    chains, complexes, residues = _read(out)
    assert set(chains) == {"1LZH.A", "1LZH.B", "1ORC.A"}
    assert complexes["1LZH"][:2] == ("1LZH.A,1LZH.B", 258) and complexes["1ORC"][:2] == (
        "1ORC.A",
        64,
    )
    # the complex row is the mean over all its residues = the length-weighted mean of its chains'
    # rows
    a, b = chains["1LZH.A"], chains["1LZH.B"]
    np.testing.assert_allclose(
        complexes["1LZH"][2], (a[0] * a[1] + b[0] * b[1]) / (a[0] + b[0]), atol=1e-5
    )
    np.testing.assert_allclose(
        residues["1LZH.A"].astype(np.float32).mean(0), a[1], atol=2e-3
    )  # float16 storage
    # a one-chain complex is that chain embedded alone: complex mode changes nothing for it
    single = tmp_path / "single.h5"
    assert _embed(inputs, "-o", single) == 0
    alone, no_complexes, _ = _read(single)
    assert no_complexes == {}
    np.testing.assert_allclose(chains["1ORC.A"][1], alone["1ORC.A"][1], atol=1e-5)
    np.testing.assert_allclose(complexes["1ORC"][2], alone["1ORC.A"][1], atol=1e-5)
    # ...while a chain of a real complex sees its partner
    assert np.abs(chains["1LZH.A"][1] - alone["1LZH.A"][1]).max() > 1e-3


def test_chain_in_a_complex_sees_its_partners_coordinates(tmp_path):
    """Moving chain B 40 A away changes chain A's complex embedding (one shared frame) but not its
    embedding alone (each chain is centred on itself)."""
    st = gemmi.read_structure(str(DATA / "1lzh.pdb.gz"))
    moved = gemmi.read_structure(str(DATA / "1lzh.pdb.gz"))
    for res in moved[0]["B"]:
        for atom in res:
            atom.pos = gemmi.Position(atom.pos.x + 40.0, atom.pos.y, atom.pos.z)
    for name, s in (("orig", st), ("moved", moved)):
        (tmp_path / name).mkdir()
        s.write_pdb(str(tmp_path / name / "1lzh.pdb"))
        assert _embed(tmp_path / name, "-o", tmp_path / f"{name}_cx.h5", "--complexes") == 0
        assert _embed(tmp_path / name, "-o", tmp_path / f"{name}_alone.h5") == 0
    cx = {n: _read(tmp_path / f"{n}_cx.h5")[0]["1LZH.A"][1] for n in ("orig", "moved")}
    alone = {n: _read(tmp_path / f"{n}_alone.h5")[0]["1LZH.A"][1] for n in ("orig", "moved")}
    np.testing.assert_allclose(alone["orig"], alone["moved"], atol=1e-5)
    assert np.abs(cx["orig"] - cx["moved"]).max() > 1e-2


def test_positions_jump_by_the_gap_between_chains(tmp_path, inputs):
    prepare(
        [str(inputs)],
        tmp_path / "ds",
        PrepareConfig(min_length=1, valid_fraction=0, test_fraction=0),
        workers=1,
        progress=False,
    )
    data = PreparedDataset(tmp_path / "ds")
    groups = dict(group_complexes(data, np.arange(len(data))))
    assert [data.ids[i] for i in groups["1LZH"]] == ["1LZH.A", "1LZH.B"] and len(
        groups["1ORC"]
    ) == 1
    assert complex_span(data.lengths[groups["1LZH"]], 10) == 129 + 10 + 129
    b = complex_batch(data, [groups["1LZH"], groups["1ORC"]], gap=10)
    assert b.tokens.shape == (2, 258) and b.padding_mask[1].sum() == 64
    pos, chain = b.positions[0], b.chain[0]
    assert (
        pos[128] == 128 and pos[129] == 139 and pos[-1] == 139 + 128
    )  # 10 positions skipped at the break
    assert (chain[:129] == 0).all() and (chain[129:] == 1).all() and (b.chain[1, 64:] == -1).all()
    # gap 0 is plain concatenation: the model then sees exactly its default positions 0..L-1
    model = load_model("small-coords")[0]
    b0 = complex_batch(data, [groups["1LZH"]], gap=0)
    with torch.no_grad():
        default = model(b0.tokens, b0.coords, b0.padding_mask).logits
        explicit = model(**b0.inputs()).logits
    assert torch.equal(default, explicit)
    with pytest.raises(UsageError, match="max_len"):
        model(b0.tokens, b0.coords, positions=b0.positions + model.config.max_len)


def test_chain_selection_and_too_long_complexes(tmp_path, inputs, capsys):
    out = tmp_path / "b.h5"
    assert _embed(inputs, "-o", out, "--chains", "B") == 0
    chains, _, _ = _read(out)
    assert set(chains) == {"1LZH.B"}  # 1ORC has no chain B: skipped with the reason
    skipped = (tmp_path / "b.h5.skipped.tsv").read_text()
    assert "1orc.pdb" in skipped and "none of the requested chains" in skipped
    # a complex wider than the window is skipped and logged; the others are still written
    capsys.readouterr()
    out = tmp_path / "w.h5"
    assert _embed(inputs, "-o", out, "--complexes", "--window", "200", "--overlap", "50") == 0
    assert "1 too long, skipped" in capsys.readouterr().out
    chains, complexes, _ = _read(out)
    assert set(complexes) == {"1ORC"} and set(chains) == {"1ORC.A"}
    assert (
        "1LZH\tcomplex spans 322 residue positions (2 chains, gap 64) > window 200"
        in (tmp_path / "w.h5.skipped.tsv").read_text()
    )
    # no complex fits: a one-line error and no output, not an empty file and exit 0
    capsys.readouterr()
    out = tmp_path / "none.h5"
    # (complexes are never windowed: the default --overlap 256 above --window 50 is not refused)
    assert _embed(inputs, "-o", out, "--complexes", "--window", "50") == 2
    err = capsys.readouterr().err
    assert "none of the 2 complexes fits" in err and "raise --window" in err
    assert not out.exists() and not (tmp_path / "none.h5.tmp").exists()
    assert (tmp_path / "none.h5.skipped.tsv").read_text().count("> window 50") == 2
    # prepare takes --chains too
    assert (
        main(
            [
                "prepare",
                str(inputs),
                "-o",
                str(tmp_path / "ds"),
                "--chains",
                "A",
                "--valid-fraction",
                "0",
                "--test-fraction",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(PreparedDataset(tmp_path / "ds").ids) == ["1LZH.A", "1ORC.A"]
    assert (
        main(
            [
                "embed",
                str(inputs),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.h5"),
                "--chains",
                " , ",
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "embed",
                str(inputs),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.h5"),
                "--complexes",
                "--max-length",
                "50",
            ]
        )
        == 2
    )


def test_npz_output_has_the_complex_table(tmp_path, inputs):
    out = tmp_path / "cx.npz"
    assert _embed(inputs, "-o", out, "--complexes") == 0
    z = np.load(out)
    assert sorted(z["complex_ids"].tolist()) == ["1LZH", "1ORC"] and z["complex_mean"].shape == (
        2,
        256,
    )
    assert sorted(z["ids"].tolist()) == ["1LZH.A", "1LZH.B", "1ORC.A"]
