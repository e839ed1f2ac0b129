"""pLDDT as a model input: stored by prepare --store-plddt, carried through crops and batches, fed
as (100 - pLDDT)/100 by models with plddt_feature, read automatically by embed."""

import json
from pathlib import Path

import gemmi
import h5py
import numpy as np
import pytest
import torch

from conftest import pretrain_args
from coordformer.cli import main
from coordformer.config import ConfigError, ModelConfig, PrepareConfig
from coordformer.constants import CA_INDEX
from coordformer.data.batching import BatchSettings, MaskedBatches
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.model import CoordFormer, coordinate_features

DATA = Path(__file__).parent / "data"


def _predicted_model(path: Path, plddt_of_residue) -> Path:
    """1ORC rewritten as a 'predicted model': every atom's B-factor = its residue's pLDDT."""
    st = gemmi.read_structure(str(DATA / "1orc.pdb"))
    for i, res in enumerate(st[0]["A"]):
        for atom in res:
            atom.b_iso = plddt_of_residue(i)
    st.write_pdb(str(path))
    # a predicted model declares no experiment (its B-factors would not be read as pLDDT)
    text = path.read_text()
    path.write_text("".join(ln for ln in text.splitlines(True) if not ln.startswith("EXPDTA")))
    return path


@pytest.fixture
def af_dir(tmp_path):
    d = tmp_path / "af"
    d.mkdir()
    _predicted_model(d / "1orc_af.pdb", lambda i: 30.0 + i)  # pLDDT 30 ... 93 along the chain
    return d


def test_prepare_stores_plddt_only_when_asked(tmp_path, af_dir):
    cfg = PrepareConfig(min_length=1, valid_fraction=0, test_fraction=0)
    prepare(
        [str(af_dir)], tmp_path / "with", cfg.replace(store_plddt=True), workers=1, progress=False
    )
    prepare([str(af_dir)], tmp_path / "without", cfg, workers=1, progress=False)
    ds = PreparedDataset(tmp_path / "with")
    assert ds.has_plddt and not PreparedDataset(tmp_path / "without").has_plddt
    assert not (tmp_path / "without" / "plddt.npy").exists()
    np.testing.assert_allclose(ds.plddt(0), 30.0 + np.arange(len(ds.plddt(0))), atol=1e-3)
    # crops carry the matching pLDDT: 30 + residue index, for sequence and spatial crops alike
    for mode in ("sequence", "spatial"):
        s = BatchSettings(crop_length=25, tokens_per_batch=100, crop_mode=mode, rotate=False)
        b = MaskedBatches(ds, np.array([0]), s, seed=1).collate(np.array([0]))
        kept = (b.plddt[0] - 30.0).round().long()
        full = ds.coords(0)[:, CA_INDEX]
        ca = b.coords[0, :, CA_INDEX].numpy()
        # the CA-CA distances of the batch equal those of the residues the pLDDT points at
        d_batch = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
        d_full = np.linalg.norm(full[kept][:, None] - full[kept][None], axis=-1)
        np.testing.assert_allclose(d_batch, d_full, atol=1e-3)


def test_feature_values_and_model_switch():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, plddt_feature=True)
    assert cfg.n_coord_features == 5
    coords = torch.zeros(1, 3, 4, 3)
    f = coordinate_features(coords, cfg, torch.tensor([[70.0, float("nan"), 120.0]]))
    assert f[0, :, 4].tolist() == pytest.approx([0.3, 0.0, 0.0])
    with pytest.raises(ConfigError, match="use_coords"):
        ModelConfig(use_coords=False, plddt_feature=True)
    torch.manual_seed(0)
    model = CoordFormer(cfg).eval()
    tokens = torch.randint(4, 24, (2, 10))
    xyz = torch.randn(2, 10, 4, 3) * 8
    with torch.no_grad():
        none = model(tokens, xyz).logits
        unknown = model(tokens, xyz, plddt=torch.full((2, 10), float("nan"))).logits
        confident = model(tokens, xyz, plddt=torch.full((2, 10), 100.0)).logits
        low = model(tokens, xyz, plddt=torch.full((2, 10), 20.0)).logits
    assert torch.equal(none, unknown) and torch.equal(
        none, confident
    )  # unknown = certain = feature 0
    assert (none - low).abs().max() > 1e-4
    # a model without the switch ignores pLDDT
    plain = CoordFormer(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64)).eval()
    with torch.no_grad():
        assert torch.equal(
            plain(tokens, xyz).logits, plain(tokens, xyz, plddt=torch.full((2, 10), 20.0)).logits
        )


@pytest.mark.slow
def test_pretrain_with_plddt_feature_and_embed_reads_it(tmp_path, af_dir):
    ds = tmp_path / "ds"
    assert (
        main(
            [
                "prepare",
                str(af_dir),
                "-o",
                str(ds),
                "--store-plddt",
                "--min-length",
                "10",
                "--valid-fraction",
                "0",
                "--test-fraction",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    run = tmp_path / "run"
    args = pretrain_args(
        ds,
        run,
        plddt_feature=True,
        max_steps=3,
        warmup_steps=1,
        tokens_per_batch=256,
        crop_length=64,
        quiet=True,
    )
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["model_config"]["plddt_feature"] is True
    # embed prepares raw inputs with pLDDT for such a model: the same structure with other pLDDT
    # values embeds differently
    other = tmp_path / "other"
    other.mkdir()
    _predicted_model(other / "1orc_af.pdb", lambda i: 95.0)
    means = []
    for d in (af_dir, other):
        out = tmp_path / f"{d.name}.h5"
        assert (
            main(
                [
                    "embed",
                    str(d),
                    "-c",
                    str(run / "checkpoints" / "last.ckpt"),
                    "-o",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        with h5py.File(out, "r") as f:
            means.append(f["mean"][0])
    assert np.abs(means[0] - means[1]).max() > 1e-4


def test_plddt_feature_on_a_dataset_without_plddt_warns(tmp_path, prepared, caplog):
    """Documented (no pLDDT reads as 100), but a whole dataset without any is almost always one
    prepared without --store-plddt: pretrain says so (and trains)."""
    args = pretrain_args(
        prepared.path,
        tmp_path / "run",
        plddt_feature=True,
        max_steps=1,
        warmup_steps=1,
        tokens_per_batch=256,
        crop_length=64,
        quiet=True,
    )
    with caplog.at_level("WARNING", logger="coordformer.train.run"):
        assert main(args) == 0
    said = [r.getMessage() for r in caplog.records if "holds no pLDDT" in r.getMessage()]
    assert len(said) == 1 and "--store-plddt" in said[0], said


def test_plddt_feature_on_experimental_structures_only_warns(tmp_path, caplog):
    """A dataset of X-ray structures prepared with --store-plddt holds a pLDDT array, all unknown
    (their B-factors are no pLDDT): the feature learns nothing there either, and pretrain said
    nothing."""
    from conftest import DATA

    ds = tmp_path / "xray"
    assert (
        main(
            [
                "prepare",
                str(DATA / "1lzh.pdb.gz"),
                str(DATA / "1orc.pdb"),
                "--out",
                str(ds),
                "--store-plddt",
                "--valid-fraction",
                "0",
                "--test-fraction",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    args = pretrain_args(
        ds,
        tmp_path / "run",
        plddt_feature=True,
        max_steps=1,
        warmup_steps=1,
        tokens_per_batch=256,
        crop_length=64,
        quiet=True,
    )
    with caplog.at_level("WARNING", logger="coordformer.train.run"):
        assert main(args) == 0
    said = [r.getMessage() for r in caplog.records if "holds no pLDDT" in r.getMessage()]
    assert len(said) == 1 and "only experimental structures" in said[0], said
