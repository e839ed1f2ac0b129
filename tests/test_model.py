import numpy as np
import pytest
import torch

from coordformer.config import ConfigError, ModelConfig, TrainConfig, preset
from coordformer.constants import AA_OFFSET, MASK, PAD, UNK
from coordformer.data.batching import BatchSettings, MaskedBatches, token_budget_batches
from coordformer.data.masking import bert_mask
from coordformer.errors import OptionError
from coordformer.geometry import centre, pairwise_distances, random_rotation
from coordformer.model import CoordFormer, coordinate_features
from coordformer.model.checkpoints import export_model, load_model
from coordformer.train.mlm import lr_factor

TINY = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128)


def _random_structure(length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(length, 3, generator=g)
    ca = torch.cumsum(3.8 * steps / steps.norm(dim=1, keepdim=True), 0)
    coords = torch.stack([ca + 1.0, ca, ca - 1.0, ca + 2.0], dim=1)  # [L, 4, 3]
    tokens = torch.randint(AA_OFFSET, AA_OFFSET + 20, (length,), generator=g)
    return tokens, coords


def test_random_rotation_is_proper_and_preserves_distances():
    g = torch.Generator().manual_seed(1)
    r = random_rotation(64, g)
    eye = torch.eye(3).expand(64, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(64), atol=1e-5)
    x = torch.randn(30, 3) * 10
    d0 = pairwise_distances(x)
    d1 = pairwise_distances(x @ r[0].T)
    assert torch.allclose(d0, d1, atol=1e-3)


def test_random_rotation_is_uniform_on_average():
    # Haar-uniform rotations average to the zero matrix; a biased sampler (plain QR) does not.
    r = random_rotation(20000, torch.Generator().manual_seed(0))
    assert r.mean(0).abs().max() < 0.03


def test_centre_uses_present_ca_only():
    _, coords = _random_structure(20)
    coords[5, 1] = float("nan")
    present = ~torch.isnan(coords[:, 1]).any(-1)
    c = centre(coords, present)
    assert torch.allclose(torch.nanmean(c[present][:, 1], 0), torch.zeros(3), atol=1e-4)
    assert torch.isnan(c[5, 1]).all()


def test_bert_mask_statistics_and_exclusions():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(AA_OFFSET, AA_OFFSET + 20, (400, 200), generator=g)
    tokens[:, 150:] = PAD
    tokens[:, 0] = UNK
    inp, tgt = bert_mask(tokens, torch.Generator().manual_seed(1))
    sel = tgt != -100
    assert not sel[:, 150:].any() and not sel[:, 0].any()
    assert sel.sum(1).eq(round(149 * 0.15)).all()
    frac_mask = (inp[sel] == MASK).float().mean().item()
    unchanged = (inp[sel] == tokens[sel]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02
    # 10% kept + ~1/20 of the 10% random that happen to draw the same residue
    assert abs(unchanged - (0.1 + 0.1 / 20)) < 0.02
    assert torch.equal(tgt[sel], tokens[sel])
    inp2, tgt2 = bert_mask(tokens, torch.Generator().manual_seed(1))
    assert torch.equal(inp, inp2) and torch.equal(tgt, tgt2)


def test_token_budget_batches_cover_everything_once():
    lengths = np.random.default_rng(0).integers(10, 300, size=500)
    batches = token_budget_batches(lengths, 2048, np.random.default_rng(0))
    allidx = np.concatenate(batches)
    assert sorted(allidx.tolist()) == list(range(500))
    for b in batches:
        assert len(b) == 1 or lengths[b].max() * len(b) <= 2048
    # bucketing keeps padding waste low
    padded = sum(lengths[b].max() * len(b) for b in batches)
    assert lengths.sum() / padded > 0.8


def _model(**kw):
    torch.manual_seed(0)
    return CoordFormer(ModelConfig(**{**TINY, **kw})).eval()


def test_padding_does_not_change_outputs():
    m = _model()
    tok, xyz = _random_structure(30)
    out1 = m(tok[None], xyz[None]).logits[0]
    tok_p = torch.cat([tok, torch.zeros(10, dtype=torch.long)])
    xyz_p = torch.cat([xyz, torch.full((10, 4, 3), float("nan"))])
    other_tok, other_xyz = _random_structure(40, seed=3)
    out2 = m(torch.stack([tok_p, other_tok]), torch.stack([xyz_p, other_xyz])).logits[0, :30]
    assert torch.allclose(out1, out2, atol=1e-5)


def test_coords_switch_removes_coordinate_information():
    tok, xyz = _random_structure(30)
    moved = xyz + torch.randn_like(xyz) * 5
    with_c = _model(use_coords=True)
    assert not torch.allclose(
        with_c(tok[None], xyz[None]).logits, with_c(tok[None], moved[None]).logits, atol=1e-4
    )
    no_c = _model(use_coords=False)
    assert no_c.coord_embed is None
    assert torch.equal(no_c(tok[None], xyz[None]).logits, no_c(tok[None], moved[None]).logits)
    assert not any("coord" in n for n, _ in no_c.named_parameters())


def test_attention_path_matches_fused_path_and_rows_sum_to_one():
    m = _model()
    tok, xyz = _random_structure(25)
    a = m(tok[None], xyz[None], need_attention=True)
    b = m(tok[None], xyz[None])
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert len(a.attentions) == 2 and a.attentions[0].shape == (1, 4, 25, 25)
    assert torch.allclose(a.attentions[1].sum(-1), torch.ones(1, 4, 25), atol=1e-5)


def test_coordinate_features_layout():
    tok, xyz = _random_structure(10)
    xyz[3] = float("nan")
    f = coordinate_features(xyz[None], ModelConfig(**TINY))
    assert f.shape == (1, 10, 4)
    assert f[0, 3].tolist() == [0, 0, 0, 1]
    assert torch.allclose(f[0, 0, :3], xyz[0, 1] / 16.0)
    fb = coordinate_features(
        xyz[None], ModelConfig(**TINY, coord_mode="backbone", coord_norm_feature=True)
    )
    assert fb.shape == (1, 10, 17)
    assert torch.allclose(fb[0, 0, -1], (xyz[0, 1] / 16.0).pow(2).sum())


@pytest.mark.parametrize("mode", ["ca", "backbone"])
def test_gaussian_init_heads_attend_by_distance(mode):
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=128,
        n_layers=1,
        n_heads=4,
        d_ff=256,
        coord_norm_feature=True,
        gaussian_init_heads=2,
        gaussian_init_sigmas=(6.0, 10.0),
        coord_mode=mode,
    )
    m = CoordFormer(cfg).eval()
    tok, xyz = _random_structure(120, seed=5)
    xyz = xyz - xyz[:, 1].mean(0)
    xyz[40:45] = float("nan")
    att = m(tok[None], xyz[None], need_attention=True).attentions[0][0]
    d = torch.cdist(xyz[:, 1], xyz[:, 1])
    d[:, 40:45] = float("inf")
    for h, sigma in enumerate((6.0, 10.0)):
        target = torch.softmax(-(d.nan_to_num(float("inf")) ** 2) / (2 * sigma**2), -1)
        rows = [i for i in range(120) if not 40 <= i < 45]
        l1 = (att[h][rows] - target[rows]).abs().sum(-1).mean()
        assert l1 < 0.3, (h, l1)
        assert att[h][:, 40:45].max() < 1e-6  # keys without coordinates are ignored
    # An ordinary head is not distance-shaped.
    target = torch.softmax(-(d.nan_to_num(float("inf")) ** 2) / (2 * 6.0**2), -1)
    assert (att[3][rows] - target[rows]).abs().sum(-1).mean() > 1.0


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(d_model=100, n_heads=8)
    with pytest.raises(ConfigError, match="norm"):
        ModelConfig(gaussian_init_heads=2)
    with pytest.raises(ConfigError, match="preset"):
        preset("huge")
    assert ModelConfig.from_dict(preset("paper-33m").to_dict()) == preset("paper-33m")
    with pytest.raises(ConfigError, match="renamed large-43m"):
        preset("paper-43m")


def test_paper_preset_is_the_papers_model_and_recipes_set_the_coordinate_switches():
    # nn.TransformerEncoderLayer(768, 12) as the paper builds it: dim_feedforward left at 2048
    ref = torch.nn.TransformerEncoderLayer(768, 12)
    c = preset("paper-33m")
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff) == (768, 6, 12, ref.linear1.out_features)
    assert 33e6 < CoordFormer(c).num_parameters() < 34e6
    fast, paper = preset("paper-33m", recipe="fast"), preset("paper-33m", recipe="paper")
    assert (fast.coord_norm_feature, fast.gaussian_init_heads, fast.gaussian_init_values) == (
        True,
        4,
        True,
    )
    assert (paper.coord_norm_feature, paper.gaussian_init_heads, paper.gaussian_init_values) == (
        False,
        0,
        False,
    )
    # the paper's model also has PyTorch's default initialisation and a linear LM head: 33.1 M
    assert (paper.weight_init, paper.lm_head) == ("pytorch", "linear")
    assert (fast.weight_init, fast.lm_head) == ("normal", "mlp")
    m = CoordFormer(paper)
    assert 33.0e6 < m.num_parameters() < 33.2e6 and len(m.lm_head) == 1
    # nn.Linear(4, 768)'s default: U(-1/2, 1/2), std 0.29; the project's N(0, 0.02) is 14x smaller
    assert 0.27 < float(m.coord_embed.weight.detach().std()) < 0.31
    assert float(CoordFormer(fast).coord_embed.weight.detach().std()) < 0.05
    twin = preset("paper-33m", recipe="paper", use_coords=False)  # the sequence-only twin
    assert (twin.weight_init, twin.lm_head, twin.use_coords) == ("pytorch", "linear", False)
    assert preset("tiny-0.1m", recipe="fast").gaussian_init_heads == 2  # half of 4 heads at most
    assert (
        preset("small-3m", recipe="fast", use_coords=False).gaussian_init_heads == 0
    )  # no coordinates, no recipe
    assert (
        preset("small-3m", recipe="fast", gaussian_init_heads=1).gaussian_init_heads == 1
    )  # explicit wins


def test_lr_schedule_warmup_cosine_and_time_budget():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(200, cfg) == pytest.approx(0.05)
    assert lr_factor(20, cfg, time_fraction=1.0) == pytest.approx(0.05)


def test_masked_batches_deterministic_resumable_and_sharded(prepared):
    idx = prepared.split_indices("train")
    s = BatchSettings(crop_length=50, tokens_per_batch=400)
    a = MaskedBatches(prepared, idx, s, seed=7, epochs=2)
    b = MaskedBatches(prepared, idx, s, seed=7, epochs=2, start_batch=3)
    for k in range(3):
        x, y = a[k + 3], b[k]
        assert all(
            torch.equal(getattr(x, key), getattr(y, key)) for key in ("tokens", "targets", "index")
        )
        assert torch.allclose(x.coords.nan_to_num(), y.coords.nan_to_num())
    assert a[0].tokens.shape[1] <= 50
    r0 = MaskedBatches(prepared, idx, s, seed=7, rank=0, world_size=2)
    r1 = MaskedBatches(prepared, idx, s, seed=7, rank=1, world_size=2)
    i0 = torch.cat([r0[k].index for k in range(len(r0))])
    i1 = torch.cat([r1[k].index for k in range(len(r1))])
    assert not set(i0.tolist()) & set(i1.tolist())
    # more processes than batches: an error that names the setting to change, not a bare ValueError
    from coordformer.errors import OptionError

    with pytest.raises(OptionError, match="fewer than one for each of the 10000 processes") as e:
        MaskedBatches(prepared, idx, s, seed=7, rank=0, world_size=10_000)
    assert e.value.flag_message().startswith("--tokens-per-batch")
    # Coordinates arrive centred: the mean present CA is at the origin.
    bt = a[0]
    ca = bt.coords[0, :, 1]
    ok = ~torch.isnan(ca).any(-1)
    assert torch.allclose(ca[ok].mean(0), torch.zeros(3), atol=1e-3)


def test_export_and_load_half_precision(tmp_path):
    m = _model()
    path = export_model(m, tmp_path / "m.pt", meta={"note": "x"})
    m2, meta = load_model(path)
    tok, xyz = _random_structure(20)
    assert meta["note"] == "x"
    assert m2.config == m.config
    assert torch.allclose(
        m(tok[None], xyz[None]).logits, m2(tok[None], xyz[None]).logits, atol=5e-2
    )


def test_int8_export_quarters_the_file_and_stays_close(tmp_path):
    from coordformer.model.checkpoints import INT8_MIN_NUMEL, dequantize_int8, quantize_int8

    w = (
        torch.randn(6, 50) * torch.tensor([0.01, 0.1, 1, 10, 100, 1000])[:, None]
    )  # rows of very different range
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (6,)
    # per-row: every row's error is within half a step of its own scale
    assert ((dequantize_int8(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-6).all()
    m = CoordFormer(preset("small-3m", recipe="fast")).eval()
    half = export_model(m, tmp_path / "h.pt")
    small = export_model(m, tmp_path / "q.pt", int8=True)
    obj = torch.load(small, weights_only=False)
    assert obj["format_version"] == 2 and obj["int8"]
    assert all(
        v["q"].dtype == torch.int8 and v["q"].numel() >= INT8_MIN_NUMEL
        for v in obj["int8"].values()
    )
    assert small.stat().st_size < 0.6 * half.stat().st_size
    m2, _ = load_model(small)
    assert m2.config == m.config and all(p.dtype == torch.float32 for p in m2.parameters())
    tok, xyz = _random_structure(40)
    a, b = (
        m(tok[None], xyz[None]).logits.log_softmax(-1),
        m2(tok[None], xyz[None]).logits.log_softmax(-1),
    )
    assert (a - b).abs().max() < 0.05
    assert not torch.equal(a, b)  # it is quantised


def test_sharded_export_keeps_every_file_under_the_limit_and_loads_the_same_weights(tmp_path):
    """A model larger than a file-size limit ships in float16 split over shards (no quantisation
    cost): every file under the limit, the same weights as one file, errors naming what is
    missing."""
    from coordformer.errors import UsageError
    from coordformer.model.checkpoints import export_model, load_model

    m = CoordFormer(preset("small-3m", recipe="fast")).eval()
    whole = export_model(m, tmp_path / "whole" / "m.pt")
    limit = 2_500_000
    main = export_model(
        m, tmp_path / "sharded" / "m.pt", meta={"global_step": 7}, max_file_bytes=limit
    )
    files = sorted((tmp_path / "sharded").iterdir())
    assert [f.name for f in files] == [
        "m.pt",
        *(f"m.pt.shard{i}" for i in range(1, len(files))),
    ] and len(files) >= 3
    assert all(f.stat().st_size <= limit for f in files)
    a, meta = load_model(whole)
    b, meta_b = load_model(main)
    assert (
        meta_b["global_step"] == 7 and torch.load(main, weights_only=False)["format_version"] == 3
    )
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # int8 entries shard too
    q = export_model(m, tmp_path / "q" / "m.pt", int8=True, max_file_bytes=1_500_000)
    assert len(list((tmp_path / "q").iterdir())) >= 2
    assert all(
        torch.equal(x, y)
        for x, y in zip(
            load_model(export_model(m, tmp_path / "q1.pt", int8=True))[0].state_dict().values(),
            load_model(q)[0].state_dict().values(),
        )
    )
    # re-exporting with fewer shards removes the stale ones
    export_model(m, tmp_path / "sharded" / "m.pt")
    assert [f.name for f in (tmp_path / "sharded").iterdir()] == ["m.pt"]
    export_model(m, main, max_file_bytes=limit)
    (tmp_path / "sharded" / "m.pt.shard2").unlink()
    with pytest.raises(UsageError, match="m.pt.shard2, which is not beside it") as e:
        load_model(main)
    assert "under those names" in str(e.value)  # a renamed copy still needs the exported names
    export_model(m, main, max_file_bytes=limit)
    shard = tmp_path / "sharded" / "m.pt.shard1"
    shard.write_bytes(shard.read_bytes()[:1000])  # a transfer cut short
    with pytest.raises(UsageError, match=r"m.pt.shard1 \(a shard of m.pt\): cannot be read"):
        load_model(main)
    export_model(m, main, max_file_bytes=limit)
    (tmp_path / "sharded" / "m.pt.shard2").unlink()
    with pytest.raises(UsageError, match="one shard of the model file m.pt"):
        load_model(tmp_path / "sharded" / "m.pt.shard1")
    with pytest.raises(OptionError, match="the largest tensor") as e:
        export_model(m, tmp_path / "tiny.pt", max_file_bytes=1_100_000)
    assert e.value.option == "max_file_bytes" and not (tmp_path / "tiny.pt").exists()


class _FakeDataset:
    """Just enough of PreparedDataset for MaskedBatches: many chains, so packing varies per
    epoch."""

    def __init__(self, n=400, seed=0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(20, 200, size=n)
        self._seqs = [
            rng.choice(np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", np.uint8), size=l)
            for l in self.lengths
        ]
        self._xyz = [rng.normal(scale=10, size=(l, 4, 3)).astype(np.float32) for l in self.lengths]

    def seq_bytes(self, i):
        return self._seqs[i]

    def coords(self, i):
        return self._xyz[i]


def test_epoch_boundaries_survive_varying_batch_counts():
    ds = _FakeDataset()
    mb = MaskedBatches(
        ds,
        np.arange(len(ds.lengths)),
        BatchSettings(crop_length=150, tokens_per_batch=600),
        seed=3,
        epochs=6,
    )
    counts = {len(mb._plan(e)) for e in range(6)}
    assert len(counts) > 1, "test needs epochs that pack into different batch counts"
    for k in range(
        len(mb)
    ):  # every item of every epoch is reachable (this raised IndexError before)
        assert mb[k].tokens.shape[0] >= 1


def test_eval_masks_do_not_depend_on_batch_composition():
    ds = _FakeDataset(n=60)
    idx = np.arange(60)

    def masks(m):
        out = {}
        for k in range(len(m)):
            b = m[k]
            for i, ci in enumerate(b.index.tolist()):
                out[ci] = (b.targets[i] != -100).nonzero().flatten().tolist()
        return out

    small = masks(
        MaskedBatches(
            ds, idx, BatchSettings(tokens_per_batch=500, random_crop=False), seed=9, train=False
        )
    )
    big = masks(
        MaskedBatches(
            ds,
            idx[:25],
            BatchSettings(tokens_per_batch=50_000, random_crop=False),
            seed=9,
            train=False,
        )
    )
    assert all(small[c] == big[c] for c in big)
    other = masks(
        MaskedBatches(
            ds,
            idx[:25],
            BatchSettings(tokens_per_batch=500, random_crop=False),
            seed=10,
            train=False,
        )
    )
    assert any(other[c] != big[c] for c in big)


def test_model_is_invariant_to_translation_and_rotation_of_distances():
    m = _model()
    tok, xyz = _random_structure(30)
    shifted = xyz + torch.tensor([100.0, -50.0, 7.0])
    a = m(tok[None], xyz[None]).logits
    assert torch.allclose(
        a, m(tok[None], shifted[None]).logits, atol=1e-4
    )  # centred inside the model
    with_missing = xyz.clone()
    with_missing[3] = float("nan")
    assert torch.isfinite(m(tok[None], with_missing[None]).logits).all()


def test_configs_from_older_versions_and_invalid_train_configs():
    d = ModelConfig(**TINY).to_dict()
    assert ModelConfig.from_dict({**d, "tie_embeddings": False}) == ModelConfig(**TINY)
    with pytest.raises(ConfigError, match="unknown keys"):
        ModelConfig.from_dict({**d, "wat": 1})
    with pytest.raises(ConfigError, match="crop_length"):
        TrainConfig(crop_length=1024, tokens_per_batch=512)
    with pytest.raises(ConfigError, match="mask_prob"):
        TrainConfig(mask_prob=0.0)


def test_coordinate_embedding_stays_float32_under_bf16_autocast():
    """bf16 would round coordinates to ~0.25 A; the embedding must be the float32 one, bit for
    bit."""
    torch.manual_seed(0)
    model = CoordFormer(ModelConfig(**TINY, coord_norm_feature=True))
    tokens = torch.randint(5, 25, (2, 12))
    coords = torch.randn(2, 12, 4, 3) * 30.0
    ref = model.embed(tokens, coords, tokens != 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.embed(tokens, coords, tokens != 0)
    assert got.dtype == torch.float32
    assert torch.equal(got, ref)


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = ModelConfig(d_model=32, n_layers=3, n_heads=4, d_ff=64, dropout=0.0)
    torch.manual_seed(0)
    plain = CoordFormer(cfg).train()
    ckpt = CoordFormer(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.gradient_checkpointing = True
    tokens = torch.randint(4, 24, (2, 12))
    coords = torch.randn(2, 12, 4, 3) * 8
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    for m in (plain, ckpt):
        m(tokens, coords, mask).logits.square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-5), name
    # checkpointing is a training-time device only: eval and attention maps take the plain path
    ckpt.eval()
    with torch.no_grad():
        assert torch.equal(
            ckpt(tokens, coords, mask).logits, plain.eval()(tokens, coords, mask).logits
        )


def test_misused_inputs_are_clear_errors():
    """repr_layers outside 0..n_layers were silently ignored (ESM users write -1 for the last), and
    an empty chain list failed inside max()."""
    from coordformer.data.batching import chains_to_batch
    from coordformer.errors import OptionError, UsageError

    model = CoordFormer(preset("tiny-0.1m")).eval()
    tokens = torch.randint(4, 24, (1, 12))
    n = model.config.n_layers
    assert set(model(tokens, repr_layers=(0, n)).representations) == {0, n}
    for bad in ((n + 1,), (-1,)):
        with pytest.raises(OptionError, match=f"layers are 0 \\(the embeddings\\) to {n}"):
            model(tokens, repr_layers=bad)
    with pytest.raises(UsageError, match="no chains"):
        chains_to_batch([])


def test_canonical_frame_is_the_same_for_any_rigid_motion_even_for_a_symmetric_dimer():
    """canonical_frame gives the same coordinates whatever rotation and translation the input came
    with: for a chain, for an exactly C2-symmetric homodimer (where principal axes and third
    moments are ambiguous: they changed a complex's embeddings by up to 3.4), with missing CAs and
    padding, and for CA-only input. Distances are kept; a row with under three CAs stays usable."""
    from conftest import DATA
    from coordformer.geometry import canonical_frame, random_rotation
    from coordformer.io import read_structure

    a = torch.from_numpy(read_structure(DATA / "1orc.pdb")[0].coords).double()
    a = a - a[:, 1].mean(0)
    flip = torch.tensor([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]], dtype=torch.float64)
    shift = torch.tensor([12.0, 0.0, 0.0], dtype=torch.float64)
    dimer = torch.cat([a + shift, (a + shift) @ flip.T])  # B is A turned 180 degrees about z
    rows = torch.full((3, len(dimer), 4, 3), float("nan"), dtype=torch.float64)
    rows[0, : len(a)] = a
    rows[1] = dimer
    rows[2, :2] = a[:2]  # two residues: no frame to fix, must not break
    rows[0, 7, 1] = float("nan")  # a missing CA
    ref = canonical_frame(rows)
    for seed in range(3):
        r = random_rotation(1, torch.Generator().manual_seed(seed), dtype=torch.float64)[0]
        moved = rows @ r.T + torch.tensor([5.0, -30.0, 8.0], dtype=torch.float64)
        got = canonical_frame(moved)
        assert torch.allclose(got[:2].nan_to_num(), ref[:2].nan_to_num(), atol=1e-6)
        ca_only = canonical_frame(moved[:, :, 1:2])
        assert torch.allclose(ca_only[:2].nan_to_num(), ref[:2, :, 1:2].nan_to_num(), atol=1e-6)
    assert torch.isnan(ref[0, 7, 1]).all() and torch.isnan(ref[0, len(a) :]).all()
    d = torch.cdist(rows[1, :, 1], rows[1, :, 1])
    assert torch.allclose(torch.cdist(ref[1, :, 1], ref[1, :, 1]), d, atol=1e-6)
    assert torch.isfinite(ref[2, :2]).all()
    assert canonical_frame(rows.float()).dtype == torch.float32


def test_positions_outside_the_table_are_refused_with_their_range():
    """A negative position indexed the table from its end (the last row) with no error when
    checked, and the message named the maximum only."""
    from coordformer.config import preset
    from coordformer.errors import UsageError

    m = CoordFormer(preset("tiny-0.1m").replace(max_len=64)).eval()
    tokens = torch.randint(5, 25, (1, 10))
    with pytest.raises(UsageError, match=r"got -1\.\.8: positions count from 0"):
        m(tokens, None, positions=torch.arange(10)[None] - 1)
    with pytest.raises(UsageError, match=r"got 0\.\.81: use a smaller `chain_gap` or crop"):
        m(tokens, None, positions=torch.arange(10)[None] * 9)
