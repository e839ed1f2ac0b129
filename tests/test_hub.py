"""Hugging Face-style folders (config.json + model.safetensors): parity with the native model,
loading through load_model and the CLI, shared weights, and the refusals."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coordformer.cli import main
from coordformer.config import ModelConfig
from coordformer.data.batching import chains_to_batch
from coordformer.demo import bundled_chains
from coordformer.errors import UsageError
from coordformer.io import iter_chain_set
from coordformer.model import CoordFormer
from coordformer.model.checkpoints import load_model, resolve_checkpoint
from coordformer.model.hub import save_pretrained

#: Max |logit difference| allowed for float16 weights. Measured: 0.0075 on small-coords with its
#: weights brought to float32 precision (logits up to ~30 on these chains), so ~7x margin.
HALF_LOGIT_ATOL = 0.05


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def native():
    return load_model("small-coords")[0]


@pytest.fixture(scope="module")
def batch():
    """Four real chains from the bundled held-out set, padded: tokens [4, L], coords
    [4, L, 4, 3]."""
    chains = [
        c for c in itertools.islice(iter_chain_set(bundled_chains()), 10) if hasattr(c, "sequence")
    ][:4]
    assert len(chains) == 4
    tokens, coords, _ = chains_to_batch(chains)
    return tokens, coords


@pytest.fixture(scope="module")
def hf_folder(native, tmp_path_factory):
    return save_pretrained(
        native, tmp_path_factory.mktemp("hf") / "small-coords", meta={"name": "small-coords"}
    )


@torch.no_grad()
def test_float32_folder_gives_identical_logits(native, batch, hf_folder):
    loaded = CoordFormer.from_pretrained(hf_folder)
    assert loaded.config == native.config and not loaded.training
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(native.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(native(*batch).logits, loaded(*batch).logits)


@torch.no_grad()
def test_half_folder_agrees_within_tolerance(native, batch, tmp_path):
    folder = native.save_pretrained(tmp_path / "half", half=True)
    assert {v.dtype for v in load_file(folder / "model.safetensors").values()} == {torch.float16}
    # config.json names the compute dtype, which transformers builds the model in
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "float32"
    assert load_model(folder)[1]["weights_dtype"] == "float16"
    diff = (
        (native(*batch).logits - CoordFormer.from_pretrained(folder)(*batch).logits)
        .abs()
        .max()
        .item()
    )
    assert diff < HALF_LOGIT_ATOL


@torch.no_grad()
def test_half_of_float32_weights_agrees_within_tolerance(native, batch, tmp_path):
    # small-coords ships float16 weights, so the test above rounds nothing: give its weights bits
    # below float16 precision (relative 1e-4) so that saving in half really rounds them.
    torch.manual_seed(1)
    model = CoordFormer(native.config).eval()
    model.load_state_dict(native.state_dict())
    for p in model.parameters():
        p.add_(torch.randn_like(p) * p.abs() * 1e-4)
    loaded = CoordFormer.from_pretrained(save_pretrained(model, tmp_path / "m", half=True))
    diff = (model(*batch).logits - loaded(*batch).logits).abs().max().item()
    assert 0 < diff < HALF_LOGIT_ATOL


def test_config_json_is_hub_style_and_folder_has_a_card(hf_folder):
    cfg = json.loads((hf_folder / "config.json").read_text())
    assert cfg["model_type"] == "coordformer" and cfg["architectures"] == ["CoordFormer"]
    assert cfg["d_model"] == 256 and cfg["use_coords"] is True and cfg["format_version"] == 1
    assert cfg["coordformer_meta"] == {"name": "small-coords"}
    assert "CoordFormer.from_pretrained" in (hf_folder / "README.md").read_text()
    assert not list(hf_folder.glob(".*.tmp"))


@torch.no_grad()
def test_tied_weights_are_saved_and_stay_tied(batch, tmp_path):
    # safetensors refuses tensors sharing storage; tie the token embedding to the LM head's output
    # layer (both [vocab, d_model]) as a future config might, and check the save still works.
    model = CoordFormer(ModelConfig(d_model=64, n_layers=1, n_heads=4, d_ff=128)).eval()
    model.lm_head[3].weight = model.tokens.weight
    folder = save_pretrained(model, tmp_path / "tied")
    tied = CoordFormer(model.config).eval()
    tied.lm_head[3].weight = tied.tokens.weight
    tied.load_state_dict(load_file(folder / "model.safetensors"))
    assert tied.lm_head[3].weight is tied.tokens.weight
    assert torch.equal(model(*batch).logits, tied(*batch).logits)


def test_folder_loads_through_load_model_and_cli(hf_folder, prepared, tmp_path, capsys):
    model, meta = load_model(hf_folder)
    assert meta["name"] == str(hf_folder) and meta["format"] == "coordformer-hf"
    js = tmp_path / "e.json"
    assert (
        run(
            "evaluate",
            "-c",
            hf_folder,
            "--data",
            prepared.path,
            "--json",
            js,
            "--quiet",
            "--device",
            "cpu",
        )
        == 0
    )
    assert json.loads(js.read_text())["n_masked"] > 0


def test_cli_exports_hf_folder_with_provenance_and_pt_default_unchanged(tmp_path, capsys):
    out = tmp_path / "hf"
    assert run("export", "-c", "small-nocoords", "--out", out, "--format", "hf", "--full") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["use_coords"] is False and cfg["torch_dtype"] == "float32"
    assert cfg["coordformer_meta"]["command"].startswith("coordformer pretrain")
    assert "path" not in cfg["coordformer_meta"]  # the exporting machine's paths stay local
    assert "coordformer pretrain" in (out / "README.md").read_text()
    pt = tmp_path / "m.pt"
    assert run("export", "-c", out, "--out", pt) == 0
    assert torch.load(pt, weights_only=False)["format"] == "coordformer-model"
    assert run("export", "-c", out, "--out", tmp_path / "x", "--format", "onnx") == 2
    assert "onnx" in capsys.readouterr().err


def test_cli_export_max_file_mb_shards_and_the_result_loads(tmp_path, capsys):
    pt = tmp_path / "s.pt"
    assert run("export", "-c", "small-nocoords", "--out", pt, "--max-file-mb", "3") == 0
    assert "shard(s) beside it" in capsys.readouterr().out
    assert (
        all(f.stat().st_size <= 3e6 for f in tmp_path.iterdir())
        and (tmp_path / "s.pt.shard1").exists()
    )
    a, b = load_model("small-nocoords")[0], load_model(pt)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert (
        run(
            "export",
            "-c",
            "small-nocoords",
            "--out",
            tmp_path / "h",
            "--format",
            "hf",
            "--max-file-mb",
            "3",
        )
        == 2
    )
    assert run("export", "-c", "small-nocoords", "--out", pt, "--max-file-mb", "0.5") == 2
    assert "--max-file-mb must be a number above 1" in capsys.readouterr().err
    # a value that is not a number, or too small for the largest tensor: one line, no file
    assert (
        run("export", "-c", "small-nocoords", "--out", tmp_path / "n.pt", "--max-file-mb", "nan")
        == 2
    )
    assert "must be a number above 1 (got nan)" in capsys.readouterr().err
    assert (
        run("export", "-c", "small-nocoords", "--out", tmp_path / "t.pt", "--max-file-mb", "1.0001")
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --max-file-mb 1.0001: below the") and "largest tensor" in err
    assert not (tmp_path / "n.pt").exists() and not (tmp_path / "t.pt").exists()


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_refusals_are_usage_errors(hf_folder, tmp_path):
    with pytest.raises(UsageError, match="not a folder"):
        CoordFormer.from_pretrained(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no config.json or model.safetensors"):
        CoordFormer.from_pretrained(empty)
    no_weights = _copy(hf_folder, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UsageError, match="no model.safetensors"):
        load_model(no_weights)  # reaches from_pretrained's message, not "no checkpoints/best.ckpt"

    def edited(name, **changes):
        d = _copy(hf_folder, tmp_path / name)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))
        return d

    with pytest.raises(UsageError, match="newer than this coordformer"):
        CoordFormer.from_pretrained(edited("newer", format_version=99))
    with pytest.raises(UsageError, match="model_type is 'bert'"):
        CoordFormer.from_pretrained(edited("bert", model_type="bert"))
    with pytest.raises(UsageError, match="unknown keys"):
        CoordFormer.from_pretrained(edited("future_field", rotary=True))
    with pytest.raises(UsageError, match="do not match its config"):
        CoordFormer.from_pretrained(edited("wrong_size", d_model=128))
    truncated = _copy(hf_folder, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="truncated"):
        CoordFormer.from_pretrained(truncated)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        save_pretrained(
            CoordFormer(ModelConfig(d_model=64, n_layers=1, n_heads=4, d_ff=128)), a_file
        )


def test_resolve_checkpoint_returns_the_folder_itself(hf_folder):
    # run folders also carry a config.json; only model_type / model.safetensors mark a Hub folder.
    assert resolve_checkpoint(hf_folder) == hf_folder


def test_exported_weights_get_the_umask_permissions(native, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        folder = save_pretrained(native, tmp_path / "m", half=True)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {
        "config.json": 0o644,
        "model.safetensors": 0o644,
        "README.md": 0o644,
    }  # was 0600 for the weights


def test_cli_export_refuses_a_folder_for_a_file_and_a_file_for_a_folder(tmp_path, capsys):
    earlier_hf = tmp_path / "m-hf"
    assert run("export", "-c", "small-nocoords", "--out", earlier_hf, "--format", "hf") == 0
    capsys.readouterr()
    before = {f.name: f.read_bytes() for f in earlier_hf.iterdir()}
    assert run("export", "-c", "small-nocoords", "--out", earlier_hf) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {earlier_hf} is a folder; give a file name")
    assert err.count("\n") == 1 and "--format hf" in err
    assert {f.name: f.read_bytes() for f in earlier_hf.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-hf"]  # no m-hf.tmp
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"not a model")
    assert run("export", "-c", "small-nocoords", "--out", pt, "--format", "hf") == 2
    assert capsys.readouterr().err == f"error: --out {pt} is a file; give a folder\n"
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "config.json").write_text('{"model_config": {}}')
    assert run("export", "-c", "small-nocoords", "--out", run_folder, "--format", "hf") == 2
    assert "holds other files" in capsys.readouterr().err
    assert (run_folder / "config.json").read_text() == '{"model_config": {}}'


def test_cli_export_replaces_an_earlier_export(tmp_path, capsys):
    # as embed and score replace their output files; prepare's --overwrite guards a dataset
    pt, folder = tmp_path / "m.pt", tmp_path / "hf"
    for half in ("--full", "--half"):
        assert run("export", "-c", "small-nocoords", "--out", pt, half) == 0
        assert run("export", "-c", "small-nocoords", "--out", folder, "--format", "hf", half) == 0
    weights = torch.load(pt, weights_only=False)["state_dict"]
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert {v.dtype for v in load_file(folder / "model.safetensors").values()} == {torch.float16}


def test_a_failed_write_leaves_no_temporary_file(native, tmp_path, monkeypatch):
    import safetensors.torch

    from coordformer.model.checkpoints import export_model

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a fi")
        raise OSError(28, "No space left on device")

    pt = export_model(native, tmp_path / "m.pt")
    folder = save_pretrained(native, tmp_path / "hf")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        export_model(native, pt)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(native, folder)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    monkeypatch.undo()
    assert load_model(pt)[0].config == load_model(folder)[0].config == native.config
    with pytest.raises(UsageError, match="is a folder"):
        export_model(native, folder)


def test_map_location_places_the_model_from_every_kind_of_source(
    native, hf_folder, tmp_path, monkeypatch
):
    """``load_model(..., map_location=dev)`` builds on the CPU and moves the model to ``dev`` for
    shipped names, exported files and checkpoints alike (it used to move only Hub-style folders, so
    `embed` and `score` on a GPU would have fed CUDA batches to a CPU model)."""
    from coordformer.model.checkpoints import export_model

    pt = export_model(native, tmp_path / "m.pt")
    moved = []
    real_to = CoordFormer.to

    def to(self, *args, **kwargs):
        moved.append(str(args[0]) if args else str(kwargs.get("device")))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(CoordFormer, "to", to)
    for source in ("small-coords", pt, hf_folder):
        moved.clear()
        model, _ = load_model(source, map_location="cpu")
        assert moved == ["cpu"], source
        assert not model.training
