"""The README's Python examples run exactly as written (issue 20, item 10): the native quick start
(a shipped model by name through CoordFormer.from_pretrained) and the transformers example after
`coordformer export --format hf`, offline."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from coordformer.cli import main
from coordformer.errors import UsageError
from coordformer.model import CoordFormer

REPO = Path(__file__).resolve().parents[1]


def _block(marker: str, lang: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", text, re.S)
    assert m, f"README.md has no {lang} block after <!-- {marker} -->"
    return m.group(1)


def _run(code: str) -> tuple[dict, str]:
    ns: dict = {"__name__": "__readme__"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "README.md", "exec"), ns)
    return ns, buf.getvalue()


def test_native_quick_start_runs_as_written(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    ns, printed = _run(_block("python-quick-start", "python"))
    assert re.fullmatch(r"1ORC\.A residue 11 \w: log p = -?\d+\.\d\d, best \w\n", printed), printed
    assert ns["embedding"].shape == (ns["model"].config.d_model,)
    assert ns["log_probs"].shape == (20,) and torch.isfinite(ns["log_probs"]).all()
    # the embedding is what `coordformer embed` writes for the chain
    from coordformer.embed import EmbedConfig, embed

    out = tmp_path / "e.npz"
    embed(
        "small-coords",
        ["tests/data/1orc.pdb"],
        out,
        EmbedConfig(),
        progress=False,
        echo=lambda s: None,
    )
    np.testing.assert_allclose(np.load(out)["mean"][0], ns["embedding"].numpy(), atol=1e-4)


def test_from_pretrained_takes_shipped_names_and_folders(tmp_path):
    model = CoordFormer.from_pretrained("small-coords")
    assert not model.training
    folder = model.save_pretrained(tmp_path / "m")
    again = CoordFormer.from_pretrained(folder)  # folders load as before
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )
    with pytest.raises(UsageError, match="shipped model name: .*small-coords"):
        CoordFormer.from_pretrained("no-such-model")


def test_transformers_example_runs_after_the_export(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    os.symlink(
        REPO / "tests", tmp_path / "tests"
    )  # the example's structure path, from a fresh folder
    monkeypatch.chdir(tmp_path)
    for line in _block("hf-export", "bash").strip().splitlines():
        words = shlex.split(line)
        if words[:2] == ["pip", "install"]:
            assert words[2] == "coordformer[hf]"
            continue
        assert words[0] == "coordformer", line
        assert main(words[1:]) == 0, line
    ns, _ = _run(_block("hf-quick-start", "python"))
    # the default export keeps float16 files; transformers must still build a float32 model, as
    # the folder's native load does, or the outputs differ by ~1e-2
    weights = load_file("small-coords-hf/model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    for name in ("mlm", "enc"):
        assert {p.dtype for p in ns[name].parameters()} == {torch.float32}, name
    native = CoordFormer.from_pretrained("small-coords-hf")
    with torch.no_grad():
        ref = native(ns["tokens"], ns["coords"], padding_mask=ns["mask"])
        logits = ns["mlm"](ns["tokens"], coords=ns["coords"], attention_mask=ns["mask"]).logits
    assert ns["out"].last_hidden_state.dtype == logits.dtype == torch.float32
    torch.testing.assert_close(ns["out"].last_hidden_state, ref.hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
