"""Progress output: plain periodic lines when the output is not a terminal (no carriage-return
spam in log files), and with --max-minutes a bar of the time budget (issue 20)."""

import sys

import pytest

import coordformer.progress
import coordformer.train.progress
from conftest import DATA, pretrain_args
from coordformer.cli import main
from coordformer.config import PrepareConfig
from coordformer.data.prepare import prepare


def test_prepare_and_embed_print_plain_lines_when_output_is_not_a_terminal(
    tmp_path, synthetic_jsonl, capsys, monkeypatch
):
    monkeypatch.setattr(coordformer.progress, "PLAIN_EVERY_S", 0.0)
    prepare(
        [str(synthetic_jsonl)],
        tmp_path / "ds",
        PrepareConfig(min_length=10),
        workers=1,
        progress=True,
    )
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("prepare: ")]
    assert lines and "(100%)" in lines[-1] and "kept 60" in lines[-1], out
    assert (
        main(["embed", str(tmp_path / "ds"), "-c", "small-coords", "-o", str(tmp_path / "e.h5")])
        == 0
    )
    out = capsys.readouterr().out
    assert "\r" not in out and any(
        line.startswith("embed: 60/60 (100%)") for line in out.splitlines()
    ), out
    # evaluate and score too (they drew rich's last bar frame into logs)
    ds = str(tmp_path / "ds")
    assert main(["evaluate", "-c", "small-coords", "--data", ds, "--split", "train"]) == 0
    assert (
        main(["score", str(DATA / "1orc.pdb"), "-c", "small-coords", "-o", str(tmp_path / "s.tsv")])
        == 0
    )
    out = capsys.readouterr().out
    assert "━" not in out and "\r" not in out, out
    assert any(
        line.startswith("eval batches: ") and "(100%)" in line for line in out.splitlines()
    ), out
    assert any(line.startswith("score: ") and "(100%)" in line for line in out.splitlines()), out


@pytest.mark.slow
def test_pretrain_prints_plain_lines_to_a_log_file(tmp_path, prepared, capsys, monkeypatch):
    monkeypatch.setattr(coordformer.train.progress, "PLAIN_EVERY_S", 0.0)
    args = pretrain_args(
        prepared.path,
        tmp_path / "run",
        max_steps=4,
        val_every=2,
        warmup_steps=1,
        tokens_per_batch=1024,
        max_minutes=5,
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert any(
        line.startswith("step 1/4, ") and "/5 min" in line and "train/loss" in line
        for line in lines
    ), out
    # from the second line on, the rate of steps is known: an ETA (none on the final line)
    assert any(line.startswith("step 3/4, ") and ", ETA 0:" in line for line in lines), out
    steps = [line for line in lines if line.startswith("step ")]
    assert "ETA" not in steps[0] and "ETA" not in steps[-1], out
    assert any(line.startswith("validation at step 2: val/loss") for line in lines), out
    assert any(line.startswith("step 4/4, ") for line in lines), out


@pytest.mark.slow
def test_pretrain_bar_with_a_time_budget_counts_minutes_not_steps(
    tmp_path, prepared, capsys, monkeypatch
):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # as on a terminal: the tqdm bar
    args = pretrain_args(
        prepared.path,
        tmp_path / "run",
        max_minutes=0.1,
        val_every=1000,
        warmup_steps=1,
        tokens_per_batch=512,
        crop_length=64,
        threads=1,
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    bar = out.split("\n{")[
        0
    ]  # the progress output, not the JSON summary after it (its floats may hold any digits)
    assert "/0.1 min" in bar and "100000" not in bar, out[-2000:]


def test_a_task_counted_in_cost_units_shows_a_percentage(capsys, monkeypatch):
    """`simulate` counts its bar in compute-cost units, meaningless to a reader: unit="%" shows
    the share done only (it printed "1.88744e+10/1.88744e+10 (100%)")."""
    monkeypatch.setattr(coordformer.progress, "PLAIN_EVERY_S", 0.0)
    with coordformer.progress.Progress() as bar:
        task = bar.add_task("simulate: 2 stacks", total=3.2e10, unit="%")
        bar.advance(task, 0.8e10)
        other = bar.add_task("items", total=4)
        bar.advance(other, 1)
    lines = capsys.readouterr().out.splitlines()
    assert lines and lines[-2].startswith("simulate: 2 stacks: 25%, ") and "e+10" not in lines[-2]
    assert "unit" not in lines[-2] and "%," in lines[-2]
    assert lines[-1].startswith("items: 1/4 (25%), ")


def test_eta_is_that_of_the_first_limit():
    from coordformer.train.progress import eta_seconds

    assert eta_seconds(100, 0.5, None) == 50.0  # steps only
    assert eta_seconds(100, 0.5, 20.0) == 20.0  # the budget ends first
    assert eta_seconds(100, 0.5, 600.0) == 50.0  # the steps end first
    assert eta_seconds(100, 0.5, -3.0) == 0.0  # past the budget: never negative


def test_finetune_eta_counts_from_a_mid_epoch_resume_and_a_signal_stop_says_so(monkeypatch, capsys):
    # a stage resumed from last.ckpt goes on at its saved batch (here 3 of 8 in epoch 3 of 4):
    # the rate is of this process's batches only, and a stop part-way is not "ended after"
    import types

    from coordformer.train import progress

    clock_s = iter([0.0, 1.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock_s))
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    bar = progress.EpochProgressBar("fine-tune", plain=True)
    trainer = types.SimpleNamespace(
        current_epoch=2,
        max_epochs=4,
        num_training_batches=8,
        progress_bar_metrics={"train_loss": 0.5},
        loggers=[],
        state=types.SimpleNamespace(fn="fit"),
        sanity_checking=False,
    )
    bar._trainer = trainer
    bar._t0 = progress.time.monotonic()  # on_train_start, without Lightning's tqdm set-up
    bar.on_train_batch_end(trainer, None, None, None, batch_idx=3)
    trainer.current_epoch = 3  # Lightning counts the interrupted epoch as done
    bar._line(trainer, None, None, final=True)
    first, last = capsys.readouterr().out.splitlines()
    # 1/8 epoch in 1 s: 1.5 epochs left is 12 s (counting the batches before the resume: 2.7 s)
    assert first.startswith("fine-tune: epoch 3/4, batch 4/8, 0:00:01 elapsed, ETA <= 0:00:12")
    assert last.startswith("fine-tune: stopped in epoch 3/4 at batch 4/8, 0:00:02 elapsed")
