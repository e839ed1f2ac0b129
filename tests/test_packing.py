"""Sequence packing (issue 18): several chains per row, attention within each chain, each chain
centred on its own CAs, so packed and padded batches give the same per-chain logits and loss."""

import json

import numpy as np
import pytest
import torch

from conftest import pretrain_args
from coordformer.batch import Batch
from coordformer.config import preset
from coordformer.data.batching import BatchSettings, MaskedBatches, pack_batch, pack_rows
from coordformer.model.core import CoordFormer
from coordformer.train.mlm import masked_lm_loss
from test_model import _FakeDataset


def _padded_and_packed(seed=3, crop=150, tokens=2048):
    ds = _FakeDataset(n=60, seed=1)
    settings = BatchSettings(tokens_per_batch=tokens, crop_length=crop)
    b = MaskedBatches(ds, np.arange(60), settings, seed=seed)[0]
    return b, pack_batch(b)


def _per_chain(padded: Batch, packed_logits: torch.Tensor) -> list[torch.Tensor]:
    """Packed logits cut back into the padded batch's chains, in its row order."""
    lengths = padded.lengths.tolist()
    rows = pack_rows(lengths, max(lengths))
    out: dict[int, torch.Tensor] = {}
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            out[i] = packed_logits[r, at : at + lengths[i]]
            at += lengths[i]
    return [out[i] for i in range(len(lengths))]


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_packed_rows_give_the_padded_logits_and_loss(recipe):
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe=recipe)).eval()
    padded, packed = _padded_and_packed()
    assert packed.tokens.shape[0] < padded.tokens.shape[0]  # fewer rows
    assert (~packed.padding_mask).float().mean() < (~padded.padding_mask).float().mean()
    with torch.no_grad():
        a = model(**padded.inputs()).logits
        c = model(**packed.inputs()).logits
    for i, chunk in enumerate(_per_chain(padded, c)):
        n = int(padded.lengths[i])
        torch.testing.assert_close(chunk, a[i, :n], rtol=1e-5, atol=1e-5)
    la, _, na = masked_lm_loss(a, padded.targets)
    lc, _, nc = masked_lm_loss(c, packed.targets)
    assert na == nc and torch.allclose(la, lc, rtol=1e-5, atol=1e-6)


def test_no_chain_sees_another_and_each_is_centred_alone():
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe="fast")).eval()
    _, packed = _padded_and_packed()
    r = int(torch.argmax(packed.segments.max(1).values))  # a row with several chains
    seg = packed.segments[r]
    first, other = seg == 0, seg == 1
    assert first.any() and other.any()
    tokens = packed.tokens.clone()
    tokens[r, first] = torch.randint(5, 25, (int(first.sum()),))  # another sequence for chain 0
    coords = packed.coords.clone()
    coords[r, first] += 100.0  # and another place: the others are centred on their own CAs
    with torch.no_grad():
        before = model(**packed.inputs()).logits[r, other]
        after = model(**packed.replace(tokens=tokens, coords=coords).inputs()).logits[r, other]
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    # positions restart at 0 in every chain of the row
    assert packed.positions[r, other][0] == 0


def test_pack_rows_places_every_item_once_within_the_row_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=200).tolist()
    rows = pack_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert rows == pack_rows(lengths, 128)  # deterministic
    assert len(rows) < 200 and len(rows) >= sum(lengths) / 128
    with pytest.raises(ValueError, match="more than a row of 50"):
        pack_rows([60], 50)


@pytest.mark.slow
def test_pretrain_with_packing_trains_the_same_weights(prepared, tmp_path):
    """The same chains and masks per step, fewer padded positions: --pack changes the layout, not
    the training (weights after a few steps agree to float tolerance)."""
    from coordformer.cli import main

    weights = {}
    for name, flag in (("padded", "--no-pack"), ("packed", "--pack")):
        out = tmp_path / name
        args = pretrain_args(
            prepared.path,
            out,
            flag,
            max_steps=4,
            val_every=4,
            tokens_per_batch=2048,
            seed=0,
            accelerator="cpu",
            threads=1,
            workers=0,
            quiet=True,
        )
        assert main(args) == 0
        state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        weights[name] = state
        assert json.loads((out / "config.json").read_text())["train_config"]["pack_sequences"] == (
            name == "packed"
        )
    for k, v in weights["padded"].items():
        if v.is_floating_point():
            torch.testing.assert_close(weights["packed"][k], v, rtol=1e-4, atol=1e-5)


def test_flop_count_of_packed_rows_is_per_chain():
    """The attention term of the FLOP count is per chain: packed rows count what padded rows do."""
    from coordformer.train.mlm import _chain_lengths

    padded, packed = _padded_and_packed()
    assert sorted(_chain_lengths(packed)) == sorted(padded.lengths.tolist())


def test_indexed_batches_locate_their_chains_without_padding():
    """``Batch.indexed`` lists the real residues row-major and where each chain starts among them,
    for padded rows and for packed ones (segment by segment); ``replace`` drops them as stale."""
    padded, packed = _padded_and_packed()
    for b in (padded, packed.indexed()):
        v = b.varlen()
        assert v.token_index.tolist() == torch.nonzero(b.padding_mask.reshape(-1))[:, 0].tolist()
        assert v.cu_seqlens.dtype == torch.int32 and v.cu_seqlens[0] == 0
        assert torch.diff(v.cu_seqlens).tolist() == list(b.chain_lengths)
        assert v.cu_seqlens[-1] == b.padding_mask.sum() and v.max_seqlen == max(b.chain_lengths)
    row0 = int(padded.lengths[0])
    assert padded.cu_seqlens[1] == row0  # a padded batch: one chain per row
    assert padded.replace(tokens=padded.tokens).varlen() is None


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_varlen_layers_give_the_padded_logits_loss_and_gradients(layout):
    """Without its padding (``varlen``) a batch gives the same logits at every real residue, the
    same loss and the same gradients as the padded forward; padding positions come back as zeros
    (on the CPU the chains go through SDPA one by one)."""
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe="fast")).train()  # dropout 0: training mode
    padded, packed = _padded_and_packed()
    b = padded if layout == "padded" else packed.indexed()
    results = []
    for varlen in (None, b.varlen()):
        model.zero_grad()
        out = model(**b.inputs(), varlen=varlen, repr_layers=(1,))
        loss, _, n = masked_lm_loss(out.logits, b.targets)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((out, loss, grads))
    (ref, ref_loss, ref_grads), (var, var_loss, var_grads) = results
    real = b.padding_mask
    torch.testing.assert_close(var.logits[real], ref.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.representations[1][real], ref.representations[1][real])
    assert (var.hidden[~real] == 0).all()
    torch.testing.assert_close(var_loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert var_grads.keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        torch.testing.assert_close(var_grads[k], g, rtol=1e-4, atol=1e-6, msg=k)
    # the LM head on the targets only, as training runs it
    idx = b.target_index
    at = model(**b.inputs(), varlen=b.varlen(), logits_at=idx).logits
    torch.testing.assert_close(at, ref.logits.flatten(0, 1)[idx], rtol=1e-5, atol=1e-5)


def test_varlen_refuses_attention_maps_and_attention_dropout(prepared, tmp_path):
    from coordformer.config import TrainConfig
    from coordformer.errors import OptionError
    from coordformer.train.run import pretrain

    padded, _ = _padded_and_packed()
    model = CoordFormer(preset("tiny-0.1m")).eval()
    with pytest.raises(OptionError, match="attention maps need the padded path"):
        model(**padded.inputs(), varlen=padded.varlen(), need_attention=True)
    mc = preset("tiny-0.1m", dropout=0.1)
    tc = TrainConfig(varlen_attention=True, max_steps=1, tokens_per_batch=1024, crop_length=64)
    with pytest.raises(OptionError, match="has no dropout; the model has dropout 0.1"):
        pretrain(prepared.path, tmp_path / "run", mc, tc, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_pretrain_with_varlen_trains_the_same_weights(prepared, tmp_path, monkeypatch):
    """--varlen changes where the layers run, not the training: the weights after a few steps
    agree with padded rows' to float tolerance, and the run's config records the switch."""
    import coordformer.model.core as core
    from coordformer.cli import main

    calls = []
    real = core.varlen_attention
    monkeypatch.setattr(core, "varlen_attention", lambda *a: calls.append(1) or real(*a))
    weights = {}
    for name, flag in (("padded", "--no-varlen"), ("varlen", "--varlen")):
        out = tmp_path / name
        args = pretrain_args(prepared.path, out, flag, max_steps=4, val_every=4,
                             tokens_per_batch=2048, seed=0, accelerator="cpu", threads=1,
                             workers=0, quiet=True)  # fmt: skip
        assert main(args) == 0
        assert bool(calls) == (name == "varlen")  # only the --varlen run takes that path
        weights[name] = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]
        cfg = json.loads((out / "config.json").read_text())["train_config"]
        assert cfg["varlen_attention"] == (name == "varlen")
    assert len(calls) >= 4 * 2  # every training step, every layer of tiny-0.1m
    for k, v in weights["padded"].items():
        if v.is_floating_point():
            torch.testing.assert_close(weights["varlen"][k], v, rtol=1e-4, atol=1e-5)


def test_static_rows_give_one_shape_and_the_padded_results():
    """Under --cuda-graphs the layers see one shape every step: the real residues padded to the
    token budget with zero rows that form chains of their own, and a fixed number of chain starts
    (zero-length chains at the end). The logits, loss and gradients stay the padded forward's."""
    from coordformer.model.core import StaticRows
    from coordformer.train.mlm import target_loss

    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe="fast")).train()
    padded, _ = _padded_and_packed(tokens=2048, crop=150)
    rows = StaticRows.for_budget(2048, 150, shortest=10)
    v = padded.varlen()
    fixed = rows.pad(v, fill_row=padded.tokens.numel())
    assert fixed.token_index.shape == (2048,) and fixed.cu_seqlens.shape == (rows.chains + 1,)
    assert fixed.max_seqlen == 150 and fixed.cu_seqlens[-1] == 2048
    starts = fixed.cu_seqlens
    assert (torch.diff(starts) >= 0).all() and (torch.diff(starts) <= 150).all()
    assert torch.equal(starts[: len(v.cu_seqlens)], v.cu_seqlens)
    # the same shape for another batch of other lengths
    other = _padded_and_packed(seed=9, tokens=2048, crop=150)[0]
    again = rows.pad(other.varlen(), fill_row=other.tokens.numel())
    assert again.token_index.shape == fixed.token_index.shape
    assert again.cu_seqlens.shape == fixed.cu_seqlens.shape

    results = []
    for static in (None, rows):
        model.static_rows = static
        model.zero_grad()
        out = model(**padded.inputs(), varlen=v, logits_at=padded.target_index)
        loss, _, _ = target_loss(out.logits, padded.targets.flatten()[padded.target_index])
        loss.backward()
        results.append((out.logits, loss, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (a, la, ga), (b, lb, gb) = results
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lb, la)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-6, msg=k)


def test_static_rows_from_the_data_hold_every_training_batch(prepared):
    """pretrain sizes StaticRows from the train split's shortest (cropped) chain: every batch of
    every epoch fits it, so none falls back to its own shape (a recompile and a new graph), and it
    holds fewer chain slots than a fixed guess of 8 residues a chain (each slot costs the flash
    kernel scratch and thread blocks)."""
    from coordformer.model.core import StaticRows
    from coordformer.train.run import _shortest_train_chain

    tokens, crop = 1024, 48
    idx = prepared.split_indices("train")
    shortest = _shortest_train_chain(prepared, crop)
    assert shortest == min(int(n) for n in np.minimum(prepared.lengths[idx], crop)) >= 10
    rows = StaticRows.for_budget(tokens, crop, shortest)
    assert rows.chains < StaticRows(tokens, crop, tokens // 8 + -(-tokens // crop) + 1).chains
    batches = MaskedBatches(prepared, idx, BatchSettings(tokens_per_batch=tokens, crop_length=crop),
                            seed=0, epochs=3)  # fmt: skip
    most = 0
    for k in range(len(batches)):
        b = batches[k]
        v = b.varlen()
        most = max(most, len(v.cu_seqlens) - 1)
        assert rows.pad(v, fill_row=b.tokens.numel()) is not None, len(v.cu_seqlens)
    assert most > 1  # batches of several chains were checked


def test_a_batch_that_does_not_fit_the_static_rows_runs_as_it_is():
    from coordformer.model.core import StaticRows

    padded, _ = _padded_and_packed(tokens=2048, crop=150)
    v = padded.varlen()
    n = len(v.token_index)
    assert StaticRows(n - 1, 150, 1000).pad(v, 0) is None  # more residues than the budget
    assert StaticRows(2048, v.max_seqlen - 1, 1000).pad(v, 0) is None  # a longer chain
    assert StaticRows(2048, 150, len(padded)).pad(v, 0) is None  # no room for the filler's chains
    exact = StaticRows(n, 150, len(padded)).pad(v, 0)  # nothing to fill
    assert torch.equal(exact.token_index, v.token_index) and torch.equal(
        exact.cu_seqlens, v.cu_seqlens
    )


def test_cuda_graphs_refuse_activation_checkpointing(prepared, tmp_path):
    from coordformer.config import TrainConfig
    from coordformer.errors import OptionError
    from coordformer.train.run import pretrain

    tc = TrainConfig(cuda_graphs=True, activation_checkpointing=True, max_steps=1,
                     tokens_per_batch=1024, crop_length=64)  # fmt: skip
    with pytest.raises(OptionError, match="do not take activation checkpointing"):
        pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)
    tc = TrainConfig(cuda_graphs=True, compile=True, max_steps=1,
                     tokens_per_batch=1024, crop_length=64)  # fmt: skip
    with pytest.raises(OptionError, match="compiles each layer itself"):
        pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)
    tc = TrainConfig(cuda_graphs=True, accumulate_grad_batches=2, max_steps=1,
                     tokens_per_batch=1024, crop_length=64)  # fmt: skip
    with pytest.raises(OptionError, match="do not take gradient accumulation"):
        pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)


@pytest.mark.parametrize(
    "flag,precision",
    [("varlen_attention", "32-true"), ("cuda_graphs", "32-true"), ("varlen_attention", 32)],
)
def test_varlen_on_a_gpu_refuses_float32(prepared, tmp_path, monkeypatch, flag, precision):
    """In float32 the variable-length attention falls back to its chain-by-chain reference,
    which syncs with the host in every layer: on a GPU that is refused before any model loads."""
    from coordformer.config import TrainConfig
    from coordformer.errors import OptionError
    from coordformer.train import run as run_mod

    monkeypatch.setattr(run_mod, "_uses_cuda", lambda accelerator: True)
    tc = TrainConfig(max_steps=1, tokens_per_batch=1024, crop_length=64, precision=precision,
                     **{flag: True})  # fmt: skip
    with pytest.raises(OptionError, match=f"takes bf16 or fp16, not precision '{precision}'"):
        run_mod.pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m", dropout=0.0), tc,
                         progress=False)  # fmt: skip
    assert not (tmp_path / "run").exists()  # refused before anything is written


@pytest.mark.slow
def test_pretrain_with_cuda_graphs_compiles_each_layer_and_trains_the_same_weights(
    prepared, tmp_path, monkeypatch, capsys
):
    """On the CPU --cuda-graphs compiles each layer (no graphs there) and feeds it one shape:
    nothing recompiles over steps whose batches differ in size (without the static rows they do),
    and the weights agree with the padded eager run's."""
    import torch._dynamo

    from coordformer.cli import main
    from coordformer.model.core import StaticRows

    def run(name, flag):
        out = tmp_path / name
        args = pretrain_args(prepared.path, out, flag, max_steps=3, val_every=3,
                             tokens_per_batch=2048, crop_length=512, seed=0, accelerator="cpu",
                             threads=1, workers=0, quiet=True)  # fmt: skip
        torch._dynamo.reset()
        with torch._dynamo.config.patch(error_on_recompile=True):
            rc = main(args)
        return rc, out

    weights = {}
    for name, flag in (("padded", "--no-cuda-graphs"), ("graphs", "--cuda-graphs")):
        rc, out = run(name, flag)
        assert rc == 0
        weights[name] = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]
        cfg = json.loads((out / "config.json").read_text())["train_config"]
        assert cfg["cuda_graphs"] == (name == "graphs")
    assert not any("_orig_mod" in k for k in weights["graphs"])  # compiled in place: plain keys
    for k, v in weights["padded"].items():
        if v.is_floating_point():
            torch.testing.assert_close(weights["graphs"][k], v, rtol=1e-3, atol=1e-5)
    # the same run with batches left at their own sizes recompiles: the check above has teeth
    monkeypatch.setattr(StaticRows, "pad", lambda self, varlen, fill_row: None)
    capsys.readouterr()
    assert run("unpadded", "--cuda-graphs")[0] != 0
    assert "RecompileError" in capsys.readouterr().err  # failed for that reason, not another
