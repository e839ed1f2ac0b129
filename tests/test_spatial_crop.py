"""Training crops by 3D neighbourhood (pretrain --crop spatial): the nearest residues to a centre,
sequence order kept, skipped stretches visible in the positions, deterministic per seed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pretrain_args
from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.constants import CA_INDEX
from coordformer.data.batching import (
    ASCII_TO_TOKEN,
    MAX_CROP_JUMP,
    BatchSettings,
    MaskedBatches,
    crop_positions,
    spatial_crop,
)
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.errors import UsageError

DATA = Path(__file__).parent / "data"


def test_spatial_crop_takes_the_nearest_residues_in_sequence_order():
    rng = np.random.default_rng(0)
    ca = rng.normal(scale=10.0, size=(50, 3))
    ca[[3, 17]] = np.nan  # no CA: never chosen while residues with one remain
    kept = spatial_crop(ca, 12, centre=20)
    assert len(kept) == 12 and (np.diff(kept) > 0).all() and 20 in kept
    d = np.linalg.norm(ca - ca[20], axis=1)
    inside, outside = d[kept], np.delete(d, kept)
    assert np.nanmax(inside) <= np.nanmin(outside) and not np.isnan(inside).any()
    # more residues than have a CA: the CA-less ones come last, nearest in sequence first
    assert set(spatial_crop(ca, 49, centre=20)) == set(range(50)) - {3}


def test_crop_positions_keep_gaps_capped():
    kept = np.array([5, 6, 7, 20, 21, 400, 401])
    assert crop_positions(kept, 4096).tolist() == [
        0,
        1,
        2,
        15,
        16,
        16 + MAX_CROP_JUMP,
        17 + MAX_CROP_JUMP,
    ]
    assert crop_positions(kept, 50).tolist() == list(
        range(7)
    )  # would not fit: consecutive positions
    with pytest.raises(UsageError, match="crop_mode=.*must be one of"):
        BatchSettings(crop_mode="random")


@pytest.fixture
def lysozyme(tmp_path):
    prepare(
        [str(DATA / "1lzh.pdb.gz"), str(DATA / "1orc.pdb")],
        tmp_path / "ds",
        PrepareConfig(min_length=1, valid_fraction=0, test_fraction=0),
        workers=1,
        progress=False,
    )
    return PreparedDataset(tmp_path / "ds")


def test_batches_hold_3d_neighbourhoods_with_positions(lysozyme):
    idx = np.arange(len(lysozyme))
    s = BatchSettings(crop_length=40, tokens_per_batch=400, crop_mode="spatial", rotate=False)
    batch = MaskedBatches(lysozyme, idx, s, seed=3).collate(idx)
    again = MaskedBatches(lysozyme, idx, s, seed=3).collate(idx)
    assert torch.equal(batch.positions, again.positions) and torch.equal(batch.clean, again.clean)
    cropped = 0
    for row, ci in enumerate(idx):
        n = int(batch.padding_mask[row].sum())
        full = lysozyme.coords(int(ci))[:, CA_INDEX].astype(np.float64)
        assert n == min(40, len(full))
        if n == len(full):
            assert batch.positions[row, :n].tolist() == list(range(n))
            continue
        cropped += 1
        # the crop is spatial_crop around one of the chain's residues: find it by the
        # (translation-free) CA distance matrix, then check tokens and positions against it
        ca = batch.coords[row, :n, CA_INDEX].double().numpy()
        dm = np.linalg.norm(ca[:, None] - ca[None], axis=-1)
        hits = []
        for c in np.flatnonzero(~np.isnan(full[:, 0])):
            k = spatial_crop(full, 40, int(c))
            if np.allclose(
                np.linalg.norm(full[k][:, None] - full[k][None], axis=-1), dm, atol=1e-3
            ):
                hits.append(k)
        assert hits, "the batch is not a 3D neighbourhood of any residue"
        kept = hits[0]
        seq = np.frombuffer(lysozyme.sequence(int(ci)).encode(), dtype=np.uint8)
        assert np.array_equal(batch.clean[row, :n].numpy(), ASCII_TO_TOKEN[seq[kept]])
        assert (
            len(seq) > n
            and batch.positions[row, :n].tolist() == crop_positions(kept, 4096).tolist()
        )
        assert (np.diff(kept) > 1).any()  # a neighbourhood in a folded chain skips stretches
    assert cropped == 3  # both lysozyme chains (129) and 1ORC (64) exceed 40


def test_pretrain_with_spatial_crop_runs_and_records_it(tmp_path, prepared):
    out = tmp_path / "run"
    args = pretrain_args(
        prepared.path,
        out,
        max_steps=3,
        val_every=3,
        warmup_steps=1,
        tokens_per_batch=1024,
        crop_length=40,
        crop="spatial",
        quiet=True,
    )
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["crop_mode"] == "spatial"
