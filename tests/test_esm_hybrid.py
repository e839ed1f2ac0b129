"""Language-model conditioning (ModelConfig.condition_on, coordformer.model.lm): a tiny randomly
initialised ESM-2 written to tmp_path stands in for a real one (nothing is downloaded)."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from conftest import DATA, pretrain_args  # noqa: E402
from coordformer.config import ConfigError, ModelConfig, TrainConfig  # noqa: E402
from coordformer.constants import VOCAB  # noqa: E402
from coordformer.errors import UsageError  # noqa: E402
from coordformer.model import CoordFormer  # noqa: E402
from coordformer.model.lm import LM_ENV, conditioned_config  # noqa: E402

#: The ESM-2 vocabulary, in its order.
ESM_VOCAB = [
    "<cls>",
    "<pad>",
    "<eos>",
    "<unk>",
    *"LAGVSERTDIPKQNFYMHWCXBUZO.-",
    "<null_1>",
    "<mask>",
]
SMALL = dict(d_model=32, n_layers=2, n_heads=4, d_ff=64)


def tiny_esm(folder: Path, seed: int = 0, max_positions: int = 130) -> Path:
    """Write a random ESM-2 (hidden 16, 2 layers, 2 heads) and its tokenizer to ``folder``. Dropout
    is on (0.1) so that a frozen LM that were left in train mode would show it."""
    from transformers import EsmConfig, EsmModel, EsmTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB) + "\n")
    EsmTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = EsmConfig(
        vocab_size=len(ESM_VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_positions,
        position_embedding_type="rotary",
        token_dropout=True,
        pad_token_id=1,
        mask_token_id=ESM_VOCAB.index("<mask>"),
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        emb_layer_norm_before=False,
    )
    EsmModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture
def esm(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(LM_ENV, raising=False)
    return tiny_esm(tmp_path / "esm")


def _config(esm: Path, **kw) -> ModelConfig:
    return conditioned_config(ModelConfig(**SMALL, **kw), str(esm))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 25, (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 14:] = False
    mask[2, 5:] = False
    tokens[~mask] = 0
    tokens[0, 3] = 1  # <mask>
    tokens[0, 4] = 4  # X
    coords = torch.randn(3, 20, 4, 3, generator=g) * 10
    return tokens, coords, mask


def test_config_records_the_lm_and_defaults_are_unchanged(esm, monkeypatch):
    mc = _config(esm)
    assert (
        mc.condition_on == str(esm)
        and mc.lm_dim == 16
        and mc.lm_fingerprint.startswith("esm-h16-l2-a2-v33-")
    )
    # a plain config, and one written before these fields existed, are what they were
    plain = ModelConfig(**SMALL)
    assert plain.condition_on is None and plain.lm_dim == 0 and not plain.unfreeze_lm
    old = {
        k: v
        for k, v in plain.to_dict().items()
        if k not in ("condition_on", "lm_dim", "lm_fingerprint", "unfreeze_lm")
    }
    assert ModelConfig.from_dict(old) == plain
    assert ModelConfig.from_dict(mc.to_dict()) == mc
    # a relative folder is recorded absolute: the model then loads from any working directory
    monkeypatch.chdir(esm.parent)
    assert conditioned_config(ModelConfig(**SMALL), esm.name).condition_on == str(esm.resolve())
    # a model whose LM is not where it was recorded: the message says how to point at it
    bare = ModelConfig(**SMALL).replace(condition_on="esm2_elsewhere", lm_dim=16)
    with pytest.raises(UsageError, match="set COORDFORMER_LM=FOLDER"):
        CoordFormer(bare)
    with pytest.raises(ConfigError, match="recipe paper"):
        mc.replace(coord_norm_feature=True, gaussian_init_heads=2)
    with pytest.raises(ConfigError, match="need `condition_on`"):
        ModelConfig(unfreeze_lm=True)
    # the unconditioned model has no new parameters
    assert "connector.weight" not in CoordFormer(plain).state_dict()


def test_lm_is_frozen_in_eval_mode_and_left_out_of_the_state(esm):
    model = CoordFormer(_config(esm))
    assert model.tokens is None and model.connector.in_features == 16
    assert all(not p.requires_grad for p in model.lm.parameters())
    model.train()
    assert model.training and not model.lm.model.training  # no dropout in the frozen LM
    state = model.state_dict()
    assert state and not any(k.startswith("lm.") for k in state)
    n_own = sum(v.numel() for v in state.values())
    assert model.num_parameters() == n_own
    # strict loading of the state without the LM works
    other = CoordFormer(_config(esm))
    other.load_state_dict(state)
    tokens, coords, mask = _batch()
    model.eval()
    torch.testing.assert_close(
        model(tokens, coords, mask).logits, other(tokens, coords, mask).logits
    )


def test_residue_alignment_matches_esm_on_each_sequence(esm):
    from transformers import EsmModel, EsmTokenizer

    model = CoordFormer(_config(esm)).eval()
    tokens, _, mask = _batch()
    h = model.lm(tokens, mask)
    ref_model = EsmModel.from_pretrained(esm, add_pooling_layer=False).eval()
    tok = EsmTokenizer.from_pretrained(esm)
    for b in range(tokens.shape[0]):
        n = int(mask[b].sum())
        letters = [VOCAB[int(t)] for t in tokens[b, :n]]
        # the reference, built token by token: <cls> residues <eos>, no padding
        ids = torch.tensor(
            [[tok.cls_token_id, *[tok.convert_tokens_to_ids(t) for t in letters], tok.eos_token_id]]
        )
        if b == 0:
            assert ids[0, 4] == tok.mask_token_id and ids[0, 5] == tok.convert_tokens_to_ids("X")
        with torch.no_grad():
            ref = ref_model(input_ids=ids).last_hidden_state[0, 1 : n + 1]
        torch.testing.assert_close(h[b, :n], ref, atol=1e-5, rtol=1e-4)
        assert torch.all(h[b, n:] == 0)


def test_each_piece_of_a_row_is_read_by_the_lm_as_its_own_sequence(esm):
    """``pieces`` (the chains of a packed row or complex, the fragments of a crop): the LM's
    representation of each piece is the one it gives that piece alone in a row of its own."""
    model = CoordFormer(_config(esm)).eval()
    tokens, _, mask = _batch()
    alone = model.lm(tokens, mask)  # row b: one sequence, checked against ESM above
    # row 0 holds rows 1 and 2 side by side; row 1 holds row 0 cut into 3 pieces after
    # residues 6 and 13 (a spatial crop's fragments); the pieces are numbered as batchers do
    n1, n2 = int(mask[1].sum()), int(mask[2].sum())
    joined = torch.zeros(2, 20, dtype=torch.long)
    joined[0, :n1], joined[0, n1 : n1 + n2] = tokens[1, :n1], tokens[2, :n2]
    joined[1] = tokens[0]
    jmask = torch.zeros(2, 20, dtype=torch.bool)
    jmask[0, : n1 + n2], jmask[1] = True, True
    pieces = torch.full((2, 20), -1)
    pieces[0, :n1], pieces[0, n1 : n1 + n2] = 0, 1
    pieces[1, :7], pieces[1, 7:14], pieces[1, 14:] = 0, 1, 2
    h = model.lm(joined, jmask, pieces)
    assert h.shape == (2, 20, 16) and torch.all(h[0, n1 + n2 :] == 0)
    torch.testing.assert_close(h[0, :n1], alone[1, :n1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h[0, n1 : n1 + n2], alone[2, :n2], atol=1e-5, rtol=1e-4)
    for lo, hi in ((0, 7), (7, 14), (14, 20)):
        piece = model.lm(tokens[:1, lo:hi], mask[:1, lo:hi])[0]
        torch.testing.assert_close(h[1, lo:hi], piece, atol=1e-5, rtol=1e-4)
    # not what reading the row whole gives (the test would pass vacuously otherwise)
    assert not torch.allclose(model.lm(joined, jmask)[0, n1 : n1 + n2], h[0, n1 : n1 + n2])
    # the LM's residue limit holds per piece: 2 x 100 residues in one row of 200 are read
    long = torch.randint(5, 25, (1, 200))
    two = torch.zeros(1, 200, dtype=torch.long)
    two[0, 100:] = 1
    assert model.lm(long, torch.ones(1, 200, dtype=torch.bool), two).shape == (1, 200, 16)
    with pytest.raises(UsageError, match="200 residues"):
        model.lm(long, torch.ones(1, 200, dtype=torch.bool))


def test_packed_and_complex_rows_of_a_conditioned_model(esm, prepared):
    """A packed conditioned batch gives each chain the logits of the padded batch (its LM reads each
    chain alone); a complex's chains are its pieces; a row of padding only reads as zeros."""
    import numpy as np

    from coordformer.data.batching import BatchSettings, collate_chains, pack_batch
    from coordformer.data.complexes import complex_batch

    model = CoordFormer(_config(esm, max_len=512)).eval()
    data = prepared
    idx = np.argsort(data.lengths)[:6]  # short chains: several fit a packed row
    settings = BatchSettings(crop_length=int(data.lengths[idx].max()), tokens_per_batch=10**6)
    padded = collate_chains(data, idx, settings, seed=3, masked=True)
    packed = pack_batch(padded, row_length=3 * int(padded.lengths.max()))
    assert packed.tokens.shape[0] < len(idx) and packed.pieces is None  # really packed
    ref = model(**padded.inputs()).logits
    got = model(**packed.inputs()).logits
    for i in range(len(idx)):  # find chain i in the packed rows by its tokens and targets
        n = int(padded.lengths[i])
        hits = [
            (r, c)
            for r in range(packed.tokens.shape[0])
            for c in range(packed.tokens.shape[1] - n + 1)
            if torch.equal(packed.tokens[r, c : c + n], padded.tokens[i, :n])
            and torch.equal(packed.targets[r, c : c + n], padded.targets[i, :n])
        ]
        r, c = hits[0]
        torch.testing.assert_close(got[r, c : c + n], ref[i, :n], atol=2e-4, rtol=1e-4)
    two = complex_batch(data, [np.asarray(idx[:2])], gap=8)
    assert torch.equal(two.pieces, two.chain)
    empty = torch.zeros(2, 5, dtype=torch.long)
    none = torch.zeros(2, 5, dtype=torch.bool)
    for pieces in (None, torch.full((2, 5), -1)):
        assert torch.all(model.lm(empty, none, pieces) == 0)


def test_long_chains_are_refused_with_the_limit(esm):
    model = CoordFormer(_config(esm)).eval()  # max_position_embeddings 130: 128 residues
    tokens = torch.randint(5, 25, (1, 129))
    with pytest.raises(UsageError, match="128 residues .*`crop_length`") as e:
        model(tokens)
    assert e.value.flag_message().endswith("at most 128 (--crop-length)")  # as the CLI prints it
    assert model(tokens[:, :128]).logits.shape == (1, 128, len(VOCAB))


def test_checkpoint_loading_needs_the_same_lm(esm, tmp_path, monkeypatch):
    from coordformer.model.checkpoints import export_model, load_model

    model = CoordFormer(_config(esm)).eval()
    path = export_model(model, tmp_path / "m.pt", half=False)
    saved = torch.load(path, weights_only=False)
    assert not any(k.startswith("lm.") for k in saved["state_dict"])
    assert path.stat().st_size < 200_000
    loaded, _ = load_model(path)
    tokens, coords, mask = _batch()
    torch.testing.assert_close(
        loaded(tokens, coords, mask).logits, model(tokens, coords, mask).logits
    )
    # the hub folder format too
    folder = model.save_pretrained(tmp_path / "hf")
    torch.testing.assert_close(
        CoordFormer.from_pretrained(folder)(tokens, coords, mask).logits,
        model(tokens, coords, mask).logits,
    )
    # not through the transformers Auto classes (its LM cannot load inside theirs): said so,
    # rather than an error blaming the LM's folder
    pytest.importorskip("transformers")
    from transformers import AutoModelForMaskedLM

    import coordformer.model.hf_model  # noqa: F401  (registers "coordformer")

    with pytest.raises(UsageError, match="does not load through the transformers Auto classes"):
        AutoModelForMaskedLM.from_pretrained(folder)
    card = (folder / "README.md").read_text()  # and its model card does not tell users to
    assert "AutoModelForMaskedLM" not in card and "does not load through the transformers" in card
    # LM moved: refused, then found through $COORDFORMER_LM
    moved = tmp_path / "moved"
    esm.rename(moved)
    with pytest.raises(UsageError, match="no such folder.*COORDFORMER_LM"):
        load_model(path)
    monkeypatch.setenv(LM_ENV, str(moved))
    assert load_model(path)[0].config.lm_fingerprint == model.config.lm_fingerprint
    # another LM of the same size: refused by its fingerprint
    monkeypatch.setenv(LM_ENV, str(tiny_esm(tmp_path / "other", seed=1)))
    with pytest.raises(UsageError, match="not the one this model was trained with"):
        load_model(path)
    # the same embeddings with other transformer layers (a LoRA merge, a fine-tune with the
    # embeddings frozen): the first fingerprint hashed the embeddings alone and let it through
    from transformers import EsmModel

    from coordformer.model.lm import fingerprint

    other = EsmModel.from_pretrained(moved, add_pooling_layer=False)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if ".layer." in name:
                p.add_(0.5 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "layers")
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (moved / f).exists():
            (tmp_path / "layers" / f).write_bytes((moved / f).read_bytes())
    monkeypatch.setenv(LM_ENV, str(tmp_path / "layers"))
    with pytest.raises(UsageError, match="not the one this model was trained with"):
        load_model(path)
    # a model recorded with the first fingerprint is still checked the first way
    original = EsmModel.from_pretrained(moved, add_pooling_layer=False)
    assert fingerprint(other, version=1) == fingerprint(original, version=1)
    monkeypatch.setenv(LM_ENV, str(moved))
    old = CoordFormer(model.config.replace(lm_fingerprint=fingerprint(original, version=1)))
    export_model(old, tmp_path / "v1.pt")
    v1 = fingerprint(original, version=1)
    assert (
        load_model(tmp_path / "v1.pt")[0].config.lm_fingerprint == v1 != model.config.lm_fingerprint
    )
    # version 3 (new records) hashes neither buffers nor the unused contact head: a transformers
    # version that drops or renames the rotary buffer, or a folder saved without the head (given
    # random weights on each load), is the same LM; version-2 records are checked as made
    from coordformer.model.lm import fingerprint_version

    assert fingerprint_version(model.config.lm_fingerprint) == 3
    headless = EsmModel.from_pretrained(moved, add_pooling_layer=False)
    for m in headless.modules():
        for key in list(m._buffers):
            m._non_persistent_buffers_set.add(key)  # as a library that stops saving its buffers
    with torch.no_grad():
        for p in headless.contact_head.parameters():
            p.add_(torch.randn_like(p))
    assert fingerprint(headless) == fingerprint(original)
    assert fingerprint(headless, version=2) != fingerprint(original, version=2)
    v2 = CoordFormer(model.config.replace(lm_fingerprint=fingerprint(original, version=2)))
    export_model(v2, tmp_path / "v2.pt")
    assert load_model(tmp_path / "v2.pt")[0].config.lm_fingerprint.count("-s2-") == 1


def test_a_run_recorded_with_an_older_fingerprint_resumes_and_continues(
    esm, prepared, tmp_path, monkeypatch
):
    """A run whose config records a version-2 LM fingerprint (written before version 3) and its LM
    folder relative resumes with today's config of the same LM (fingerprint version 3, the folder
    absolute), and its weights start another run (init=)."""
    from transformers import EsmModel

    from coordformer.model.lm import fingerprint, fingerprint_version
    from coordformer.train.run import pretrain

    mc = _config(esm)
    lm = EsmModel.from_pretrained(esm, add_pooling_layer=False)
    # recorded as yesterday's code did: a version-2 fingerprint, and the folder as typed (relative)
    monkeypatch.chdir(esm.parent)
    old = mc.replace(lm_fingerprint=fingerprint(lm, version=2), condition_on=esm.name)
    tc = TrainConfig(
        max_steps=2, tokens_per_batch=1024, crop_length=100, val_every_steps=2, accelerator="cpu"
    )
    out = tmp_path / "run"
    pretrain(prepared.path, out, old, tc, progress=False)
    summary = pretrain(prepared.path, out, mc, tc.replace(max_steps=3), progress=False)
    assert summary["global_step"] == 3
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert fingerprint_version(ckpt["coordformer"]["model_config"]["lm_fingerprint"]) == 2
    cont = tc.replace(init=str(out))
    assert pretrain(prepared.path, tmp_path / "cont", mc, cont, progress=False)["global_step"] == 2
    # another LM (of the same size) is still refused
    monkeypatch.setenv(LM_ENV, str(tiny_esm(tmp_path / "other", seed=1)))
    with pytest.raises(UsageError, match="not the one this model was trained with"):
        pretrain(prepared.path, out, mc, tc.replace(max_steps=4), progress=False)


def test_pretrain_reduces_the_loss_keeps_the_lm_and_checkpoints_without_it(esm, prepared, tmp_path):
    from coordformer.model.checkpoints import load_model
    from coordformer.train.run import pretrain

    mc = _config(esm)
    before = {k: v.clone() for k, v in CoordFormer(mc).lm.model.state_dict().items()}
    tc = TrainConfig(
        max_steps=30,
        lr=3e-3,
        warmup_steps=1,
        schedule="constant",
        tokens_per_batch=1024,
        crop_length=100,
        val_every_steps=30,
        checkpoint_every_steps=30,
        accelerator="cpu",
        val_max_chains=8,
        log_every_steps=5,
    )
    out = tmp_path / "run"
    summary = pretrain(prepared.path, out, mc, tc, progress=False)
    assert summary
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["coordformer"]["model_config"]["lm_fingerprint"] == mc.lm_fingerprint
    assert not any(".lm." in k for k in ckpt["state_dict"])
    model, _ = load_model(out)
    # the frozen LM is the one on disk, untouched by training
    for k, v in model.lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # masked-LM loss on the training chains went down against the untrained model (same seed, same
    # init)
    from coordformer.eval.mlm import evaluate_mlm

    torch.manual_seed(0)
    fresh = CoordFormer(mc).eval()
    kw = dict(split="train", crop_length=100, max_chains=20, progress=False)
    loss_before = evaluate_mlm(fresh, prepared, **kw)["loss"]
    loss_after = evaluate_mlm(model, prepared, **kw)["loss"]
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)


def test_lm_gets_no_gradients_and_unfreeze_trains_it(esm):
    tokens, coords, mask = _batch()
    model = CoordFormer(_config(esm)).train()
    model(tokens, coords, mask).logits.sum().backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert model.connector.weight.grad is not None
    free = CoordFormer(conditioned_config(ModelConfig(**SMALL), str(esm), unfreeze=True)).train()
    assert free.lm.model.training
    free(tokens, coords, mask).logits.sum().backward()
    assert free.lm.model.embeddings.word_embeddings.weight.grad is not None
    assert any(k.startswith("lm.model.") for k in free.state_dict())  # trained, so saved


def test_cli_pretrain_evaluate_embed_with_a_conditioned_model(
    esm, prepared, tmp_path, capsys, monkeypatch
):
    from typer.testing import CliRunner

    from coordformer.cli import app

    data = str(prepared.path)
    run = tmp_path / "run"
    common = dict(
        condition_on=esm, tokens_per_batch=1024, crop_length=100, accelerator="cpu", quiet=True
    )
    r = CliRunner().invoke(app, pretrain_args(data, run, max_steps=3, val_every=3, **common))
    assert r.exit_code == 0, r.output
    # resumed (the config, LM fingerprint included, is the same), and continued with --init
    r = CliRunner().invoke(app, pretrain_args(data, run, max_steps=4, val_every=4, **common))
    assert r.exit_code == 0, r.output
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    args = pretrain_args(
        data,
        tmp_path / "cont",
        preset=None,  # --init: the architecture is the checkpoint's
        init=run,
        max_steps=2,
        tokens_per_batch=1024,
        crop_length=100,
        accelerator="cpu",
        val_every=2,
        quiet=True,
    )
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            "-c",
            str(run),
            "--data",
            data,
            "--max-chains",
            "4",
            "--device",
            "cpu",
            "--crop-length",
            "128",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "embed",
            data,
            "-c",
            str(run),
            "--out",
            str(tmp_path / "e.npz"),
            "--window",
            "128",
            "--overlap",
            "32",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    import numpy as np

    with np.load(tmp_path / "e.npz") as z:
        assert any(v.ndim == 2 and v.shape[1] == 64 for v in z.values())
    # complexes: the LM reads each chain of a row as its own sequence (the unit tests check the
    # representations)
    import gemmi

    from coordformer.cli import main

    # 1LCD's protein chain (51 residues; B and C are DNA) and two shifted copies, D and E: each
    # fits the LM's 128 residues, the three read as one sequence would not
    st = gemmi.read_structure(str(DATA / "1LCD.pdb"))
    st.setup_entities()
    for name, shift in (("D", 30.0), ("E", -30.0)):
        b = st[0]["A"].clone()
        b.name = name
        for res in b:
            for atom in res:
                atom.pos = gemmi.Position(atom.pos.x + shift, atom.pos.y, atom.pos.z)
        st[0].add_chain(b)
    st.write_pdb(str(tmp_path / "dimer.pdb"))
    complexes = ["embed", str(tmp_path / "dimer.pdb"), "-c", str(run), "--complexes"]
    assert main([*complexes, "--chain-gap", "1", "--out", str(tmp_path / "x.npz"), "--quiet"]) == 0
    with np.load(tmp_path / "x.npz") as z:
        assert len(z["ids"]) == 3 and z["mean"].shape == (3, 64)
        assert z["lengths"].sum() > 128  # the LM read the chains one by one
        assert np.isfinite(z["mean"]).all()
        first = z["mean"]
    # the model reads no positions, so the gap between chains takes no room in its window
    far = [
        "--chain-gap",
        "500",
        "--window",
        "160",
        "--overlap",
        "32",
        "--out",
        str(tmp_path / "y.npz"),
        "--quiet",
    ]
    assert main([*complexes, *far]) == 0
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_allclose(z["mean"], first, atol=1e-5)
    # a chain beyond the LM's 128 residues (1LZH's are 129) skips its complex, with the reason
    lzh = ["embed", str(DATA / "1lzh.pdb.gz"), "-c", str(run), "--complexes", "--quiet"]
    assert main([*lzh, "--out", str(tmp_path / "z.npz")]) == 2
    assert "none of the 1 complexes fits" in capsys.readouterr().err
    assert (
        "a chain of 129 residues exceeds the 128 residues"
        in (tmp_path / "z.npz.skipped.tsv").read_text()
    )
    # packed rows: the LM reads each chain of a row alone
    packed = pretrain_args(data, tmp_path / "pk", "--pack", max_steps=2, **common)
    assert main(packed) == 0
    assert json.loads((tmp_path / "pk" / "summary.json").read_text())["global_step"] == 2
    # spatial crops: the LM reads each crop's chain (the unit test checks what it reads); packed,
    # they are refused, as the packed rows do not carry the chains
    from coordformer.model.lm import EsmConditioner

    reads = []
    read_context = EsmConditioner.read_context

    def counted(self, context, columns):
        reads.append(torch.is_grad_enabled())  # True: a training step (validation reads too)
        return read_context(self, context, columns)

    monkeypatch.setattr(EsmConditioner, "read_context", counted)
    spatial = pretrain_args(data, tmp_path / "sp", max_steps=2, crop="spatial", **common)
    assert main(spatial) == 0
    assert True in reads  # the training steps read the crops' chains
    too_long = pretrain_args(
        data, tmp_path / "sp3", max_steps=1, crop="spatial", **{**common, "crop_length": 200}
    )
    capsys.readouterr()
    assert main(too_long) == 2
    assert "--crop-length 200: a spatial crop must lie within the 128 residues" in (
        capsys.readouterr().err
    )
    assert json.loads((tmp_path / "sp" / "summary.json").read_text())["global_step"] == 2
    capsys.readouterr()
    packed_spatial = pretrain_args(
        data, tmp_path / "sp2", "--pack", max_steps=1, crop="spatial", **common
    )
    assert main(packed_spatial) == 2
    assert "spatial crops for a model conditioned on a language model are not packed" in (
        capsys.readouterr().err
    )

    # score: per-residue masked marginals and a mutant, through the LM
    r = CliRunner().invoke(
        app,
        [
            "score",
            data,
            "-c",
            str(run),
            "--out",
            str(tmp_path / "s.tsv"),
            "--window",
            "128",
            "--overlap",
            "32",
            "--device",
            "cpu",
            "--quiet",
            "--mode",
            "fast",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "s.tsv").read_text().splitlines()
    assert len(rows) > 10 and all(
        np.isfinite(float(x.split("\t")[rows[0].split("\t").index("logp_wt")])) for x in rows[1:]
    )
    r = CliRunner().invoke(
        app,
        [
            "pretrain",
            "--data",
            data,
            "--out",
            str(tmp_path / "r2"),
            "--condition-on",
            str(esm),
            "--recipe",
            "fast",
            "--max-steps",
            "1",
            "--quiet",
        ],
    )
    assert isinstance(r.exception, ConfigError) and "recipe paper" in str(r.exception)


def test_finetune_and_analyze_attention_accept_a_conditioned_model(esm, prepared, tmp_path):
    from coordformer.cli import main
    from test_finetune import _write_deepfri

    run = tmp_path / "pre"
    args = pretrain_args(
        prepared.path,
        run,
        condition_on=esm,
        max_steps=3,
        val_every=3,
        tokens_per_batch=1024,
        crop_length=100,
        accelerator="cpu",
        quiet=True,
    )
    assert main(args) == 0
    labels = tmp_path / "deepfri"
    _write_deepfri(labels, prepared)
    out = tmp_path / "ft"
    assert (
        main(
            [
                "finetune",
                "-c",
                str(run),
                "--labels",
                str(labels),
                "--data",
                str(prepared.path),
                "--head",
                "linear",
                "--max-epochs",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert (out / "metrics.json").exists()
    ft = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    assert not any(".lm.model." in k for k in ft["state_dict"])
    attn = tmp_path / "attn"
    assert (
        main(
            [
                "analyze-attention",
                "-c",
                str(run),
                "--data",
                str(prepared.path),
                "--split",
                "train",
                "--max-chains",
                "6",
                "--max-distance",
                "20",
                "--out",
                str(attn),
                "--quiet",
            ]
        )
        == 0
    )
    assert (attn / "fits.csv").exists()


def test_a_hub_name_offline_fails_at_once_with_what_to_do(monkeypatch):
    """Offline, a Hub name (or a folder name without ./) made huggingface_hub retry for minutes
    (3.5 measured, 199 warning lines) before an error about a NoneType."""
    from coordformer.model import lm

    # the local cache alone is asked (local_files_only), so nothing waits on the network
    monkeypatch.setattr(lm, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UsageError, match="not in the Hugging Face cache, and the Hub cannot be"):
        lm.load_esm("esm2_t6_no_such_name")
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert lm._hub_reachable() is False


def test_a_spatial_crop_is_read_by_the_language_model_within_its_chain(esm, prepared):
    """With ``lm_window`` a spatial crop carries its chain for the LM: the window of ``lm_window``
    residues around the crop (a longer chain) or the whole chain, clean, with the crop's corrupted
    inputs in their columns; a chain that needs no crop is read as it is, and the model's output
    for it equals the plain path's. The crop lies inside the window, and the stream of draws is
    that of a crop without it (same masks for a chain that fits the window)."""
    import numpy as np

    from coordformer.alphabet import PAD
    from coordformer.data.batching import ASCII_TO_TOKEN, BatchSettings, collate_chains

    lengths = prepared.lengths
    long_ = int(np.flatnonzero(lengths > 90)[0])
    mid = int(np.flatnonzero((lengths > 40) & (lengths <= 60))[0])
    short = int(np.flatnonzero(lengths <= 30)[0])
    common = dict(crop_length=30, tokens_per_batch=4096, crop_mode="spatial")
    idx = np.array([long_, mid, short])
    b = collate_chains(prepared, idx, BatchSettings(**common, lm_window=64), seed=3)
    plain = collate_chains(prepared, idx, BatchSettings(**common), seed=3)
    assert b.lm_context.shape[1] == 64 and b.lm_columns.shape == b.tokens.shape
    for row, ci in enumerate(idx):
        n = int(b.padding_mask[row].sum())
        col = b.lm_columns[row, :n]
        assert (b.lm_columns[row, n:] == -1).all() and (col[1:] > col[:-1]).all()
        # the crop's inputs in their columns (masked residues stay masked for the LM)
        assert torch.equal(b.lm_context[row, col], b.tokens[row, :n])
        # the rest of the context is the chain itself, clean: a window of it
        seq = torch.from_numpy(ASCII_TO_TOKEN[prepared.seq_bytes(int(ci))])
        width = int((b.lm_context[row] != PAD).sum())
        assert width == min(64, len(seq))
        clean = b.lm_context[row, :width].clone()
        clean[col] = b.clean[row, :n]
        assert any(torch.equal(clean, seq[w : w + width]) for w in range(len(seq) - width + 1))
    # a chain within the window keeps the crop and masks it has without lm_window
    for row in (1, 2):
        assert torch.equal(b.tokens[row], plain.tokens[row])
        assert torch.equal(b.targets[row], plain.targets[row])
    # a chain that needs no crop: the context is its own inputs, and the model reads it as before
    n2 = int(b.padding_mask[2].sum())
    assert torch.equal(b.lm_columns[2, :n2], torch.arange(n2))
    model = CoordFormer(_config(esm)).eval()
    with torch.no_grad():
        x = model.embed(b.tokens, b.coords, b.padding_mask, positions=b.positions)
        y = model.embed(
            b.tokens,
            b.coords,
            b.padding_mask,
            positions=b.positions,
            lm_context=b.lm_context,
            lm_columns=b.lm_columns,
        )
    torch.testing.assert_close(y[2, :n2], x[2, :n2], atol=1e-5, rtol=1e-5)
    # a cropped chain is read in its context, not as its fragments
    assert not torch.allclose(y[0], x[0], atol=1e-3)
