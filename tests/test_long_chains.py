"""Chains longer than the model's context: window planning, stitching, embed and evaluate over
windows."""

import h5py
import numpy as np
import pytest
import torch

from conftest import synthetic_chains, write_jsonl
from coordformer.batch import Batch
from coordformer.config import ModelConfig, PrepareConfig
from coordformer.data.batching import unmasked_batches
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.data.windows import plan_windows, windowed_forward
from coordformer.embed import EmbedConfig, embed, iter_pooled, iter_windowed
from coordformer.errors import OptionError, SequenceTooLong, UsageError
from coordformer.eval.mlm import evaluate_mlm
from coordformer.model import CoordFormer
from coordformer.model.checkpoints import export_model
from coordformer.score.marginals import ScoreConfig

LONG = 2500


@pytest.mark.parametrize(
    "length,window,overlap",
    [
        (2500, 512, 128),
        (1000, 512, 0),
        (513, 512, 128),
        (700, 100, 99),
        (5, 512, 128),
        (512, 512, 128),
        (1030, 256, 200),
    ],
)
def test_plan_covers_each_residue_once_from_its_most_central_window(length, window, overlap):
    p = plan_windows(length, window, overlap)
    span = min(window, length)
    assert p.starts[0] == 0 and p.starts[-1] + span == length and (p.starts >= 0).all()
    assert (np.diff(p.starts) > 0).all() and (np.diff(p.starts) <= window - overlap).all()
    # lo:hi ranges tile 0..length exactly once, in order
    assert (
        p.lo[0] == 0
        and p.hi[-1] == length
        and (p.lo[1:] == p.hi[:-1]).all()
        and (p.hi > p.lo).all()
    )
    owner = p.owner()
    i = np.arange(length)
    assert (
        len(owner) == length and (p.starts[owner] <= i).all() and (i < p.starts[owner] + span).all()
    )
    # centrality: no window containing residue i has it further from its edges than the owner does
    s = p.starts[None, :]
    inside = (i[:, None] >= s) & (i[:, None] < s + span)
    margin = np.where(inside, np.minimum(i[:, None] - s, s + span - 1 - i[:, None]), -1)
    assert (margin[i, owner] == margin.max(1)).all()
    if length <= window:
        assert len(p.starts) == 1


def test_plan_rejects_bad_overlap():
    with pytest.raises(ValueError):
        plan_windows(100, 50, 50)


def _tiny(seed=0, max_len=512):
    torch.manual_seed(seed)
    return CoordFormer(
        ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=max_len)
    ).eval()


def _walk(length, seed):
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(length, 3))
    ca = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), 0)
    coords = torch.full((length, 4, 3), float("nan"))
    coords[:, 1] = torch.from_numpy(ca).float()
    return torch.randint(4, 24, (length,), generator=torch.Generator().manual_seed(seed)), coords


@torch.no_grad()
def test_stitched_output_is_full_length_and_equals_each_window_run_alone():
    model = _tiny()
    (t1, c1), (t2, c2) = _walk(LONG, 1), _walk(100, 2)
    tokens = torch.zeros(2, LONG, dtype=torch.long)
    coords = torch.full((2, LONG, 4, 3), float("nan"))
    tokens[0], coords[0] = t1, c1
    tokens[1, :100], coords[1, :100] = t2, c2

    def run(w):
        return model(**w.inputs()).hidden

    out = windowed_forward(run, Batch.from_tokens(tokens, coords), 512, 128, 2048)
    assert out.shape == (2, LONG, 32) and (out[1, 100:] == 0).all()
    plan = plan_windows(LONG, 512, 128)
    for s, lo, hi in zip(plan.starts, plan.lo, plan.hi):
        alone = model(t1[None, s : s + 512], c1[None, s : s + 512]).hidden[
            0
        ]  # coordinates centred on this window by the model
        assert torch.allclose(out[0, lo:hi], alone[lo - s : hi - s], atol=1e-5)
    assert torch.allclose(out[1, :100], model(t2[None], c2[None]).hidden[0], atol=1e-5)


@pytest.fixture
def long_jsonl(tmp_path):
    recs = synthetic_chains(8, seed=3)
    big = synthetic_chains(1, seed=4, min_len=LONG, max_len=LONG + 1)[0]
    big["name"] = "LONG.A"
    return write_jsonl(recs + [big], tmp_path / "long.jsonl")


@pytest.fixture
def long_ds(tmp_path, long_jsonl):
    prepare(
        [str(long_jsonl)],
        tmp_path / "ds",
        PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0),
        workers=1,
        progress=False,
    )
    return PreparedDataset(tmp_path / "ds")


@torch.no_grad()
def test_chains_that_fit_give_exactly_the_old_output(long_ds):
    model = _tiny()
    idx = np.flatnonzero(long_ds.lengths <= 512)
    old = list(iter_pooled(model, long_ds, idx, None, True, 512, 4096))
    new = list(iter_windowed(model, long_ds, idx, None, True, 512, 128, 4096))
    assert len(old) == len(new)
    for a, b in zip(old, new):
        assert (
            (a[0] == b[0]).all()
            and (a[1] == b[1]).all()
            and np.array_equal(a[2], b[2])
            and torch.equal(a[3], b[3])
        )


def test_embed_writes_full_length_per_residue_embeddings_for_a_long_chain(tmp_path, long_jsonl):
    from coordformer.model.encode import in_canonical_frame

    model = _tiny()
    ckpt = export_model(model, tmp_path / "tiny.pt", half=False)
    out = tmp_path / "e.h5"
    res = embed(
        str(ckpt),
        [str(long_jsonl)],
        out,
        EmbedConfig(per_residue=True, window=512, overlap=128),
        progress=False,
        echo=lambda s: None,
    )
    assert res["windowed"] == 1 and res["cropped"] == 0 and res["window"] == 512
    with h5py.File(out) as f:
        ids = [x.decode() for x in f["ids"][:]]
        i = ids.index("LONG.A")
        assert f["lengths"][i] == LONG
        per = f["residues"]["LONG.A"][:].astype(np.float32)
        assert per.shape == (LONG, 32) and np.isfinite(per).all()
        assert np.allclose(
            per.mean(0), f["mean"][i], atol=1e-2
        )  # mean over the full length (float16 storage)
    # the first window's share equals that window embedded alone (chain cropped to 512 by the old
    # path)
    plan = plan_windows(LONG, 512, 128)
    with h5py.File(out) as f:
        first = f["residues"]["LONG.A"][: plan.hi[0]].astype(np.float32)
    prepare(
        [str(long_jsonl)],
        tmp_path / "p",
        PrepareConfig(min_length=1, valid_fraction=0.0, test_fraction=0.0),
        workers=1,
        progress=False,
    )
    pds = PreparedDataset(tmp_path / "p")
    ci = pds.ids.index("LONG.A")
    b = next(unmasked_batches(pds, np.array([ci]), 512, 4096))
    with torch.no_grad():  # in the window's canonical frame, as embed feeds each window
        alone = model(**in_canonical_frame(b).inputs()).hidden[0, : plan.hi[0]].numpy()
    assert np.allclose(first, alone, atol=1e-2)


def test_evaluate_refuses_too_long_chains_up_front_and_windows_them_on_request(long_ds):
    model = _tiny()
    with pytest.raises(
        SequenceTooLong, match=r"LONG\.A of length 2500 .*max_len 512.*`windows=True`"
    ) as e:
        evaluate_mlm(model, long_ds, "train", crop_length=1024, progress=False)
    assert isinstance(e.value, UsageError)  # what callers caught before the error carried its data
    assert (e.value.length, e.value.max_len, e.value.chain_id) == (LONG, 512, "LONG.A")
    assert (e.value.option, e.value.alternative) == ("crop_length", "windows")
    cropped = evaluate_mlm(model, long_ds, "train", crop_length=512, progress=False)
    win = evaluate_mlm(
        model, long_ds, "train", crop_length=512, windows=True, overlap=128, progress=False
    )
    assert win["settings"]["windows"] == {"overlap": 128}
    for cid, (n, nll, hits) in cropped["per_chain"].items():
        if cid != "LONG.A":  # chains that fit: same masks, same scores
            assert win["per_chain"][cid][0] == n and win["per_chain"][cid][2] == hits
            assert abs(win["per_chain"][cid][1] - nll) < 1e-3
    assert cropped["per_chain"]["LONG.A"][0] < 0.25 * 512
    assert 0.1 * LONG < win["per_chain"]["LONG.A"][0] < 0.2 * LONG  # masked over the whole chain


@pytest.mark.parametrize("n", [40, 300])
def test_max_length_embeds_exactly_the_first_n_residues_windowed_or_not(tmp_path, long_jsonl, n):
    """--max-length N below the window (chains that fit and chains longer than the window) and above
    it (the windowed path): every chain longer than N is stored with N rows, equal to embedding the
    chain truncated to N residues; shorter chains are untouched."""
    import json

    ckpt = export_model(_tiny(), tmp_path / "tiny.pt", half=False)
    records = [json.loads(line) for line in open(long_jsonl)]
    cut = write_jsonl(
        [
            {**r, "seq": r["seq"][:n], "coords": {a: xyz[:n] for a, xyz in r["coords"].items()}}
            for r in records
        ],
        tmp_path / "cut.jsonl",
    )
    cfg = dict(per_residue=True, window=256, overlap=64)
    res = embed(
        str(ckpt),
        [str(long_jsonl)],
        tmp_path / "max.h5",
        EmbedConfig(max_length=n, **cfg),
        progress=False,
        echo=lambda s: None,
    )
    embed(
        str(ckpt),
        [str(cut)],
        tmp_path / "cut.h5",
        EmbedConfig(**cfg),
        progress=False,
        echo=lambda s: None,
    )
    longer = sum(len(r["seq"]) > n for r in records)
    assert longer and res["cropped"] == longer and res["windowed"] == int(n > 256)
    with h5py.File(tmp_path / "max.h5") as f, h5py.File(tmp_path / "cut.h5") as g:
        ids = [x.decode() for x in f["ids"][:]]
        assert sorted(ids) == sorted(x.decode() for x in g["ids"][:])
        j = {x.decode(): k for k, x in enumerate(g["ids"][:])}
        for i, cid in enumerate(ids):
            full = len(next(r["seq"] for r in records if r["name"] == cid))
            per = f["residues"][cid][:]
            assert per.shape[0] == f["lengths"][i] == min(full, n), cid
            assert f["sequences"][i].decode() == g["sequences"][j[cid]].decode()
            assert np.allclose(
                per.astype(np.float32), g["residues"][cid][:].astype(np.float32), atol=5e-3
            ), cid
            assert np.allclose(f["mean"][i], g["mean"][j[cid]], atol=1e-4), cid


def test_evaluate_cli_names_the_flags_of_a_too_long_chain_in_one_line(tmp_path, long_ds, capsys):
    from coordformer.cli import main

    ckpt = export_model(_tiny(), tmp_path / "tiny.pt", half=False)
    args = [
        "evaluate",
        "-c",
        str(ckpt),
        "--data",
        str(long_ds.path),
        "--split",
        "train",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main([*args, "--crop-length", "1024"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: chain LONG.A of length 2500 exceeds the model's max_len 512; "
        "use --crop-length 512 or less, or --windows\n"
    )
    assert main([*args, "--crop-length", "600", "--windows"]) == 2
    assert (
        capsys.readouterr().err
        == "error: --crop-length 600: the window exceeds the model's max_len 512\n"
    )


def test_too_long_inputs_raise_errors_that_carry_the_numbers():
    model = _tiny(max_len=64)
    with pytest.raises(SequenceTooLong) as e:
        model(torch.randint(4, 24, (2, 65)))
    # forward has no length setting of its own to name (its callers check with theirs)
    assert (e.value.length, e.value.max_len, e.value.option, e.value.chain_id) == (
        65,
        64,
        None,
        None,
    )
    assert e.value.flag_message() == "sequence of length 65 exceeds the model's max_len 64"
    with pytest.raises(OptionError) as e:
        ScoreConfig(window=128).window_for(64)
    assert (e.value.option, e.value.value) == ("window", 128)
    assert str(e.value) == "window=128: exceeds the model's max_len 64"
    assert e.value.flag_message() == "--window 128: exceeds the model's max_len 64"
