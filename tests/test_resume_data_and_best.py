"""pretrain resumes: refused on another dataset unless --allow-new-data, always announced; best.ckpt
takes the final validation into account and the summary says which step it holds (issue 20,
items 3, 7)."""

import csv
import json
import math
import shutil
import types
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from conftest import pretrain_args, synthetic_chains, write_jsonl
from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.model.checkpoints import resolve_checkpoint
from coordformer.train.run import _BestCheckpoint


def run(*args) -> int:
    return main([str(a) for a in args])


def _common(out, steps):
    """Without --data: each call names its own."""
    return pretrain_args(
        None, out, warmup_steps=2, tokens_per_batch=1024, lr="3e-3", quiet=True, max_steps=steps
    )


@pytest.mark.slow
def test_resume_refuses_another_dataset_unless_allowed_and_always_says_where_it_resumes(
    tmp_path, prepared, capsys
):
    other = tmp_path / "other"
    prepare(
        [str(write_jsonl(synthetic_chains(40, seed=7), tmp_path / "other.jsonl"))],
        other,
        PrepareConfig(min_length=10, valid_fraction=0.15, test_fraction=0.15),
        workers=1,
        progress=False,
    )
    assert PreparedDataset(other).fingerprint != prepared.fingerprint
    out = tmp_path / "run"
    assert run(*_common(out, 2), "--data", prepared.path, "--val-every", "100") == 0
    assert "resuming" not in capsys.readouterr().err
    config = (out / "config.json").read_text()
    assert json.loads(config)["data"]["fingerprint"] == prepared.fingerprint

    assert run(*_common(out, 3), "--data", other, "--val-every", "100") == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error:")
        and "\n" not in err
        and "--allow-new-data" in err
        and prepared.fingerprint in err
    )
    assert (out / "config.json").read_text() == config  # nothing touched

    moved = tmp_path / "moved"  # the same data elsewhere is the same dataset
    shutil.copytree(prepared.path, moved)
    assert run(*_common(out, 3), "--data", moved, "--val-every", "100") == 0
    assert (
        capsys.readouterr().err.strip() == f"resuming {out} from step 2"
    )  # with --quiet too, one line

    assert run(*_common(out, 4), "--data", other, "--val-every", "100", "--allow-new-data") == 0
    assert f"resuming {out} from step 3" in capsys.readouterr().err
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["fingerprint"] == PreparedDataset(other).fingerprint and data["path"] == str(
        other.resolve()
    )
    assert [d["path"] for d in data["previous"]] == [str(moved.resolve())]
    assert data["previous"][0]["fingerprint"] == prepared.fingerprint
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["coordformer"]
    assert saved["data_fingerprint"] == data["fingerprint"]
    # best.ckpt of the earlier dataset (chosen on its valid split) is kept aside under its
    # fingerprint; the new best is judged on the new valid split alone (here: the final model)
    ckpts = out / "checkpoints"
    kept = ckpts / f"best_{prepared.fingerprint}_step3.ckpt"
    assert kept.exists() and torch.load(kept, weights_only=False)["global_step"] == 3
    assert torch.load(ckpts / "best.ckpt", weights_only=False)["global_step"] == 4
    assert json.loads((out / "summary.json").read_text())["best_checkpoint"]["step"] == 4
    # a run resumed on other data that has not validated since: evaluate takes last.ckpt, not the
    # other dataset's best; a failed attempt on other data moves nothing
    back = tmp_path / "back"
    shutil.copytree(out, back)
    (back / "checkpoints" / "best.ckpt").unlink()
    shutil.copy(kept, back / "checkpoints" / "best.ckpt")
    assert resolve_checkpoint(back).name == "last.ckpt"
    assert resolve_checkpoint(out).name == "best.ckpt"
    assert (
        run(*_common(out, 5), "--data", other, "--val-every", "100") == 0
    )  # now the run's dataset


def _val_losses(out):
    rows = []
    for log in sorted((out / "logs").glob("version_*/metrics.csv")):
        rows += [float(r["val/loss"]) for r in csv.DictReader(open(log)) if r.get("val/loss")]
    return rows


@pytest.mark.slow
def test_best_checkpoint_takes_the_final_validation_and_the_summary_names_its_step(
    tmp_path, prepared
):
    out = tmp_path / "run"
    # 5 steps, validation every 2: in the loop at 2 and 4, the final one at 5
    assert run(*_common(out, 5), "--data", prepared.path, "--val-every", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    losses = _val_losses(out)  # 2, 4, then the final validation
    assert len(losses) == 3 and losses[-1] == pytest.approx(summary["final_val"]["val/loss"])
    assert losses[-1] < min(losses[:-1]), "test set-up: the model should still improve at step 5"
    best = resolve_checkpoint(out)  # what `evaluate -c RUN` loads
    assert best.name == "best.ckpt" and torch.load(best, weights_only=False)["global_step"] == 5
    assert summary["best_checkpoint"]["step"] == 5
    assert summary["best_checkpoint"]["val_loss"] == pytest.approx(losses[-1])

    # resumed: in the loop at 6, the final one at 7
    assert run(*_common(out, 7), "--data", prepared.path, "--val-every", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    losses = _val_losses(out)  # 2, 4, 5 (final), 6, 7 (final)
    assert len(losses) == 5
    ckpt_step = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)["global_step"]
    assert summary["best_checkpoint"]["step"] == ckpt_step
    assert summary["best_checkpoint"]["val_loss"] == pytest.approx(min(losses))
    assert losses[-1] < min(losses[:-1]), "test set-up: the model should still improve at step 7"
    assert ckpt_step == 7


def test_a_worse_final_validation_leaves_best_ckpt_alone(tmp_path):
    best = _BestCheckpoint(tmp_path)
    # the same key as a plain ModelCheckpoint: runs from before keep their best score on resume
    assert (
        best.state_key
        == ModelCheckpoint(
            dirpath=tmp_path, filename="best", monitor="val/loss", mode="min"
        ).state_key
    )
    best.best_model_score, best.best_model_path, best.best_step = (
        torch.tensor(1.0),
        str(tmp_path / "best.ckpt"),
        4,
    )
    saved = []
    trainer = types.SimpleNamespace(
        global_step=5,
        save_checkpoint=lambda path, *a: saved.append(path),
        is_global_zero=True,
        loggers=[],
    )
    best.consider_final(trainer, 1.5)  # worse: kept
    assert saved == [] and best.best_step == 4
    best.consider_final(trainer, float("nan"))
    assert saved == []
    best.consider_final(trainer, 1.0)  # as good: the final model, the one summary.json describes
    assert (
        saved == [str(tmp_path / "best.ckpt")]
        and best.best_step == 5
        and float(best.best_model_score) == 1.0
    )
    assert best.state_dict()["best_step"] == 5


def test_summary_says_tensorboard_logs_are_off_without_tensorboard(tmp_path, prepared, monkeypatch):
    from coordformer.config import TrainConfig, preset
    from coordformer.train import run as run_module

    tc = TrainConfig(
        max_steps=1, val_every_steps=100, tokens_per_batch=1024, crop_length=64, warmup_steps=1
    )
    monkeypatch.setattr(run_module, "cfg_tensorboard_available", lambda: False)
    summary = run_module.pretrain(
        prepared.path, tmp_path / "off", preset("tiny-0.1m"), tc, progress=False
    )
    assert summary["tensorboard"].startswith("off: the tensorboard package is not installed")
    assert not (tmp_path / "off" / "tensorboard").exists()
    assert (
        json.loads((tmp_path / "off" / "summary.json").read_text())["tensorboard"]
        == summary["tensorboard"]
    )


@pytest.mark.slow
def test_a_run_that_validated_on_its_last_step_does_not_validate_again(
    tmp_path, prepared, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = Path("run")  # relative, as typed: summary.json's paths come out absolute all the same
    # 4 steps, validation every 2: the loop validates at 2 and 4, and 4 is the final model
    assert run(*_common(out, 4), "--data", prepared.path, "--val-every", "2") == 0
    summary = json.loads((out / "summary.json").read_text())
    losses = _val_losses(out)
    assert len(losses) == 2, "the final validation repeated the loop's validation at step 4"
    assert summary["final_val"]["val/loss"] == pytest.approx(losses[-1])
    assert summary["final_val"]["val/perplexity"] == pytest.approx(math.exp(losses[-1]), rel=1e-5)
    assert set(summary["final_val"]) == {"val/loss", "val/acc", "val/perplexity"}
    best = summary["best_checkpoint"]
    assert best["val_loss"] == pytest.approx(min(losses))
    assert best["step"] == (2, 4)[losses.index(min(losses))]
    assert summary["checkpoint"] == str((tmp_path / "run/checkpoints/last.ckpt").resolve())
    assert Path(best["path"]).is_absolute()
    # the same command again, at max_steps: a fresh validation of the same model, same numbers
    assert run(*_common(out, 4), "--data", prepared.path, "--val-every", "2") == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["global_step"] == 4 and len(_val_losses(out)) == 3
    for k, v in summary["final_val"].items():
        assert again["final_val"][k] == pytest.approx(v, rel=1e-6), k


@pytest.mark.slow
def test_resuming_past_max_steps_is_refused_and_touches_nothing(tmp_path, prepared, capsys):
    out = tmp_path / "run"
    assert run(*_common(out, 3), "--data", prepared.path, "--val-every", "100") == 0
    config = (out / "config.json").read_text()
    logs = sorted((out / "logs").iterdir())
    capsys.readouterr()
    assert run(*_common(out, 2), "--data", prepared.path, "--val-every", "100") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --max-steps 2:") and "already at step 3" in err
    assert "\n" not in err
    assert (out / "config.json").read_text() == config
    assert sorted((out / "logs").iterdir()) == logs


def test_an_empty_train_split_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    data = tmp_path / "ds"
    prepare(
        [str(write_jsonl(synthetic_chains(4, seed=3), tmp_path / "few.jsonl"))],
        data,
        PrepareConfig(min_length=100_000),  # every chain is too short: an empty dataset
        workers=1,
        progress=False,
    )
    out = tmp_path / "run"
    assert run(*_common(out, 2), "--data", data) == 2
    err = capsys.readouterr().err.strip()
    assert "the train split is empty" in err and "skipped.tsv" in err and "\n" not in err
    assert not out.exists()


def test_a_truncated_last_checkpoint_is_a_one_line_error_that_says_what_to_do(
    tmp_path, prepared, capsys
):
    """It was a raw 'OSError: [Errno 22] Invalid argument' naming no file, and --no-resume refused
    the folder: no way forward was given."""
    out = tmp_path / "run"
    assert run(*_common(out, 2), "--data", prepared.path, "--val-every", "100") == 0
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    capsys.readouterr()
    assert run(*_common(out, 3), "--data", prepared.path, "--val-every", "100") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "checkpoints/last.ckpt cannot be read" in err and "Delete it" in err
    last.unlink()  # as the message says: the run starts again in the same folder
    assert run(*_common(out, 3), "--data", prepared.path, "--val-every", "100") == 0
