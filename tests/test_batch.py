"""The typed seam between data and model: every batcher hands out a frozen ``Batch``, the model
takes it as ``model(**batch.inputs(use_coords))``, ``encode`` pools it, and Lightning / the
DataLoader move it like any batch."""

import dataclasses
import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

from coordformer.batch import Batch
from coordformer.config import preset
from coordformer.constants import PAD
from coordformer.data.batching import (
    BatchSettings,
    MaskedBatches,
    collate_chains,
    inference_plan,
    token_budget_batches,
    unmasked_batches,
)
from coordformer.data.complexes import complex_batch
from coordformer.data.windows import windowed_forward
from coordformer.model import CoordFormer
from coordformer.model.encode import encode, masked_mean


def _model(seed=0):
    torch.manual_seed(seed)
    return CoordFormer(preset("tiny-0.1m")).eval()


def _toy(plddt=True) -> Batch:
    tokens = torch.tensor([[5, 6, 7, 8], [9, 10, PAD, PAD]])
    coords = torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0)) * 5
    coords[1, 2:] = float("nan")
    return Batch.from_tokens(
        tokens,
        coords,
        plddt=torch.full((2, 4), 70.0) if plddt else None,
        index=torch.tensor([3, 1]),
    )


def test_batch_is_frozen_and_moves_every_tensor():
    b = _toy()
    assert len(b) == 2 and b.lengths.tolist() == [4, 2]
    assert b.padding_mask.tolist() == [[True] * 4, [True, True, False, False]]
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.tokens = b.tokens
    meta = b.to("meta")
    assert (
        isinstance(meta, Batch) and b.tokens.device.type == "cpu"
    )  # a new batch; the original stays
    for f in dataclasses.fields(Batch):
        v = getattr(meta, f.name)
        assert (v is None) == (getattr(b, f.name) is None), f.name
        assert v is None or v.device.type == "meta", f.name
    r = b.replace(plddt=None)
    assert r.plddt is None and b.plddt is not None and r.tokens is b.tokens


def test_inputs_are_the_forward_keywords():
    b = _toy()
    params = inspect.signature(CoordFormer.forward).parameters
    assert set(b.inputs()) == {"tokens", "coords", "padding_mask", "plddt"} and set(
        b.inputs()
    ) <= set(params)
    assert b.inputs(use_coords=False)["coords"] is None and b.inputs()["coords"] is b.coords
    bare = _toy(plddt=False)
    assert set(bare.inputs()) == {"tokens", "coords", "padding_mask"}  # only what the batch holds
    assert "positions" in bare.replace(positions=torch.zeros(2, 4, dtype=torch.long)).inputs()
    model = _model()
    with torch.no_grad():
        got = model(**b.inputs()).logits
        want = model(b.tokens, b.coords, b.padding_mask, plddt=b.plddt).logits
    assert torch.equal(got, want)


@torch.no_grad()
def test_encode_pools_as_the_hand_written_masked_mean():
    model = _model()
    b = _toy()
    for layer in (None, 0, 1):
        hidden, pooled = encode(model, b, layer)
        reps = () if layer is None else (layer,)
        out = model(b.tokens, b.coords, b.padding_mask, repr_layers=reps, plddt=b.plddt)
        h = out.hidden if layer is None else out.representations[layer]
        assert torch.equal(hidden, h)
        m = b.padding_mask.unsqueeze(-1).to(
            h.dtype
        )  # the pooling embed.py and finetune.py wrote out before
        assert torch.equal(pooled, (h * m).sum(1) / m.sum(1).clamp_min(1))
        assert torch.allclose(pooled[1], h[1, :2].mean(0), atol=1e-6)
    no_coords, _ = encode(model, b, use_coords=False)
    assert torch.equal(no_coords, model(b.tokens, None, b.padding_mask, plddt=b.plddt).hidden)
    empty = torch.zeros(1, 3, dtype=torch.bool)
    assert torch.equal(masked_mean(torch.ones(1, 3, 2), empty), torch.zeros(1, 2))


def test_every_batcher_returns_a_batch(prepared):
    idx = prepared.split_indices("train")[:10]
    s = BatchSettings(crop_length=40, tokens_per_batch=400)
    masked = MaskedBatches(prepared, idx, s, seed=3)[0]
    assert isinstance(masked, Batch) and masked.targets is not None and masked.clean is not None
    assert masked.withheld is None and masked.positions is None
    spatial = MaskedBatches(
        prepared, idx, BatchSettings(crop_length=40, crop_mode="spatial"), seed=3
    )[0]
    assert isinstance(spatial, Batch) and spatial.positions is not None
    evaluation = MaskedBatches(
        prepared, idx, BatchSettings(crop_length=40, withhold="span"), seed=3
    )[0]
    assert evaluation.withheld is not None and evaluation.stretch is not None
    plain = list(unmasked_batches(prepared, idx, 40, 400))
    assert all(isinstance(b, Batch) and b.targets is None and b.clean is None for b in plain)
    assert sorted(torch.cat([b.index for b in plain]).tolist()) == sorted(
        idx.tolist()
    )  # every chain once
    groups = [idx[:2], idx[2:3]]
    cx = complex_batch(prepared, groups, gap=5)
    assert isinstance(cx, Batch) and cx.chain is not None and cx.positions is not None
    from coordformer.function.finetune import FinetuneConfig, _StructureBatches

    labels = np.zeros((len(idx), 2), np.float32)
    labelled = _StructureBatches(prepared, idx, labels, FinetuneConfig(max_length=40), True)[0]
    assert isinstance(labelled["batch"], Batch) and labelled["batch"].targets is None
    assert len(labelled["rows"]) == len(labelled["batch"])
    seen = []
    windowed_forward(lambda w: seen.append(w) or w.tokens[..., None].float(), plain[-1], 16, 4, 64)
    assert seen and all(isinstance(w, Batch) and w.coords is not None for w in seen)


def test_unmasked_batches_crop_and_rotate_as_the_masked_ones(prepared):
    """The inference builder skips the masking draws only: its tokens are the masked batch's clean
    tokens and its coordinates (crop, centring, rotation) are the same, bit for bit."""
    idx = prepared.split_indices("train")[:12]
    for rotate in (False, True):
        for b in unmasked_batches(prepared, idx, 30, 200, rotate=rotate, seed=4):
            s = BatchSettings(
                crop_length=30, tokens_per_batch=200, rotate=rotate, random_crop=False
            )
            ref = MaskedBatches(prepared, idx, s, seed=4, train=False).collate(b.index.numpy())
            assert torch.equal(b.tokens, ref.clean) and torch.equal(
                b.padding_mask, ref.padding_mask
            )
            assert torch.equal(b.coords.nan_to_num(), ref.coords.nan_to_num())
    s = BatchSettings(crop_length=30, rotate=True, random_crop=True)
    a = collate_chains(prepared, idx, s, seed=2, epoch=1, masked=False)
    m = collate_chains(prepared, idx, s, seed=2, epoch=1, masked=True)
    assert torch.equal(a.tokens, m.clean) and torch.equal(
        a.coords.nan_to_num(), m.coords.nan_to_num()
    )
    lengths = prepared.lengths[idx]
    plan = inference_plan(lengths, 30, 10)  # the budget is at least one crop
    want = token_budget_batches(np.minimum(lengths, 30), 30, None)
    assert [p.tolist() for p in plan] == [p.tolist() for p in want]


def test_lightning_moves_a_batch_and_a_dict_holding_one():
    from lightning.fabric.utilities.apply_func import move_data_to_device

    from coordformer.train.mlm import MaskedLMModule

    b = _toy()
    moved = move_data_to_device(b, torch.device("meta"))
    assert (
        isinstance(moved, Batch) and moved.tokens.device.type == moved.plddt.device.type == "meta"
    )
    nested = move_data_to_device({"batch": b, "labels": torch.ones(2, 3)}, torch.device("meta"))
    assert isinstance(nested["batch"], Batch) and nested["batch"].coords.device.type == "meta"
    module = MaskedLMModule(preset("tiny-0.1m").to_dict(), {})
    hooked = module.transfer_batch_to_device(b, torch.device("meta"), 0)  # what the Trainer calls
    assert isinstance(hooked, Batch) and hooked.padding_mask.device.type == "meta"


def test_dataloader_workers_hand_over_batches(prepared):
    idx = prepared.split_indices("train")
    ds = MaskedBatches(prepared, idx, BatchSettings(crop_length=40, tokens_per_batch=400), seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=1)
    got = next(iter(loader))
    assert isinstance(got, Batch)
    assert torch.equal(got.tokens, ds[0].tokens) and torch.equal(got.targets, ds[0].targets)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pin_memory_pins_every_tensor():
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = pin_memory(_toy())
    assert isinstance(pinned, Batch) and pinned.tokens.is_pinned() and pinned.coords.is_pinned()


def test_model_and_batch_do_not_import_data():
    code = (
        "import sys, coordformer.batch, coordformer.model.encode, coordformer.model; "
        "bad = [m for m in sys.modules if m.startswith('coordformer.data')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluation_conditions_keep_the_cli_values():
    from coordformer.data.batching import WITHHOLD
    from coordformer.eval.mlm import HIDE_COORDS, WITHHOLD_OF_HIDE_COORDS

    assert HIDE_COORDS == ("none", "all", "span", "cut")
    assert WITHHOLD_OF_HIDE_COORDS["all"] == "chain"
    assert set(WITHHOLD_OF_HIDE_COORDS.values()) == set(WITHHOLD)
    assert BatchSettings().withhold is None and not BatchSettings().draws_stretch
    assert BatchSettings(withhold="none").draws_stretch
