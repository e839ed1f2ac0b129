"""The optional transformers wrapper: an exported folder loads through the Auto classes and gives
the native model's outputs; a folder saved by transformers loads back into coordformer."""

import itertools

import pytest
import torch

pytest.importorskip(
    "transformers"
)  # an optional extra ("coordformer[hf]"); `make test` installs it

from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM  # noqa: E402

import coordformer.model.hf_model as hf  # noqa: E402  (registers the model type)
from coordformer.config import ConfigError  # noqa: E402
from coordformer.data.batching import chains_to_batch  # noqa: E402
from coordformer.demo import bundled_chains  # noqa: E402
from coordformer.io import iter_chain_set  # noqa: E402
from coordformer.model import CoordFormer  # noqa: E402
from coordformer.model.checkpoints import load_model  # noqa: E402
from coordformer.model.hub import save_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def native():
    return load_model("small-coords")[0]


@pytest.fixture(scope="module")
def folder(native, tmp_path_factory):
    return save_pretrained(
        native, tmp_path_factory.mktemp("hf") / "small-coords", meta={"name": "small-coords"}
    )


@pytest.fixture(scope="module")
def batch():
    """Three real chains of different lengths, padded: tokens, coords [3, L, 4, 3], mask [3, L]."""
    chains = [
        c for c in itertools.islice(iter_chain_set(bundled_chains()), 10) if hasattr(c, "sequence")
    ][:3]
    return chains_to_batch(chains)


@torch.no_grad()
def test_auto_classes_load_the_exported_folder_with_native_outputs(native, folder, batch):
    tokens, coords, mask = batch
    assert mask.sum(1).unique().numel() > 1  # padding is exercised
    ref = native(tokens, coords, mask, need_attention=True, repr_layers=(0, 1, 2, 3, 4))
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    assert isinstance(mlm, hf.CoordFormerForMaskedLM) and mlm.coordformer.config == native.config
    # the non-persistent position table is rebuilt, not left as from_pretrained's empty buffer
    assert torch.equal(mlm.coordformer.positions, native.positions)
    out = mlm(
        input_ids=tokens,
        coords=coords,
        attention_mask=mask.long(),
        output_hidden_states=True,
        output_attentions=True,
    )
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert len(out.hidden_states) == 5 and torch.allclose(
        out.hidden_states[2], ref.representations[2], atol=1e-5
    )
    assert len(out.attentions) == 4 and out.attentions[0].shape == ref.attentions[0].shape
    enc = AutoModel.from_pretrained(folder)
    assert isinstance(enc, hf.CoordFormerModel)
    assert torch.allclose(enc(tokens, coords, mask).last_hidden_state, ref.hidden, atol=1e-5)


@torch.no_grad()
def test_masked_lm_loss_ignores_minus_100(folder, batch):
    tokens, coords, mask = batch
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    labels = torch.full_like(tokens, -100)
    labels[:, 3:9] = tokens[:, 3:9]
    out = mlm(tokens, coords, mask, labels=labels)
    picked = out.logits[:, 3:9].reshape(-1, out.logits.shape[-1])
    assert torch.allclose(
        out.loss, torch.nn.functional.cross_entropy(picked, tokens[:, 3:9].reshape(-1)), atol=1e-6
    )


@torch.no_grad()
def test_folder_saved_by_transformers_loads_back_into_coordformer(native, folder, batch, tmp_path):
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    mlm.save_pretrained(tmp_path / "resaved")
    assert AutoConfig.from_pretrained(tmp_path / "resaved").model_type == "coordformer"
    back = CoordFormer.from_pretrained(
        tmp_path / "resaved"
    )  # "coordformer." prefix and HF config keys handled
    assert back.config == native.config
    assert torch.equal(back(*batch).logits, native(*batch).logits)
    # saved in shards (model-0000k-of-0000n.safetensors + model.safetensors.index.json)
    mlm.save_pretrained(tmp_path / "shards", max_shard_size="5MB")
    assert not (tmp_path / "shards" / "model.safetensors").exists()
    assert len(list((tmp_path / "shards").glob("model-*-of-*.safetensors"))) > 1
    back = CoordFormer.from_pretrained(tmp_path / "shards")
    assert torch.equal(back(*batch).logits, native(*batch).logits)
    assert torch.equal(
        load_model(str(tmp_path / "shards"))[0](*batch).logits, native(*batch).logits
    )


def test_config_values_are_validated():
    with pytest.raises(ConfigError, match="divisible"):
        hf.CoordFormerConfig(d_model=100, n_heads=8)
    cfg = hf.CoordFormerConfig(d_model=64, n_layers=2, n_heads=4, d_ff=128)
    assert cfg.to_model_config().d_head == 16
    model = hf.CoordFormerForMaskedLM(cfg)  # fresh weights, as coordformer initialises them
    assert model.coordformer.num_parameters() == CoordFormer(cfg.to_model_config()).num_parameters()


def test_activation_checkpointing_enable_reaches_the_model(folder, batch):
    tokens, coords, mask = batch
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    enable = (
        getattr(mlm, "activation_checkpointing_enable", None) or mlm.gradient_checkpointing_enable
    )  # renamed in 5.x
    enable()
    assert mlm.coordformer.gradient_checkpointing
    mlm.train()
    mlm(tokens, coords, mask).logits.square().mean().backward()
    assert all(p.grad is not None for p in mlm.coordformer.layers.parameters())


@torch.no_grad()
def test_models_with_gaussian_initialised_heads_load_through_the_auto_classes(batch, tmp_path):
    """transformers builds the model on the meta device, where the Gaussian-head initialisation
    (the default `fast` recipe's, and paper-coords') read a LayerNorm scale with .item() and
    failed; the checkpoint's weights replace it anyway."""
    from coordformer.config import preset

    torch.manual_seed(0)
    native = CoordFormer(preset("tiny-0.1m", recipe="fast")).eval()
    assert native.config.gaussian_init_heads > 0
    folder = save_pretrained(native, tmp_path / "gauss", meta={"name": "gauss"})
    tokens, coords, mask = batch
    ref = native(tokens, coords, mask)
    mlm = AutoModelForMaskedLM.from_pretrained(folder)
    assert torch.allclose(
        mlm(input_ids=tokens, coords=coords, attention_mask=mask.long()).logits,
        ref.logits,
        atol=1e-5,
    )
    enc = AutoModel.from_pretrained(folder)
    assert torch.allclose(enc(tokens, coords, mask).last_hidden_state, ref.hidden, atol=1e-5)
