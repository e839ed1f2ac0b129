"""pretrain resumes: refused on another dataset unless --allow-new-data, always announced (issue 20, item 3)."""

import json
import shutil

import pytest
import torch
from conftest import synthetic_chains, write_jsonl

from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset


def run(*args) -> int:
    return main([str(a) for a in args])


def _common(out, steps):
    return ["pretrain", "--out", out, "--preset", "tiny-0.1m", "--warmup-steps", "2", "--tokens-per-batch", "1024",
            "--lr", "3e-3", "--quiet", "--max-steps", steps]


@pytest.mark.slow
def test_resume_refuses_another_dataset_unless_allowed_and_always_says_where_it_resumes(tmp_path, prepared, capsys):
    other = tmp_path / "other"
    prepare([str(write_jsonl(synthetic_chains(40, seed=7), tmp_path / "other.jsonl"))], other,
            PrepareConfig(min_length=10, valid_fraction=0.15, test_fraction=0.15), workers=1, progress=False)
    assert PreparedDataset(other).fingerprint != prepared.fingerprint
    out = tmp_path / "run"
    assert run(*_common(out, 2), "--data", prepared.path, "--val-every", "100") == 0
    assert "resuming" not in capsys.readouterr().err
    config = (out / "config.json").read_text()
    assert json.loads(config)["data"]["fingerprint"] == prepared.fingerprint

    assert run(*_common(out, 3), "--data", other, "--val-every", "100") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "--allow-new-data" in err and prepared.fingerprint in err
    assert (out / "config.json").read_text() == config  # nothing touched

    moved = tmp_path / "moved"  # the same data elsewhere is the same dataset
    shutil.copytree(prepared.path, moved)
    assert run(*_common(out, 3), "--data", moved, "--val-every", "100") == 0
    assert capsys.readouterr().err.strip() == f"resuming {out} from step 2"  # with --quiet too, one line

    assert run(*_common(out, 4), "--data", other, "--val-every", "100", "--allow-new-data") == 0
    assert f"resuming {out} from step 3" in capsys.readouterr().err
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["fingerprint"] == PreparedDataset(other).fingerprint and data["path"] == str(other.resolve())
    assert [d["path"] for d in data["previous"]] == [str(moved.resolve())]
    assert data["previous"][0]["fingerprint"] == prepared.fingerprint
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["coordformer"]
    assert saved["data_fingerprint"] == data["fingerprint"]
    assert run(*_common(out, 5), "--data", other, "--val-every", "100") == 0  # now the run's dataset


