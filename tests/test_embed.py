"""coordformer embed: mean-pooled and per-residue embeddings in HDF5 / npz."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import DATA
from coordformer.cli import main
from coordformer.embed import EmbedConfig, embed, read_embeddings
from coordformer.model.checkpoints import load_model


@pytest.fixture
def structures(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("1A8O.cif", "1LCD.pdb", "1orc.pdb", "chain_set_small.jsonl"):
        shutil.copy(DATA / name, d / name)
    (d / "junk.pdb").write_bytes(b"\x00\x01 not a structure")
    return d


def test_embed_writes_hdf5_keyed_by_chain_and_matches_the_model(tmp_path, structures):
    out = tmp_path / "e.h5"
    res = embed(
        "small-nocoords",
        [str(structures)],
        out,
        EmbedConfig(per_residue=True),
        progress=False,
        echo=lambda s: None,
    )
    assert res["chains"] >= 3
    with h5py.File(out) as f:
        ids = [x.decode() for x in f["ids"][:]]
        assert f["mean"].shape == (len(ids), 256) and set(f["residues"]) == set(ids)
        i = ids.index("1A8O.A")
        per = f["residues"]["1A8O.A"][:].astype(np.float32)
        assert per.shape == (f["lengths"][i], 256)
        # the mean-pooled vector is the mean of the per-residue ones (float16 storage tolerance)
        assert np.allclose(per.mean(0), f["mean"][i], atol=2e-2)
        assert "final" in f.attrs["layer"]
    skipped = (tmp_path / "e.h5.skipped.tsv").read_text()
    assert "junk.pdb" in skipped  # the bad file is logged, not fatal
    # same numbers as calling the model directly on that chain (sequence-only model: no coords
    # needed)
    from coordformer.io import read_structure

    chain = [c for c in read_structure(DATA / "1A8O.cif") if c.id == "1A8O.A"][0]
    model, _ = load_model("small-nocoords")
    from coordformer.constants import token_of

    tokens = torch.tensor([[token_of(a) for a in chain.sequence]])
    direct = model.float()(tokens).hidden[0].mean(0).detach().numpy()
    assert np.allclose(direct, read_embeddings(out)[1][i], atol=1e-4)


def test_embed_npz_layers_and_errors(tmp_path, structures, capsys):
    out = tmp_path / "e.npz"
    assert (
        main(
            [
                "embed",
                str(structures),
                "-c",
                "small-coords",
                "-o",
                str(out),
                "--layer",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    ids, mean = read_embeddings(out)
    assert mean.shape == (len(ids), 256) and len(set(ids)) == len(ids)
    final = tmp_path / "f.npz"
    assert main(["embed", str(structures), "-c", "small-coords", "-o", str(final), "--quiet"]) == 0
    assert not np.allclose(
        read_embeddings(final)[1], mean
    )  # a different layer gives different vectors
    capsys.readouterr()
    assert (
        main(
            [
                "embed",
                str(structures),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.npz"),
                "--per-residue",
            ]
        )
        == 2
    )
    assert "HDF5" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                str(structures),
                "-c",
                "small-coords",
                "-o",
                str(tmp_path / "x.h5"),
                "--layer",
                "9",
            ]
        )
        == 2
    )
    assert "layers 0..4" in capsys.readouterr().err
    assert (
        main(["embed", str(structures), "-c", "small-coords", "-o", str(tmp_path / "x.txt")]) == 2
    )


def test_npz_records_what_produced_it_as_the_hdf5_attributes_do(tmp_path, monkeypatch):
    """The .npz held only ids/lengths/mean/sequences; the .h5 named checkpoint, layer and settings
    in its attributes. Both now carry one record: the same keys and values, version and command
    included, and the .npz loads without pickle."""
    import json
    import shlex
    import sys

    from coordformer import __version__

    records = {}
    for name in ("e.npz", "e.h5"):
        argv = ["embed", str(DATA / "1orc.pdb"), "-c", "small-coords", "-o", str(tmp_path / name)]
        argv += ["--layer", "2", "--device", "cpu", "--quiet"]
        monkeypatch.setattr(sys, "argv", ["coordformer", *argv])
        assert main(argv) == 0
        if name.endswith(".npz"):
            with np.load(tmp_path / name, allow_pickle=False) as z:
                records[name] = json.loads(str(z["provenance"]))
        else:
            with h5py.File(tmp_path / name) as f:
                records[name] = {
                    k: v.item() if hasattr(v, "item") else v for k, v in f.attrs.items()
                }
        assert records[name].pop("command") == "coordformer " + shlex.join(argv)
    npz, h5 = records["e.npz"], records["e.h5"]
    assert npz == h5
    assert npz["checkpoint"] == "small-coords" and npz["coordformer_version"] == __version__
    assert json.loads(npz["inputs"]) == [str(DATA / "1orc.pdb")]
    assert (
        json.loads(npz["config"])["layer"] == 2 and npz["layer"] == "residual stream after layer 2"
    )
    assert json.loads(npz["model_config"])["use_coords"] is True and npz["use_coords"] is True


def test_embed_quiet_prints_one_line(tmp_path, structures, capsys):
    """--quiet: no summary of the temporary dataset, only the result line (which names unreadable
    inputs)."""
    out = tmp_path / "q.h5"
    assert main(["embed", str(structures), "-c", "small-coords", "-o", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines() == [captured.out.strip()], captured.out
    assert (
        captured.out.startswith("wrote ")
        and f"1 inputs skipped (unreadable, or no chain to keep), see {out}.skipped.tsv"
        in captured.out
    )
    assert "prepared dataset" not in captured.out + captured.err


def test_embed_reads_a_prepared_dataset_split(tmp_path, prepared):
    out = tmp_path / "p.h5"
    res = embed(
        "small-coords",
        [str(prepared.path)],
        out,
        EmbedConfig(split="test"),
        progress=False,
        echo=lambda s: None,
    )
    ids, mean = read_embeddings(out)
    assert res["prepared"] == str(prepared.path)
    assert sorted(ids) == sorted(prepared.ids[i] for i in prepared.split_indices("test"))
    assert np.isfinite(mean).all()
    # nothing was skipped: no skip log (a stale one from an earlier run is removed), as `score`
    skipped = tmp_path / "p.h5.skipped.tsv"
    assert not skipped.exists()
    skipped.write_text("kind\tinput\treason\ninput\told.pdb\tfrom an earlier run\n")
    embed("small-coords", [str(prepared.path)], out, EmbedConfig(split="test"), progress=False)
    assert not skipped.exists()
    # refused after the inputs were opened: no skip log either
    with pytest.raises(Exception, match="bogus"):
        embed("small-coords", [str(prepared.path)], tmp_path / "q.h5", EmbedConfig(split="bogus"))
    assert not (tmp_path / "q.h5.skipped.tsv").exists() and not (tmp_path / "q.h5").exists()


def test_hdf5_per_residue_keys_escape_slashes_and_keep_the_original_ids(tmp_path):
    """Ids with '/' (Pfam-style FASTA names) would become nested groups: they are percent-encoded,
    residue_keys lists each row's key beside ids, and unquote gives the id back."""
    from urllib.parse import unquote

    from coordformer.embed import residue_key

    fasta = tmp_path / "seqs.fasta"
    names = ["PF1/1-40", "PF1/41-80", "odd%2Fname", "plain"]
    fasta.write_text("".join(f">{n}\n{'ACDEFGHIKLMNPQRSTVWY' * 2}\n" for n in names))
    out = tmp_path / "e.h5"
    assert (
        main(
            [
                "embed",
                str(fasta),
                "-c",
                "small-nocoords",
                "-o",
                str(out),
                "--per-residue",
                "--quiet",
            ]
        )
        == 0
    )
    with h5py.File(out) as f:
        ids = [x.decode() for x in f["ids"][:]]
        keys = [x.decode() for x in f["residue_keys"][:]]
        assert sorted(ids) == sorted(names)
        assert all(
            isinstance(f["residues"][k], h5py.Dataset) for k in f["residues"]
        )  # no nested groups
        assert sorted(f["residues"]) == sorted(keys) == sorted(f["residue_has_ca"])
        for i, (cid, key) in enumerate(zip(ids, keys)):
            assert key == residue_key(cid) and unquote(key) == cid and "/" not in key
            assert f["residues"][key].shape == (f["lengths"][i], 256)
    assert residue_key("..") == "%2E%2E" and residue_key("a%b") == "a%25b"


# ----------------------------------------------------------------------------------------------
# raw inputs are read in memory, as prepare would store them
# ----------------------------------------------------------------------------------------------


def _embed_config():
    from coordformer.config import PrepareConfig

    return PrepareConfig(
        min_length=1, valid_fraction=0.0, test_fraction=0.0, max_missing_ca=1.0, store_plddt=True
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_read_in_memory_holds_what_prepare_stores(tmp_path, structures, workers):
    from coordformer.data.memory import MemoryDataset
    from coordformer.data.prepare import prepare, read_in_memory
    from coordformer.data.store import PreparedDataset

    shutil.copy(
        DATA / "1orc.pdb", structures / "copy_of_1orc.pdb"
    )  # a real duplicate: dropped, logged
    prepare([str(structures)], tmp_path / "ds", _embed_config(), progress=False)
    disk = PreparedDataset(tmp_path / "ds")
    mem, summary = read_in_memory(
        [str(structures)],
        _embed_config(),
        workers=workers,
        progress=False,
        skipped_path=tmp_path / "skipped.tsv",
    )
    assert isinstance(mem, MemoryDataset) and mem.ids == disk.ids and len(mem) == len(disk) > 3
    assert np.array_equal(mem.lengths, disk.lengths) and mem.has_plddt and disk.has_plddt
    for i in range(len(disk)):
        assert mem.sequence(i) == disk.sequence(i) and mem.source(i) == disk.source(i)
        assert np.array_equal(mem.coords(i), disk.coords(i), equal_nan=True)
        assert np.array_equal(mem.plddt(i), disk.plddt(i), equal_nan=True)
    assert (tmp_path / "skipped.tsv").read_text() == (tmp_path / "ds" / "skipped.tsv").read_text()
    assert summary.inputs_skipped == 1 and summary.chains_filtered == {"duplicate id": 1}
    assert summary.chains_kept == len(disk) and summary.in_memory
    assert "in memory" in summary.format() and "splits" not in summary.format()
    assert not mem.coords(0).flags.writeable  # read-only, as a dataset's memory maps are


def test_embed_writes_no_dataset_and_workers_do_not_change_the_output(
    tmp_path, structures, monkeypatch
):
    import coordformer.data.prepare as P

    def no_prepare(*a, **k):
        raise AssertionError("embed wrote a prepared dataset")

    monkeypatch.setattr(P, "prepare", no_prepare)
    monkeypatch.setattr(P.pipeline, "prepare", no_prepare)
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    res = embed(
        "small-coords", [str(structures)], one, EmbedConfig(), progress=False, echo=lambda s: None
    )
    embed(
        "small-coords",
        [str(structures)],
        two,
        EmbedConfig(),
        workers=2,
        progress=False,
        echo=lambda s: None,
    )
    assert res["prepare"]["inputs_skipped"] == 1 and res["prepare"]["chains_kept"] == res["chains"]
    (ids1, m1), (ids2, m2) = read_embeddings(one), read_embeddings(two)
    assert ids1 == ids2 and np.array_equal(m1, m2)
    assert "junk.pdb" in (tmp_path / "two.npz.skipped.tsv").read_text()


def test_embed_raw_input_errors_carry_the_option(tmp_path, structures):
    from coordformer.data.prepare import PrepareError
    from coordformer.errors import OptionError

    with pytest.raises(OptionError) as err:  # raw inputs have no splits
        embed(
            "small-coords",
            [str(structures)],
            tmp_path / "s.npz",
            EmbedConfig(split="test"),
            progress=False,
        )
    assert err.value.option == "split" and err.value.flag_message().startswith("--split test: ")
    with pytest.raises(OptionError) as err:
        embed(
            "small-coords",
            [str(structures)],
            tmp_path / "w.npz",
            EmbedConfig(window=8192),
            progress=False,
        )
    assert err.value.flag_message() == "--window 8192: exceeds the model's max_len 4096"
    # --chains that match nothing: an error, and the skip log names each input's chains
    with pytest.raises(PrepareError, match="matched no protein chain"):
        embed(
            "small-coords",
            [str(structures)],
            tmp_path / "c.npz",
            EmbedConfig(chains=("Q",)),
            progress=False,
        )
    assert "1LCD" in (tmp_path / "c.npz.skipped.tsv").read_text()


def test_cli_names_the_window_flags_when_the_overlap_is_too_large(tmp_path, capsys):
    from coordformer.cli import main

    fasta = tmp_path / "x.fasta"
    fasta.write_text(">x\nACDEFGHIKLMNPQRSTVWY\n")
    args = ["embed", str(fasta), "-c", "small-coords", "-o", str(tmp_path / "e.h5")]
    assert main([*args, "--window", "32", "--overlap", "40", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "error: --overlap 40: must be less than --window (32); lower --overlap or raise --window\n"
    )


def test_embed_chains_in_memory_equals_the_file_output(tmp_path):
    """embed_chains gives, in input order, what `embed` writes for the same chains (means and
    per-residue rows), keeps the caller's model mode, and reads an infinite coordinate as a
    missing atom."""
    import h5py

    from coordformer.config import EmbedConfig
    from coordformer.embed import embed, embed_chains
    from coordformer.io import iter_chain_set, read_structure
    from coordformer.model.checkpoints import load_model

    chains = [*iter_chain_set(DATA / "chain_set_small.jsonl"), *read_structure(DATA / "1orc.pdb")]
    cfg = EmbedConfig(per_residue=True, window=32, overlap=8)  # 1ORC.A (64) is windowed
    model, _ = load_model("small-coords")
    model.train()
    got = embed_chains(model, chains, cfg)
    assert model.training and [e.id for e in got] == [c.id for c in chains]
    inputs = [str(DATA / "chain_set_small.jsonl"), str(DATA / "1orc.pdb")]
    embed("small-coords", inputs, tmp_path / "e.h5", cfg, progress=False)
    with h5py.File(tmp_path / "e.h5") as f:
        ids = [i.decode() for i in f["ids"][:]]
        for e in got:
            k = ids.index(e.id)
            assert e.sequence == f["sequences"][k].decode()
            assert np.allclose(e.mean, f["mean"][k], atol=1e-5)
            assert np.allclose(e.residues, f["residues"][e.id][:], atol=2e-3)  # file: float16
            assert np.array_equal(e.has_ca, f["residue_has_ca"][e.id][:])
    c = chains[-1]
    inf, nan = c.coords.copy(), c.coords.copy()
    inf[5, 1, 0], nan[5, 1] = np.inf, np.nan
    a, b = (
        embed_chains(model, [type(c)(id=c.id, sequence=c.sequence, coords=x, source="")])[0]
        for x in (inf, nan)
    )
    assert np.isfinite(a.mean).all() and np.array_equal(a.mean, b.mean) and not a.has_ca[5]


def test_embed_chains_reads_plddt_like_embed_and_refuses_what_is_not_a_chain(tmp_path):
    import h5py

    from coordformer.config import EmbedConfig, preset
    from coordformer.embed import embed, embed_chains
    from coordformer.errors import UsageError
    from coordformer.io import Chain, StructureReadError, read_structure
    from coordformer.model import CoordFormer
    from coordformer.model.checkpoints import export_model

    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", plddt_feature=True)).eval()
    pt = export_model(model, tmp_path / "p.pt", half=False)
    chains = read_structure(DATA / "1lzh.pdb.gz")
    got = embed_chains(model, chains)
    embed(str(pt), [str(DATA / "1lzh.pdb.gz")], tmp_path / "e.h5", EmbedConfig(), progress=False)
    with h5py.File(tmp_path / "e.h5") as f:
        ids = [i.decode() for i in f["ids"][:]]
        for e in got:
            assert np.allclose(e.mean, f["mean"][ids.index(e.id)], atol=1e-5)
    with pytest.raises(UsageError, match="unreadable entry"):
        embed_chains(model, [chains[0], StructureReadError("x.fasta", "empty record")])
    empty = Chain(id="E.A", sequence="", coords=np.zeros((0, 4, 3), np.float32), source="")
    with pytest.raises(UsageError, match="chain E.A has no residues"):
        embed_chains(model, [empty])


def _moved(chain, seed):
    """``chain`` rotated by a seeded uniform rotation and translated: the same structure in
    another frame."""
    from coordformer.geometry import random_rotation

    rot = random_rotation(1, torch.Generator().manual_seed(seed), dtype=torch.float64)[0].numpy()
    coords = (chain.coords.astype(np.float64) @ rot.T + [31.0, -7.0, 12.0]).astype(np.float32)
    return type(chain)(id=chain.id, sequence=chain.sequence, coords=coords, source="")


def test_embeddings_do_not_depend_on_the_frame_of_the_file():
    """A structure and the same structure rotated and moved embed the same (each chain, and each
    window of a windowed chain, goes in the canonical frame of its CAs); before, embeddings were
    computed in the file's frame."""
    from coordformer.config import EmbedConfig
    from coordformer.embed import embed_chains
    from coordformer.io import read_structure

    model, _ = load_model("small-coords")
    chain = read_structure(DATA / "1orc.pdb")[0]
    for cfg in (EmbedConfig(per_residue=True), EmbedConfig(per_residue=True, window=32, overlap=8)):
        a, b = (embed_chains(model, [c], cfg)[0] for c in (chain, _moved(chain, 3)))
        assert np.abs(a.residues - b.residues).max() < 1e-3
        assert np.abs(a.mean - b.mean).max() < 1e-4
    # the frame still matters to the model: withholding it changes the embedding
    plain = embed_chains(model, [chain], EmbedConfig(use_coords=False))[0]
    assert np.abs(plain.mean - a.mean).max() > 1e-2


def test_embed_edge_cases_found_by_review(tmp_path):
    """residue_has_ca is False for every row embedded without coordinates; an .npz run whose
    complexes are all skipped is refused (it once crashed, then wrote an empty table);
    embed_chains refuses the settings of embed's reading step instead of ignoring them."""
    from coordformer.config import EmbedConfig
    from coordformer.embed import embed, embed_chains
    from coordformer.errors import OptionError, UsageError
    from coordformer.io import read_structure

    model, _ = load_model("small-coords")
    chain = read_structure(DATA / "1orc.pdb")[0]
    [e] = embed_chains(model, [chain], EmbedConfig(per_residue=True, use_coords=False))
    assert e.has_ca.shape == (64,) and not e.has_ca.any()
    [e] = embed_chains(model, [chain], EmbedConfig(per_residue=True))
    assert e.has_ca.all()
    for bad in (dict(complexes=True), dict(chains=("A",)), dict(seqres="gaps"), dict(split="test")):
        with pytest.raises(OptionError, match="embed_chains takes the chains as given"):
            embed_chains(model, [chain], EmbedConfig(**bad))
    out = tmp_path / "c.npz"
    cfg = EmbedConfig(complexes=True, window=32, overlap=8)  # 1ORC (64) does not fit: skipped
    # no complex left: refused (an empty table with exit 0 passed for a finished run), no file
    with pytest.raises(UsageError, match="none of the 1 complexes fits"):
        embed("small-coords", [str(DATA / "1orc.pdb")], out, cfg, progress=False, echo=print)
    assert not out.exists() and not (tmp_path / "c.npz.tmp").exists()


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_an_interrupted_embed_leaves_no_partial_file_and_keeps_the_earlier_output(
    tmp_path, structures, monkeypatch, suffix
):
    """Ctrl-C (or a failure) part-way used to leave OUT.tmp behind, an HDF5 file still open."""
    import coordformer.embed as embed_mod

    out = tmp_path / f"e{suffix}"
    out.write_bytes(b"an earlier run's output")
    calls = []
    real = embed_mod._residue_info

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "_residue_info", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed(
            "small-nocoords",
            [str(structures)],
            out,
            EmbedConfig(per_residue=suffix == ".h5"),
            progress=False,
            echo=lambda s: None,
        )
    assert len(calls) == 2
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("e")]
    assert sorted(left) == [out.name, f"{out.name}.skipped.tsv"]  # junk.pdb's line is kept
    assert out.read_bytes() == b"an earlier run's output"


def test_an_unfinished_prepared_dataset_is_named_as_such(tmp_path, capsys):
    """embed / score on a dataset folder whose `prepare` was interrupted listed each of its hidden
    array files as skipped and said nothing of why."""
    d = tmp_path / "ds"
    (d / ".work").mkdir(parents=True)
    (d / ".seq.npy.tmp").write_bytes(b"\0" * 8)
    for argv in (
        ["embed", str(d), "-c", "small-coords", "-o", str(tmp_path / "e.h5"), "--quiet"],
        ["score", str(d), "-c", "small-coords", "-o", str(tmp_path / "s.tsv"), "--quiet"],
    ):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert "an unfinished prepared dataset" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("e.h5*")) and not list(tmp_path.glob("s.tsv*"))
