"""Structure dropout in pretraining (--drop-chain-coords, --drop-span-coords): chains or contiguous
stretches fed without coordinates, so the missing flag is learnt; off, batches are unchanged."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import pretrain_args
from coordformer.cli import main
from coordformer.constants import CA_INDEX
from coordformer.data.batching import SPAN_DROP_FRACTION, BatchSettings, MaskedBatches
from coordformer.errors import UsageError


def _batch(prepared, **kw):
    idx = prepared.split_indices("train")[:12]
    s = BatchSettings(crop_length=512, tokens_per_batch=4096, **kw)
    return MaskedBatches(prepared, idx, s, seed=5).collate(idx), idx


def _fields(batch) -> dict:
    """The tensors a Batch holds, by field name."""
    return {
        f.name: v for f in dataclasses.fields(batch) if (v := getattr(batch, f.name)) is not None
    }


def test_off_changes_nothing_and_chain_dropout_removes_all(prepared):
    base, idx = _batch(prepared)
    same, _ = _batch(prepared, drop_chain_coords=0.0, drop_span_coords=0.0)
    assert _fields(base).keys() == _fields(same).keys()
    for k, v in _fields(base).items():
        assert torch.equal(torch.nan_to_num(v), torch.nan_to_num(getattr(same, k))), k
    gone, _ = _batch(prepared, drop_chain_coords=1.0)
    assert torch.isnan(gone.coords).all()
    # the masking draws are the same as without dropout: only the coordinates differ
    assert torch.equal(gone.tokens, base.tokens) and torch.equal(gone.targets, base.targets)


def test_span_dropout_removes_one_contiguous_stretch(prepared):
    b, idx = _batch(prepared, drop_span_coords=1.0)
    for row, ci in enumerate(idx):
        n = int(prepared.lengths[ci])
        missing = torch.isnan(b.coords[row, :n, CA_INDEX, 0]).numpy()
        assert missing.any() and not missing.all()
        where = np.flatnonzero(missing)
        assert (np.diff(where) == 1).all()  # one stretch
        lo, hi = SPAN_DROP_FRACTION
        assert round(n * lo) - 1 <= len(where) <= round(n * hi) + 1
    with pytest.raises(UsageError, match="dropout"):
        BatchSettings(drop_span_coords=1.5)


def test_pretrain_records_it_and_only_dropout_trains_the_missing_flag(tmp_path, prepared):
    out = tmp_path / "run"
    args = pretrain_args(
        prepared.path,
        out,
        max_steps=2,
        val_every=2,
        warmup_steps=1,
        tokens_per_batch=1024,
        drop_chain_coords=0.5,
        drop_span_coords=0.5,
        quiet=True,
    )
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())["train_config"]
    assert cfg["drop_chain_coords"] == 0.5 and cfg["drop_span_coords"] == 0.5
    # fully resolved training chains give the missing-flag column of the coordinate embedding no
    # gradient at all; with dropout it gets one
    from coordformer.config import preset
    from coordformer.model import CoordFormer

    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m"))
    grads = []
    for kw in ({}, {"drop_chain_coords": 0.3, "drop_span_coords": 0.5}):
        b, _ = _batch(prepared, **kw)
        model.zero_grad()
        logits = model(**b.inputs()).logits
        logits[b.padding_mask].square().mean().backward()  # real residues only, as the MLM loss
        grads.append(model.coord_embed.weight.grad[:, 3].abs().max().item())
    assert grads[0] == 0.0 and grads[1] > 0.0


def test_evaluate_hide_coords_pairs_the_same_masks_and_scores_the_hidden_residues(
    prepared, tmp_path, capsys
):
    """evaluate --hide-coords: the masked residues are those of the plain evaluation; `hidden`
    scores the ones fed without coordinates (all of them with "all", some with "span", none with
    "none"); a sequence-only model is unaffected, a structure model is not."""
    from coordformer.config import preset
    from coordformer.eval.mlm import evaluate_mlm
    from coordformer.model import CoordFormer

    torch.manual_seed(0)
    cfg = preset("tiny-0.1m")
    structure, sequence = CoordFormer(cfg).eval(), CoordFormer(cfg.replace(use_coords=False)).eval()
    res = {
        (name, h): evaluate_mlm(m, prepared, "test", crop_length=512, progress=False, hide_coords=h)
        for name, m in (("structure", structure), ("sequence", sequence))
        for h in ("none", "all", "span")
    }
    n = res["structure", "none"]["n_masked"]
    assert n > 0 and all(r["n_masked"] == n for r in res.values())
    assert res["structure", "none"]["hidden"] is None
    assert res["structure", "all"]["hidden"]["n_masked"] == n
    assert 0 < res["structure", "span"]["hidden"]["n_masked"] < n
    assert res["sequence", "all"]["perplexity"] == pytest.approx(
        res["sequence", "none"]["perplexity"], rel=1e-6
    )
    assert res["structure", "all"]["perplexity"] != pytest.approx(
        res["structure", "none"]["perplexity"], rel=1e-4
    )
    assert res["structure", "all"]["hidden"]["perplexity"] == pytest.approx(
        res["structure", "all"]["perplexity"], rel=1e-6
    )
    with pytest.raises(UsageError, match="hide_coords"):
        evaluate_mlm(structure, prepared, "test", progress=False, hide_coords="some")

    from coordformer.model.checkpoints import export_model

    export_model(structure, tmp_path / "s.pt")
    assert (
        main(
            [
                "evaluate",
                "-c",
                str(tmp_path / "s.pt"),
                "--data",
                str(prepared.path),
                "--hide-coords",
                "span",
                "--crop-length",
                "512",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "perplexity, coords withheld" in capsys.readouterr().out


def test_withheld_marks_dropped_coordinates_but_not_those_the_structure_lacks(prepared):
    """The batch's `withheld` mask (what evaluate --hide-coords scores as "without coordinates") is
    exactly the residues that had a CA and lost it to dropout; residues already without one are not
    in it."""

    class OneHole:
        def __init__(self, ds):
            self.ds = ds

        def __getattr__(self, name):
            return getattr(self.ds, name)

        def coords(self, i):
            xyz = np.array(self.ds.coords(i))
            xyz[3] = np.nan  # residue 3 of every chain is unresolved
            return xyz

    ds = OneHole(prepared)
    idx = prepared.split_indices("train")[:12]
    plain = MaskedBatches(
        ds, idx, BatchSettings(crop_length=512, tokens_per_batch=4096), seed=5
    ).collate(idx)
    assert plain.withheld is None and plain.stretch is None
    for kw in (
        {"drop_chain_coords": 1.0},
        {"drop_span_coords": 1.0},
        {"withhold": "chain"},
        {"withhold": "span"},
    ):
        b = MaskedBatches(
            ds, idx, BatchSettings(crop_length=512, tokens_per_batch=4096, **kw), seed=5
        ).collate(idx)
        had = ~torch.isnan(plain.coords[:, :, CA_INDEX]).any(-1) & plain.padding_mask
        lost = torch.isnan(b.coords[:, :, CA_INDEX]).any(-1) & had
        assert torch.equal(b.withheld, lost) and lost.any()
        assert not b.withheld[:, 3].any()


def test_cut_deletes_the_stretch_that_hide_withholds(prepared):
    """withhold "cut": the drawn stretch is removed after masking, so each row is the hidden-stretch
    row ("span") with those residues gone (tokens, targets, coordinates in the same frame); "none"
    only reports the stretch. Every row keeps its chain's other residues in order. The evaluation
    conditions draw exactly what structure dropout at probability 1 draws (the masks stay those that
    were pinned when conditions were set as dropout probabilities)."""
    hide, idx = _batch(prepared, withhold="span")
    cut, _ = _batch(prepared, withhold="cut")
    mark, _ = _batch(prepared, withhold="none")
    plain, _ = _batch(prepared)
    for k, v in _fields(plain).items():  # "none" feeds exactly the plain batch
        assert torch.equal(torch.nan_to_num(getattr(mark, k)), torch.nan_to_num(v)), k
    assert torch.equal(mark.stretch, hide.stretch) and not mark.withheld.any()
    assert not cut.stretch.any() and not cut.withheld.any()
    for kw, cond in (
        ({"drop_span_coords": 1.0}, hide),
        ({"drop_chain_coords": 1.0}, _batch(prepared, withhold="chain")[0]),
    ):
        dropout, _ = _batch(prepared, **kw)
        assert _fields(dropout).keys() == _fields(cond).keys()
        for k, v in _fields(dropout).items():
            assert torch.equal(torch.nan_to_num(v), torch.nan_to_num(getattr(cond, k))), (kw, k)
    for row in range(len(idx)):
        keep = hide.padding_mask[row] & ~hide.stretch[row]
        n = int(keep.sum())
        assert 0 < n < int(hide.padding_mask[row].sum())
        assert int(cut.padding_mask[row].sum()) == n
        for k in ("tokens", "targets", "clean"):
            assert torch.equal(getattr(cut, k)[row, :n], getattr(hide, k)[row][keep]), k
        assert torch.equal(
            torch.nan_to_num(cut.coords[row, :n]), torch.nan_to_num(hide.coords[row][keep])
        )
        assert (cut.targets[row, n:] == -100).all() and not cut.padding_mask[row, n:].any()
    with pytest.raises(UsageError, match="withhold must be one of"):
        BatchSettings(withhold="drop")
    with pytest.raises(UsageError, match="replaces structure dropout"):
        BatchSettings(withhold="cut", drop_chain_coords=0.5)
    with pytest.raises(UsageError, match="sequence crops"):
        BatchSettings(withhold="cut", crop_mode="spatial")


def test_evaluate_scores_the_same_residues_outside_the_stretch_in_every_condition(
    prepared, capsys, tmp_path
):
    """hide_coords none / span / cut score the same masked residues outside the stretch (`outside`);
    "none" also scores the stretch with its coordinates given (`stretch`), which "span" withholds. A
    sequence-only model sees identical inputs outside the stretch in none and span, but not in cut,
    where the stretch's residues are gone and its neighbours close up."""
    from coordformer.config import preset
    from coordformer.eval.mlm import evaluate_mlm
    from coordformer.model import CoordFormer

    torch.manual_seed(0)
    cfg = preset("tiny-0.1m")
    structure, sequence = CoordFormer(cfg).eval(), CoordFormer(cfg.replace(use_coords=False)).eval()
    res = {
        (name, h): evaluate_mlm(m, prepared, "test", crop_length=512, progress=False, hide_coords=h)
        for name, m in (("structure", structure), ("sequence", sequence))
        for h in ("none", "span", "cut")
    }
    none, span, cut = (res["structure", h] for h in ("none", "span", "cut"))
    out_n = none["outside"]["n_masked"]
    assert 0 < out_n < none["n_masked"] and span["outside"]["n_masked"] == out_n == cut["n_masked"]
    assert (
        none["stretch"]["n_masked"] + out_n == none["n_masked"]
    )  # every residue of these chains has a CA
    assert span["stretch"]["n_masked"] == span["hidden"]["n_masked"] == none["stretch"]["n_masked"]
    assert none["hidden"] is None and cut["hidden"] is None and cut["stretch"] is None
    assert cut["outside"]["perplexity"] == pytest.approx(cut["perplexity"], rel=1e-9)
    seq = {h: res["sequence", h]["outside"]["perplexity"] for h in ("none", "span", "cut")}
    assert seq["span"] == pytest.approx(seq["none"], rel=1e-6) and seq["cut"] != pytest.approx(
        seq["none"], rel=1e-4
    )
    assert none["outside"]["perplexity"] != pytest.approx(span["outside"]["perplexity"], rel=1e-6)

    from coordformer.model.checkpoints import export_model

    export_model(structure, tmp_path / "s.pt")
    assert (
        main(
            [
                "evaluate",
                "-c",
                str(tmp_path / "s.pt"),
                "--data",
                str(prepared.path),
                "--hide-coords",
                "cut",
                "--crop-length",
                "512",
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "perplexity, outside the stretch" in capsys.readouterr().out
