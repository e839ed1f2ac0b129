"""Numerical safety: non-finite coordinates become missing atoms, chains beyond +/-10,000 A are
rejected with a logged reason, and nothing legal makes the model, training, evaluation or `embed`
produce NaN."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import DATA, synthetic_chains, write_jsonl
from coordformer.config import PrepareConfig, TrainConfig, preset
from coordformer.data.prepare import prepare
from coordformer.data.sanitize import MAX_ABS_COORD, OUT_OF_RANGE, sanitize_coords
from coordformer.data.store import PreparedDataset
from coordformer.geometry import centre
from coordformer.model.core import CoordFormer

ATOMS = ("N", "CA", "C", "O")
GOOD = 14  # ordinary synthetic chains next to the special ones


def _backbone(rec) -> np.ndarray:
    """[L, 4, 3] float64 Angstrom from a chain_set record (dict-of-atoms form)."""
    return np.stack([np.asarray(rec["coords"][a], dtype=np.float64) for a in ATOMS], axis=1)


def _special(name: str, seed: int, edit) -> dict:
    """A synthetic chain_set record whose [L, 4, 3] coordinates ``edit`` changes in place."""
    rec = synthetic_chains(1, seed=seed, min_len=40, max_len=50)[0]
    xyz = _backbone(rec)
    if name not in INJECTED:
        edit(xyz)
    rec["name"] = name
    rec["coords"] = {
        a: [None if np.isnan(r).all() else r.tolist() for r in xyz[:, i]]
        for i, a in enumerate(ATOMS)
    }
    return rec


def _set(i: int, atom: int, k: int, value: float):
    def edit(xyz):
        xyz[i, atom, k] = value

    return edit


def _inf(xyz):
    xyz[3, 2, 1] = math.inf  # C of residue 3
    xyz[5, 1, 0] = -math.inf  # CA of residue 5


def _inf_most_ca(xyz):
    xyz[: int(0.6 * len(xyz)), 1, 2] = math.inf


def _nan(xyz):
    xyz[4, 1] = np.nan  # a missing CA (null in JSON)
    xyz[2, 0, 1] = np.nan  # one NaN component: the whole N is missing


def _all_ca_missing(xyz):
    xyz[:, 1] = np.nan


def _zero_extent(xyz):
    xyz[:] = xyz[0]


def _far(xyz):
    xyz += 9000.0 - np.abs(xyz).max()  # allowed: within the bound, and centring removes the offset


def _span(xyz):
    # the largest extent the bound allows: centred coordinates reach ~1e4 A, |x/16|^2 ~ 4e5
    half = len(xyz) // 2
    xyz[:half] += 9990.0 - xyz[:half].max()
    xyz[half:] += -9990.0 - xyz[half:].min()


SPECIALS = {
    "INF.A": _inf,
    "INFCA.A": _inf_most_ca,
    "NAN.A": _nan,
    "E6.A": _set(3, 1, 0, 1e6),  # a CA
    "E30.A": _set(6, 3, 2, -1e30),  # any atom counts, not only CA
    "ALLNANCA.A": _all_ca_missing,
    "SAME.A": _zero_extent,
    "FAR.A": _far,
    "SPAN.A": _span,
}
OUT_OF_RANGE_IDS = {"E6.A", "E30.A"}
#: JSON cannot carry Inf portably and the chain_set reader refuses a record holding one, so these
#: chains are written finite and get their Inf values as they are read (see
#: ``_inf_passing_reader``): prepare's rule must hold for whatever a reader hands it.
INJECTED = {"INF.A", "INFCA.A"}


def _inf_passing_reader(mp: pytest.MonkeyPatch) -> None:
    """Make prepare's chain_set reader hand over INJECTED chains with their Inf values applied."""
    import coordformer.io as cio

    real = cio.iter_chain_set_lines

    def read(path, *args, **kwargs):
        for item in real(path, *args, **kwargs):
            if getattr(item, "id", None) in INJECTED:
                SPECIALS[item.id](item.coords)
            yield item

    mp.setattr(cio, "iter_chain_set_lines", read)


@pytest.fixture(scope="module")
def bad_jsonl(tmp_path_factory):
    recs = synthetic_chains(GOOD, seed=11, min_len=30, max_len=60)
    recs += [_special(name, 100 + k, edit) for k, (name, edit) in enumerate(SPECIALS.items())]
    return write_jsonl(recs, tmp_path_factory.mktemp("numsafe") / "mixed.jsonl")


@pytest.fixture(scope="module")
def bad_prepared(bad_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("numsafe_ds") / "ds"
    cfg = PrepareConfig(min_length=10, valid_fraction=0.2, test_fraction=0.2)
    with pytest.MonkeyPatch.context() as mp:
        _inf_passing_reader(mp)
        summary = prepare([str(bad_jsonl)], out, cfg, workers=1, progress=False)
    return summary, PreparedDataset(out)


def _skipped(path) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return {r[0].split(" [")[0]: r[1] for r in rows}


def test_sanitize_coords_rule():
    xyz = np.zeros((5, 4, 3))
    xyz[1, 2, 0] = np.inf
    xyz[2, 1, 2] = -np.inf
    xyz[3, 0, 1] = np.nan
    out, why = sanitize_coords(xyz)
    assert why is None and out.dtype == np.float32 and out.shape == (5, 4, 3)
    assert np.isnan(out[1, 2]).all() and np.isnan(out[2, 1]).all() and np.isnan(out[3, 0]).all()
    assert np.isnan(out).any(-1).sum() == 3 and (out[~np.isnan(out).any(-1)] == 0).all()
    edge = xyz.copy()
    edge[0, 1] = [MAX_ABS_COORD, -MAX_ABS_COORD, 9999.999]  # the PDB limit itself is allowed
    assert sanitize_coords(edge)[1] is None
    for big in (
        1.0001e4,
        1e6,
        1e30,
        1e39,
    ):  # 1e39: beyond float32, must be rejected, not masked as Inf
        bad = xyz.copy()
        bad[4, 3, 0] = -big
        _, why = sanitize_coords(bad)
        assert (
            why is not None
            and why.startswith(OUT_OF_RANGE)
            and OUT_OF_RANGE == "coordinates beyond ±10000 Å"
        )
    assert (
        sanitize_coords(np.full((3, 4, 3), np.nan))[1] is None
    )  # nothing present: the CA filter decides


def test_prepare_masks_non_finite_atoms_and_rejects_out_of_range_chains(bad_prepared):
    summary, ds = bad_prepared
    ids = set(ds.ids)
    assert ids == {f"S{i:03d}.A" for i in range(GOOD)} | {
        "INF.A",
        "NAN.A",
        "SAME.A",
        "FAR.A",
        "SPAN.A",
    }
    inf = ds.coords(ds.ids.index("INF.A"))
    missing = np.isnan(inf).any(-1)
    assert np.isnan(inf[3, 2]).all() and np.isnan(inf[5, 1]).all() and missing.sum() == 2
    assert np.isfinite(inf[~missing]).all()
    nan = ds.coords(ds.ids.index("NAN.A"))
    assert (
        np.isnan(nan[4, 1]).all() and np.isnan(nan[2, 0]).all() and np.isnan(nan).any(-1).sum() == 2
    )

    skipped = _skipped(ds.path / "skipped.tsv")
    assert set(skipped) == OUT_OF_RANGE_IDS | {"INFCA.A", "ALLNANCA.A"}
    for cid in OUT_OF_RANGE_IDS:
        assert skipped[cid].startswith("bad coordinates: coordinates beyond ±10000 Å")
    assert "1e+06" in skipped["E6.A"] and "1e+30" in skipped["E30.A"]
    # Inf CAs become missing, so the existing filter rejects a chain left with too few CAs
    assert skipped["INFCA.A"].startswith("missing CA: 58%") and skipped["ALLNANCA.A"].startswith(
        "missing CA: 100%"
    )
    expected = {"bad coordinates": 2, "missing CA": 2}
    assert summary.chains_filtered == expected and summary.inputs_skipped == 0
    manifest = json.loads((ds.path / "manifest.json").read_text())
    assert manifest["counts"]["chains_filtered"] == expected


def test_pretrain_and_evaluate_give_finite_losses(bad_prepared, tmp_path):
    from lightning.pytorch.callbacks import Callback

    from coordformer.eval.mlm import evaluate_mlm
    from coordformer.model.checkpoints import load_model
    from coordformer.train.run import pretrain

    _, ds = bad_prepared
    losses = []

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    # backbone mode with |x|^2: every coordinate feature sees the extreme (but legal) chains
    mc = preset("tiny-0.1m", use_coords=True, coord_mode="backbone", coord_norm_feature=True)
    tc = TrainConfig(
        max_steps=3,
        val_every_steps=3,
        tokens_per_batch=1024,
        crop_length=64,
        warmup_steps=2,
        log_every_steps=1,
    )
    s = pretrain(ds.path, tmp_path / "run", mc, tc, progress=False, callbacks=[Record()])
    assert s["global_step"] == 3 and s["skipped_steps"] == 0
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert s["final_val"] and all(math.isfinite(v) for v in s["final_val"].values())

    model, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    per_chain = {}
    for split in ("train", "valid", "test"):
        res = evaluate_mlm(model, ds, split, crop_length=64, progress=False)
        assert math.isfinite(res["loss"]) and math.isfinite(res["perplexity"])
        per_chain.update(res["per_chain"])
    # every kept chain was evaluated, INF.A included: its Inf atoms were masked, not the chain
    # dropped
    assert set(per_chain) == set(ds.ids) and {"INF.A", "SPAN.A", "FAR.A", "SAME.A"} <= set(
        per_chain
    )
    assert all(math.isfinite(nll) for _, nll, _ in per_chain.values())


def test_embed_direct_input_skips_and_reports_out_of_range_chains(bad_jsonl, tmp_path, monkeypatch):
    from coordformer.embed import EmbedConfig, embed, read_embeddings

    _inf_passing_reader(monkeypatch)
    out = tmp_path / "e.npz"
    said = []
    # progress=True: the summary of the inputs (with its skip counts) is echoed only then; quiet
    # runs name the skipped list in the CLI's result line instead
    res = embed(
        "small-coords", [str(bad_jsonl)], out, EmbedConfig(), progress=True, echo=said.append
    )
    ids, mean = read_embeddings(out)
    # embed keeps chains however many CAs are missing (max_missing_ca=1), so INFCA/ALLNANCA stay
    assert set(ids) == {f"S{i:03d}.A" for i in range(GOOD)} | (set(SPECIALS) - OUT_OF_RANGE_IDS)
    assert res["chains"] == len(ids) and np.isfinite(mean).all()
    skipped = _skipped(tmp_path / "e.npz.skipped.tsv")
    assert set(skipped) == OUT_OF_RANGE_IDS
    assert all(
        r.startswith("bad coordinates: coordinates beyond ±10000 Å") for r in skipped.values()
    )
    assert "bad coordinates: 2" in "\n".join(said)


def _chain(seed: int, length: int = 24) -> np.ndarray:
    return _backbone(synthetic_chains(1, seed=seed, min_len=length, max_len=length + 1)[0])


def test_centre_with_no_present_reference_does_not_divide_by_zero():
    x = torch.from_numpy(_chain(1)).float()[None]  # [1, L, 4, 3]
    x[0, :, 1] = float("nan")
    present = torch.zeros(1, x.shape[1], dtype=torch.bool)
    y = centre(x, present)
    assert torch.equal(y[:, :, [0, 2, 3]], x[:, :, [0, 2, 3]])  # no shift, and no 0/0
    same = torch.from_numpy(_chain(2)).float()[None]
    same[:] = same[0, 0]
    y = centre(same, torch.ones(1, same.shape[1], dtype=torch.bool))
    assert torch.isfinite(y).all() and y[:, :, 1].abs().max() == 0


@pytest.mark.parametrize("mode,norm", [("ca", False), ("backbone", True)])
def test_model_is_finite_on_sanitised_extreme_inputs(mode, norm):
    torch.manual_seed(0)
    raw = {name: _chain(20 + k) for k, name in enumerate(SPECIALS)}
    for name, edit in SPECIALS.items():
        edit(raw[name])
    chains = {}
    for name, xyz in raw.items():
        clean, why = sanitize_coords(xyz)
        assert (why is not None) == (name in OUT_OF_RANGE_IDS)
        if why is None:
            chains[name] = clean
    assert set(chains) == set(SPECIALS) - OUT_OF_RANGE_IDS
    # one shorter row so the batch also has padding positions
    chains["SHORT.A"] = chains["INF.A"][:10]
    b, length = len(chains), max(len(c) for c in chains.values())
    tokens = torch.zeros(b, length, dtype=torch.long)
    coords = torch.full((b, length, 4, 3), float("nan"))
    for i, c in enumerate(chains.values()):
        tokens[i, : len(c)] = torch.randint(4, 24, (len(c),))
        coords[i, : len(c)] = torch.from_numpy(c)
    model = CoordFormer(
        preset("tiny-0.1m", use_coords=True, coord_mode=mode, coord_norm_feature=norm)
    )
    out = model(tokens, coords)
    pad = tokens != 0
    assert torch.isfinite(out.logits[pad]).all() and torch.isfinite(out.hidden[pad]).all()
    loss = torch.nn.functional.cross_entropy(out.logits[pad], tokens[pad])
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@torch.no_grad()
def test_the_model_reads_an_infinite_coordinate_as_missing_and_checks_the_shape():
    """A chain handed to the model directly (not through prepare) with one +Inf coordinate gave
    NaN everywhere; it now equals the same atom missing (NaN). CA-only coordinates [B, L, 1, 3]
    work as documented, and a wrong shape is a UsageError naming both shapes."""
    from coordformer.data.batching import chains_to_batch
    from coordformer.errors import UsageError
    from coordformer.io import read_structure

    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m")).eval()
    tokens, coords, mask = chains_to_batch(read_structure(DATA / "1orc.pdb"))
    ref = model(tokens, coords, padding_mask=mask).logits
    inf, nan = coords.clone(), coords.clone()
    inf[0, 3, 1, 0], nan[0, 3, 1] = float("inf"), float("nan")
    got = model(tokens, inf, padding_mask=mask).logits
    assert torch.isfinite(got).all()
    assert torch.equal(got, model(tokens, nan, padding_mask=mask).logits)
    assert not torch.allclose(got, ref)  # the atom really went missing
    ca_only = model(tokens, coords[:, :, 1:2], padding_mask=mask).logits
    assert torch.allclose(ca_only, ref, atol=1e-6)
    for bad in (coords[..., :2], coords[:, :10], coords[0]):
        with pytest.raises(UsageError, match=r"need \[B, L, atoms, 3\] Angstrom"):
            model(tokens, bad, padding_mask=mask)
