"""End-to-end through the command-line entry point, on committed real fixtures plus synthetic
chains."""

import json
import math
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import pretrain_args, weight_gap
from coordformer.cli import main
from poison import PoisonGrads

DATA = Path(__file__).parent / "data"


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def mixed_inputs(tmp_path, synthetic_jsonl):
    """Real PDB/mmCIF fixtures, a synthetic chain_set, and two bad files in one folder."""
    d = tmp_path / "inputs"
    d.mkdir()
    for name in ("1A8O.cif", "1orc.pdb", "1lzh.pdb.gz", "5i55.cif"):
        shutil.copy(DATA / name, d / name)
    shutil.copy(synthetic_jsonl, d / "synthetic.jsonl")
    (d / "empty.pdb").write_text("")
    (d / "junk.cif").write_bytes(b"\x00\x01binary junk\xff" * 10)
    return d


@pytest.mark.slow
def test_prepare_pretrain_evaluate_end_to_end(tmp_path, mixed_inputs, capsys):
    ds = tmp_path / "ds"
    assert (
        run(
            "prepare",
            mixed_inputs,
            "--out",
            ds,
            "--workers",
            "1",
            "--min-length",
            "10",
            "--valid-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
            "--quiet",
        )
        == 0
    )
    manifest = json.loads((ds / "manifest.json").read_text())
    skipped = (ds / "skipped.tsv").read_text()
    assert "empty.pdb" in skipped and "junk.cif" in skipped
    assert manifest["counts"]["inputs_skipped"] == 2
    ids = (ds / "chains.tsv").read_text()
    assert "1ORC.A" in ids or "1orc.A" in ids.lower()
    for coords in (True, False):
        flag = "--coords" if coords else "--no-coords"
        out = tmp_path / f"run_{coords}"
        args = pretrain_args(
            ds,
            out,
            flag,
            max_steps=6,
            val_every=3,
            warmup_steps=2,
            tokens_per_batch=1024,
            quiet=True,
        )
        assert run(*args) == 0
        assert (out / "checkpoints" / "last.ckpt").exists()
        assert json.loads((out / "summary.json").read_text())["global_step"] == 6
        ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        assert ck["coordformer"]["model_config"]["use_coords"] is coords
    js = tmp_path / "eval.json"
    rep = tmp_path / "report.md"
    assert (
        run(
            "evaluate",
            "-c",
            tmp_path / "run_True",
            "-c",
            tmp_path / "run_False",
            "--data",
            ds,
            "--split",
            "test",
            "--json",
            js,
            "--report",
            rep,
            "--quiet",
        )
        == 0
    )
    res = json.loads(js.read_text())["models"]
    assert set(res) == {"run_True", "run_False"}
    for r in res.values():
        assert r["perplexity"] > 1 and 0 <= r["recovery"] <= 1 and r["n_masked"] > 0
        assert set(r["per_residue_recovery"]) == set("ACDEFGHIKLMNPQRSTVWY")
    # Identical masks for both models: same number of masked residues per amino acid.
    assert res["run_True"]["per_residue_count"] == res["run_False"]["per_residue_count"]
    assert rep.exists() and rep.with_suffix(".png").stat().st_size > 1000
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.slow
def test_pretrain_resumes_from_last_checkpoint(tmp_path, prepared):
    out = tmp_path / "run"
    common = pretrain_args(
        prepared.path, out, val_every=4, warmup_steps=2, tokens_per_batch=1024, quiet=True
    )
    assert run(*common, "--max-steps", "4") == 0
    assert run(*common, "--max-steps", "8") == 0
    assert json.loads((out / "summary.json").read_text())["global_step"] == 8
    logs = sorted((out / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2  # the first segment's log is kept, not overwritten
    assert (
        run(*common, "--max-steps", "8", "--no-resume") == 2
    )  # refuses to clobber without --resume


def test_bad_arguments_give_one_line_errors(tmp_path, capsys, prepared):
    assert run("evaluate", "-c", "no-such-model", "--data", prepared.path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "shipped model" in err and "\n" not in err
    assert run("pretrain", "--data", tmp_path / "missing", "--out", tmp_path / "r") == 2
    assert "not a folder" in capsys.readouterr().err
    assert (
        run("pretrain", "--data", prepared.path, "--out", tmp_path / "r", "--preset", "enormous")
        == 2
    )
    assert "preset" in capsys.readouterr().err
    assert run("prepare", prepared.path, "--out", tmp_path / "p", "--split", "foo") == 2
    assert capsys.readouterr().err.startswith(
        "error: Invalid value for '--split': 'foo' is not one of 'random', 'identity'."
    )
    assert (
        run(
            "pretrain",
            "--data",
            prepared.path,
            "--out",
            tmp_path / "r",
            "--recipe",
            "paper",
            "--gaussian-heads",
            "2",
        )
        == 2
    )
    assert "norm" in capsys.readouterr().err
    assert (
        run("pretrain", "--data", prepared.path, "--out", tmp_path / "r", "--preset", "paper-43m")
        == 2
    )
    assert "renamed large-43m" in capsys.readouterr().err
    assert run("prepare", tmp_path / "nothing-here", "--out", tmp_path / "ds2", "--quiet") == 2
    capsys.readouterr()
    assert (
        run(
            "embed",
            prepared.path,
            "-c",
            "small-coords-sd",
            "--out",
            tmp_path / "e.h5",
            "--seqres",
            "gaps",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--seqres gaps: applies to structure inputs" in err and "\n" not in err
    assert run("prepare", DATA / "1orc.pdb", "--out", tmp_path / "ds3", "--seqres", "some") == 2
    assert "--seqres" in capsys.readouterr().err
    assert (
        run(
            "prepare",
            DATA / "1orc.pdb",
            "--out",
            tmp_path / "ds3",
            "--seqres",
            "all",
            "--quiet",
            "--min-length",
            "1",
            "--valid-fraction",
            "0",
            "--test-fraction",
            "0",
        )
        == 0
    )
    assert "seqres (all): 7 unobserved residues put back in 1 chains" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert (
            run(
                "pretrain", "--data", prepared.path, "--out", tmp_path / "r", "--accelerator", "gpu"
            )
            == 2
        )
        assert run("evaluate", "-c", "x", "--data", prepared.path, "--device", "cuda") == 2
        assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_interrupted_pretrain_resumes_exactly(tmp_path, prepared, dropout):
    """Stopping part-way and resuming gives the same weights as an uninterrupted run (CPU, same
    seed), with dropout too (its masks come from the global generator, restored at train start)."""
    from lightning.pytorch.callbacks import Callback

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= 3:
                trainer.should_stop = True

    mc = preset("tiny-0.1m").replace(dropout=dropout)
    tc = TrainConfig(
        max_steps=7, val_every_steps=2, tokens_per_batch=1024, crop_length=64, warmup_steps=2
    )
    pretrain(prepared.path, tmp_path / "a", mc, tc, progress=False)
    s1 = pretrain(prepared.path, tmp_path / "b", mc, tc, progress=False, callbacks=[StopAt()])
    assert s1["global_step"] == 3
    s2 = pretrain(prepared.path, tmp_path / "b", mc, tc, progress=False)
    assert s2["global_step"] == 7
    assert weight_gap(tmp_path / "a", tmp_path / "b") < 1e-6


class _SavedAtBoundary:
    """Records, for every checkpoint written, the micro-batches the fit loop had processed."""

    def __init__(self):
        from lightning.pytorch.callbacks import Callback

        seen = self.seen = []

        class Recorder(Callback):
            def on_save_checkpoint(self, trainer, pl_module, checkpoint):
                bp = trainer.fit_loop.epoch_loop.batch_progress.total
                seen.append((trainer.global_step, bp.processed))

        self.callback = Recorder()


@pytest.mark.slow
def test_accumulated_runs_checkpoint_only_at_step_boundaries_and_resume_exactly(tmp_path, prepared):
    """With gradient accumulation, the periodic checkpoint was also written after the first
    micro-batch of a resumed run (Lightning counts the step it restarts at as unsaved), and a
    --max-minutes stop could come part-way through a step: a later resume from such a last.ckpt
    grouped micro-batches into steps differently. A crash right after that save, then a resume,
    must still end with the weights of an uninterrupted run."""
    from lightning.pytorch.callbacks import Callback

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:  # after the resumed run's first step, before a save
                raise RuntimeError("simulated crash")

    mc = preset("tiny-0.1m")
    tc = TrainConfig(
        max_steps=6,
        val_every_steps=100,
        checkpoint_every_steps=2,
        tokens_per_batch=512,
        crop_length=64,
        warmup_steps=2,
        accumulate_grad_batches=2,
    )
    pretrain(prepared.path, tmp_path / "a", mc, tc, progress=False)
    pretrain(prepared.path, tmp_path / "b", mc, tc.replace(max_steps=2), progress=False)
    rec = _SavedAtBoundary()
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(
            prepared.path, tmp_path / "b", mc, tc, progress=False, callbacks=[rec.callback, Crash()]
        )
    assert all(processed % 2 == 0 for _, processed in rec.seen), rec.seen
    pretrain(prepared.path, tmp_path / "b", mc, tc, progress=False)
    assert weight_gap(tmp_path / "a", tmp_path / "b") < 1e-6

    # a time budget spent in the first micro-batch still ends the step it is in
    rec = _SavedAtBoundary()
    s = pretrain(
        prepared.path,
        tmp_path / "c",
        mc,
        tc.replace(max_minutes=1e-9),
        progress=False,
        callbacks=[rec.callback],
    )
    assert s["global_step"] == 1 and rec.seen and all(p % 2 == 0 for _, p in rec.seen), rec.seen


@pytest.mark.slow
def test_a_run_resumed_past_half_its_loader_does_not_replay_batches(
    tmp_path, prepared, monkeypatch
):
    """Lightning counts a resumed run's batches from the start of its one long epoch, but the
    loader of a resumed run was shorter by the batches already trained on: once a run resumed past
    half of it (50,000 steps on a dataset of 10 batches), Lightning thought the epoch over, started
    another and the loader began again at the resume point, replaying batches. Loaders are made
    long enough for the whole run (TRAIN_EPOCHS shrunk here to reach that point in a few steps)."""
    from lightning.pytorch.callbacks import Callback

    from coordformer.config import TrainConfig, preset
    from coordformer.data.batching import MaskedBatches
    from coordformer.train import run as run_mod
    from coordformer.train.run import batch_settings, pretrain

    mc = preset("tiny-0.1m")
    tc = TrainConfig(
        max_steps=12, val_every_steps=100, tokens_per_batch=1024, crop_length=64, warmup_steps=2
    )
    n = MaskedBatches(
        prepared, prepared.split_indices("train"), batch_settings(tc, True), seed=tc.seed
    ).batches_per_epoch
    epochs = -(-tc.max_steps // n)  # one loader just long enough for the run
    stop_at = -(-epochs * n // 2) + 1  # past half of it
    assert stop_at < tc.max_steps
    monkeypatch.setattr(run_mod, "TRAIN_EPOCHS", epochs)

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= stop_at:
                trainer.should_stop = True

    pretrain(prepared.path, tmp_path / "a", mc, tc, progress=False)
    pretrain(prepared.path, tmp_path / "b", mc, tc, progress=False, callbacks=[StopAt()])
    s = pretrain(prepared.path, tmp_path / "b", mc, tc, progress=False)
    assert s["global_step"] == tc.max_steps
    assert weight_gap(tmp_path / "a", tmp_path / "b") < 1e-6


def test_non_finite_gradients_skip_the_step_and_persistent_ones_stop_training(
    tmp_path, prepared, monkeypatch
):
    from coordformer.config import TrainConfig, preset
    from coordformer.errors import TrainingDivergedError
    from coordformer.train import mlm
    from coordformer.train.run import pretrain

    mc = preset("tiny-0.1m")
    # the host-side skip of plain AdamW (the fused one: tests/test_training_step.py)
    tc = TrainConfig(
        max_steps=5,
        val_every_steps=100,
        tokens_per_batch=1024,
        crop_length=64,
        warmup_steps=2,
        fused_adamw=False,
    )
    s = pretrain(
        prepared.path, tmp_path / "a", mc, tc, progress=False, callbacks=[PoisonGrads({1, 3})]
    )
    assert s["global_step"] == 5 and s["skipped_steps"] == 2
    state = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)[
        "state_dict"
    ]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert s["final_val"] and all(math.isfinite(v) for v in s["final_val"].values())

    monkeypatch.setattr(mlm, "MAX_CONSECUTIVE_SKIPS", 3)
    with pytest.raises(TrainingDivergedError, match="3 steps in a row"):
        pretrain(
            prepared.path, tmp_path / "b", mc, tc, progress=False, callbacks=[PoisonGrads("all")]
        )


@pytest.mark.slow
def test_pretrain_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, prepared):
    """SIGKILL part-way (no chance to clean up), re-run the same command: it resumes from the last
    periodic checkpoint (Lightning writes it via a temporary file and a rename, so a kill never
    leaves half a file) and ends with the weights of an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    def cmd(out):
        args = pretrain_args(
            prepared.path,
            out,
            max_steps=100,
            val_every=1000,
            checkpoint_every=2,
            warmup_steps=2,
            tokens_per_batch=512,
            crop_length=64,
            threads=1,
            quiet=True,
        )
        return [sys.executable, "-m", "coordformer", *args]

    assert subprocess.run(cmd(tmp_path / "whole"), capture_output=True, timeout=600).returncode == 0
    proc = subprocess.Popen(
        cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (
            last.exists() and torch.load(last, weights_only=False)["global_step"] >= 30
        ):  # after a log flush at 25
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(last, weights_only=False)["global_step"]
    assert 30 <= killed_at < 100
    assert (
        subprocess.run(cmd(tmp_path / "killed"), capture_output=True, timeout=600).returncode == 0
    )
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(last, weights_only=False)
    assert a["global_step"] == b["global_step"] == 100
    assert (
        max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"])
        < 1e-6
    )
    # the loss log survives the kill and the resumed segment continues it (flushed each time it
    # logs)
    import csv

    logs = sorted((tmp_path / "killed" / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2
    steps = [[int(r["step"]) for r in csv.DictReader(open(f)) if r.get("train/loss")] for f in logs]
    assert steps[0] and max(steps[0]) < killed_at <= min(steps[1])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_env(**extra) -> dict:
    """This process's environment without any SLURM / torch.distributed variables, plus
    ``extra``."""
    import os

    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "MASTER_", "RANK", "WORLD_SIZE"))
    }
    return {**base, **extra}


def _slurm_task_env(rank: int, ntasks: int, job_id: str, **extra) -> dict:
    """The environment `srun` gives task ``rank`` of ``ntasks`` (one task per node, all on
    localhost). With several tasks pass MASTER_PORT: otherwise Lightning derives it from the job id,
    which could be taken here."""
    return _launch_env(
        SLURM_NTASKS=str(ntasks),
        SLURM_NTASKS_PER_NODE="1",
        SLURM_JOB_NAME="cf",
        SLURM_JOB_ID=job_id,
        SLURM_PROCID=str(rank),
        SLURM_LOCALID="0",
        SLURM_NODEID=str(rank),
        SLURM_NODELIST="localhost",
        **extra,
    )


def _fake_scontrol(tmp_path):
    """A stand-in `scontrol` that appends its arguments to a file: (PATH entry to prepend, that
    file)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir, calls


def _first_log_rows(run_dir) -> bool:
    """Whether the run has flushed training-loss rows to its first log (after step 25). (A check for
    the text "25," matched a logged number by chance, or not until the run had finished.)"""
    import csv

    try:
        return any(
            r.get("train/loss")
            for r in csv.DictReader(open(run_dir / "logs" / "version_0" / "metrics.csv"))
        )
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_slurm_requeue_signal_checkpoints_at_a_step_boundary_and_resumes_exactly(
    tmp_path, prepared
):
    """Under SLURM the warning signal (SIGUSR1, `#SBATCH --signal=SIGUSR1@90`) makes the run write
    last.ckpt at the next step boundary, call `scontrol requeue` (a stand-in here) and stop; the
    requeued job (the same command) continues from there and ends with the weights of an
    uninterrupted run. (Lightning's own handler checkpoints mid-step and this comparison failed by
    6e-3.)"""
    import csv
    import os
    import signal
    import subprocess
    import sys
    import time

    bin_dir, calls = _fake_scontrol(tmp_path)
    env = _slurm_task_env(0, 1, "4242", PATH=f"{bin_dir}:{os.environ['PATH']}")

    def cmd(out):
        args = pretrain_args(
            prepared.path,
            out,
            max_steps=150,
            val_every=1000,
            checkpoint_every=100000,
            warmup_steps=2,
            tokens_per_batch=512,
            crop_length=64,
            threads=1,
            accelerator="cpu",
            quiet=True,
        )
        return [sys.executable, "-m", "coordformer", *args]

    assert (
        subprocess.run(
            cmd(tmp_path / "whole"), capture_output=True, timeout=600, env=env
        ).returncode
        == 0
    )
    run_dir = tmp_path / "job"
    proc = subprocess.Popen(
        cmd(run_dir), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if _first_log_rows(run_dir):  # past the first log flush (step 25)
            proc.send_signal(signal.SIGUSR1)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert '"requeued": true' in out
    assert calls.read_text().split() == ["requeue", "4242"]
    assert not (run_dir / "summary.json").exists()  # not finished
    requeued_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)[
        "global_step"
    ]
    assert 25 <= requeued_at < 150

    assert subprocess.run(cmd(run_dir), capture_output=True, timeout=600, env=env).returncode == 0
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 150
    assert (
        max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"])
        < 1e-6
    )
    logs = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    resumed_steps = [int(r["step"]) for r in csv.DictReader(open(logs[-1])) if r.get("train/loss")]
    assert min(resumed_steps) >= requeued_at  # started from the requeue checkpoint, not from step 0
    assert (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_slurm_requeue_signal_to_rank_0_stops_both_ranks_at_the_same_step(tmp_path, prepared):
    """Two SLURM tasks (gloo); the signal reaches rank 0 only. Rank 0's flag is broadcast, so both
    ranks checkpoint at the same step and stop: the job ends (no rank left waiting for the other)
    and the stand-in `scontrol` is called once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bin_dir, calls = _fake_scontrol(tmp_path)
    port = str(_free_port())
    envs = [
        _slurm_task_env(r, 2, "4244", MASTER_PORT=port, PATH=f"{bin_dir}:{os.environ['PATH']}")
        for r in (0, 1)
    ]
    run_dir = tmp_path / "job"
    args = pretrain_args(
        prepared.path,
        run_dir,
        max_steps=400,
        val_every=1000,
        checkpoint_every=100000,
        warmup_steps=2,
        tokens_per_batch=256,
        crop_length=64,
        threads=1,
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy="ddp",
        quiet=True,
        max_minutes=30,  # a time budget must not undo the stop (its hook runs after the callback's)
    )
    cmd = [sys.executable, "-m", "coordformer", *args]
    procs = [
        subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for e in envs
    ]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and procs[0].poll() is None:
            if _first_log_rows(run_dir):
                procs[0].send_signal(signal.SIGUSR1)
                break
            time.sleep(0.05)
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-1500:] for o in outs)
    assert calls.read_text().split() == ["requeue", "4244"]
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 25 <= step < 400
    import csv

    logged = [
        int(r["step"])
        for r in csv.DictReader(open(run_dir / "logs" / "version_0" / "metrics.csv"))
        if r.get("train/loss")
    ]
    assert max(logged) < step  # it stopped there: no training after the checkpoint
    assert not any(
        r.get("val/loss")
        for r in csv.DictReader(open(run_dir / "logs" / "version_0" / "metrics.csv"))
    )


def test_same_seed_and_config_give_identical_losses(tmp_path, prepared):
    import csv

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    tc = TrainConfig(
        max_steps=4,
        val_every_steps=100,
        tokens_per_batch=1024,
        crop_length=64,
        warmup_steps=2,
        log_every_steps=1,
    )
    losses = []
    for name in ("a", "b"):
        pretrain(prepared.path, tmp_path / name, preset("tiny-0.1m"), tc, progress=False)
        rows = csv.DictReader(open(next((tmp_path / name / "logs").glob("version_*/metrics.csv"))))
        losses.append([r["train/loss"] for r in rows if r.get("train/loss")])
    assert len(losses[0]) == 4 and losses[0] == losses[1]


def test_misuse_gives_one_line_errors(tmp_path, capsys, prepared):
    """Wrong kind of checkpoint, corrupt checkpoint, dataset of another format version, bad
    values."""
    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "config.json").write_text(json.dumps({"finetune": {"task": "ec"}}))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    old = tmp_path / "old_ds"
    shutil.copytree(prepared.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    cases = [
        (("evaluate", "-c", ft, "--data", prepared.path), "finetune` run"),
        (("evaluate", "-c", broken, "--data", prepared.path), "truncated or not a checkpoint"),
        (("evaluate", "-c", "small-coords", "--data", old), "format version 99"),
        (("pretrain", "--data", prepared.path, "--out", tmp_path / "r", "--lr", "-1"), "--lr"),
        (
            ("pretrain", "--data", prepared.path, "--out", tmp_path / "r", "--no-such-flag"),
            "No such option",
        ),
        (
            ("evaluate", "-c", "small-coords", "--data", prepared.path, "--split", "nosuch"),
            "unknown split",
        ),
    ]
    for args, expected in cases:
        assert run(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and expected in err, (args, err)
        assert "Traceback" not in err
    with pytest.raises(
        Exception, match="truncated or not a checkpoint"
    ):  # --debug, anywhere: the real exception
        run("evaluate", "-c", broken, "--data", prepared.path, "--debug")


@pytest.mark.slow
def test_resume_refuses_changed_data_stream_and_checkpoints_periodically(
    tmp_path, prepared, capsys
):
    out = tmp_path / "run"
    common = pretrain_args(
        prepared.path,
        out,
        val_every=100,
        warmup_steps=2,
        crop_length=256,
        quiet=True,
        max_steps=3,
    )
    assert run(*common, "--tokens-per-batch", "1024") == 0
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert run(*common, "--tokens-per-batch", "2048") == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: --out {out}: ")
        and "different --tokens-per-batch; resuming would change" in err
    )
    assert (
        run(*common, "--tokens-per-batch", "1024", "--no-coords") == 2
    )  # a checkpoint of another model config
    # the message names what changed
    err = capsys.readouterr().err
    assert "different model config (" in err and "use_coords True -> False" in err


def test_a_run_recorded_before_a_model_field_existed_still_resumes(tmp_path, prepared, capsys):
    """`weight_init` and `lm_head` were added to ModelConfig with the old behaviour as defaults; a
    checkpoint recorded before them (no such keys) must resume, not be refused as "a different
    model config" (the 50k-step stability run was, 2026-11-26). A real difference is still
    refused."""
    import torch

    out = tmp_path / "run"
    common = pretrain_args(prepared.path, out, val_every=100, warmup_steps=2, crop_length=256,
                           tokens_per_batch=1024, quiet=True)  # fmt: skip
    assert run(*common, "--max-steps", "2") == 0
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    for key in ("weight_init", "lm_head"):  # as an older coordformer wrote it
        del ckpt["coordformer"]["model_config"][key]
    torch.save(ckpt, last)
    assert run(*common, "--max-steps", "4") == 0
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert run(*common, "--max-steps", "6", "--lm-head", "linear") == 2
    assert "lm_head 'mlp' -> 'linear'" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_on_cpu_with_time_budget_stops_all_ranks_together(tmp_path, prepared):
    """Two gloo processes: the budget is rank 0's clock, so both ranks stop on the same step (no
    hang)."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = pretrain_args(
        prepared.path,
        out,
        max_minutes=0.1,
        val_every=1000,
        warmup_steps=2,
        tokens_per_batch=512,
        crop_length=64,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        threads=1,
        quiet=True,
    )
    cmd = [sys.executable, "-m", "coordformer.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('"global_step"') == 1, proc.stdout[-2000:]  # only rank 0 reports
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] > 0 and summary["train_minutes"] >= 0.1, (
        summary["global_step"],
        summary["train_minutes"],
    )


@pytest.mark.slow
def test_ddp_gradients_match_single_process_on_the_same_global_batch(tmp_path, prepared):
    """2 gloo processes x 1 micro-batch == 1 process x 2 accumulated micro-batches: rank r of step s
    reads micro-batch 2s + r, which is what the single process accumulates (within an epoch: small
    batches keep all 6 in epoch 0), so after a few AdamW steps the weights agree to float rounding;
    they would not if gradients were not all-reduced."""
    import subprocess
    import sys

    common = pretrain_args(
        prepared.path,
        out=None,  # each run names its own
        max_steps=3,
        val_every=1000,
        warmup_steps=1,
        tokens_per_batch=128,
        crop_length=64,
        accelerator="cpu",
        threads=1,
        quiet=True,
        lr="3e-3",
    )
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordformer.cli",
            *common,
            "--out",
            str(tmp_path / "ddp"),
            "--devices",
            "2",
            "--strategy",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert run(*common, "--out", tmp_path / "one", "--devices", "1", "--accumulate", "2") == 0
    assert run(*common, "--out", tmp_path / "half", "--devices", "1") == 0  # one micro-batch a step

    def weights(name):
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]

    a, b, c = weights("ddp"), weights("one"), weights("half")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-5
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 100 * max(diff, 1e-7)


@pytest.mark.slow
def test_torchrun_and_slurm_launch_recipes_train_like_lightnings_own_ddp(tmp_path, prepared):
    """The README's multi-node recipes, run as two single-process "nodes" on this machine (gloo):
    two `torchrun --nnodes 2 --node-rank r` launches, and two processes with the environment `srun`
    gives its tasks. Each must form one 2-process job and end with the weights of
    `--devices 2 --strategy ddp` launched by Lightning itself."""
    import subprocess
    import sys

    args = pretrain_args(
        prepared.path,
        out=None,  # each launch names its own
        max_steps=3,
        val_every=1000,
        warmup_steps=1,
        tokens_per_batch=128,
        crop_length=64,
        accelerator="cpu",
        threads=1,
        quiet=True,
        lr="3e-3",
        strategy="ddp",
        # the plain model with small weights: the fast recipe's Gaussian logits (|x|^2 / sigma^2,
        # hundreds), and the paper's PyTorch initialisation (a coordinate embedding 14x larger),
        # lift float32 rounding differences between launches to ~1e-4 in three steps, above 1e-6
        recipe="paper",
        weight_init="normal",
        lm_head="mlp",
    )
    base = _launch_env()

    def launch(cmds_envs):
        procs = [
            subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for c, e in cmds_envs
        ]
        try:
            outs = [p.communicate(timeout=300)[0] for p in procs]
        finally:  # a rank left waiting for its peer must not outlive the test
            for p in procs:
                p.kill()
        assert all(p.returncode == 0 for p in procs), "\n".join(o[-1500:] for o in outs)

    launch(
        [
            (
                [
                    sys.executable,
                    "-m",
                    "coordformer",
                    *args,
                    "--out",
                    str(tmp_path / "lightning"),
                    "--devices",
                    "2",
                ],
                base,
            )
        ]
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
    ]
    launch(
        [
            (
                [
                    *torchrun,
                    "--node-rank",
                    str(r),
                    "-m",
                    "coordformer",
                    *args,
                    "--out",
                    str(tmp_path / "torchrun"),
                    "--devices",
                    "1",
                    "--num-nodes",
                    "2",
                ],
                base,
            )
            for r in (0, 1)
        ]
    )
    port = str(_free_port())
    slurm = [_slurm_task_env(r, 2, "4243", MASTER_PORT=port) for r in (0, 1)]
    launch(
        [
            (
                [
                    sys.executable,
                    "-m",
                    "coordformer",
                    *args,
                    "--out",
                    str(tmp_path / "slurm"),
                    "--devices",
                    "1",
                    "--num-nodes",
                    "2",
                ],
                e,
            )
            for e in slurm
        ]
    )

    def weights(name):
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)

    ref = weights("lightning")
    for name in ("torchrun", "slurm"):
        w = weights(name)
        assert w["global_step"] == ref["global_step"] == 3
        assert (
            max(
                (w["state_dict"][k] - ref["state_dict"][k]).abs().max().item()
                for k in ref["state_dict"]
            )
            < 1e-6
        ), name


@pytest.mark.slow
def test_compile_compiles_the_training_step_at_most_twice(tmp_path, prepared):
    """Cold compiles are slow (the lease's compile arm at paper-33m ran out of time in its final
    validation's), so `--compile` makes as few as it can: dynamic sizes from the start (length
    buckets change the shape every step; the default compiled the first shape, then again
    dynamic), one graph with padding and one without, and validation eager (no no-grad graph)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    args = pretrain_args(prepared.path, tmp_path / "run", "--compile", max_steps=8, val_every=4,
                         tokens_per_batch=512, crop_length=64, accelerator="cpu", threads=1,
                         quiet=True)  # fmt: skip
    assert run(*args) == 0
    assert 1 <= counters["stats"]["unique_graphs"] - graphs <= 2


@pytest.mark.slow
def test_compile_trains_like_eager_and_its_checkpoints_resume_either_way(tmp_path, prepared):
    """`--compile` compiles the model in place: the same seed gives the same weights as eager
    training (to kernel rounding), and the checkpoint has plain keys, so it resumes without
    --compile and loads for inference. (torch.compile(model) would prefix every key with
    `_orig_mod.` and break both.)"""
    common = pretrain_args(
        prepared.path,
        out=None,  # each run names its own, and its --max-steps
        val_every=1000,
        warmup_steps=1,
        tokens_per_batch=256,
        crop_length=64,
        accelerator="cpu",
        threads=1,
        quiet=True,
        # the plain model with small weights: the fast recipe's Gaussian heads compute logits of
        # |x|^2 / sigma^2 (hundreds), which lifts float32 rounding between compiled and eager
        # kernels to ~2e-4 after two steps
        recipe="paper",
        weight_init="normal",
        lm_head="mlp",
    )
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    assert run(*common, "--max-steps", "2", "--out", tmp_path / "compiled", "--compile") == 0
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    assert run(*common, "--max-steps", "2", "--out", tmp_path / "eager") == 0

    def weights(name):
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)[
            "state_dict"
        ]

    a, b = weights("compiled"), weights("eager")
    assert sorted(a) == sorted(b) and not any("_orig_mod" in k for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    # the compiled run goes on without --compile, the eager one with it, then load as plain models
    assert run(*common, "--max-steps", "3", "--out", tmp_path / "compiled") == 0
    c = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=False)
    assert c["global_step"] == 3
    assert run(*common, "--max-steps", "3", "--out", tmp_path / "eager", "--compile") == 0
    assert (
        torch.load(tmp_path / "eager" / "checkpoints" / "last.ckpt", weights_only=False)[
            "global_step"
        ]
        == 3
    )
    from coordformer.model.checkpoints import load_model

    model, _ = load_model(tmp_path / "compiled")
    assert model.num_parameters() > 0


@pytest.mark.slow
def test_export_writes_a_half_precision_model_that_evaluates(tmp_path, prepared, capsys):
    run_dir = tmp_path / "run"
    args = pretrain_args(
        prepared.path,
        run_dir,
        max_steps=2,
        warmup_steps=1,
        tokens_per_batch=1024,
        crop_length=256,
        quiet=True,
    )
    assert run(*args) == 0
    pt = tmp_path / "model.pt"
    assert run("export", "-c", run_dir, "--out", pt) == 0
    obj = torch.load(pt, weights_only=False)
    assert obj["format"] == "coordformer-model"
    assert all(
        v.dtype == torch.float16 for v in obj["state_dict"].values() if v.is_floating_point()
    )
    js = tmp_path / "e.json"
    assert run("evaluate", "-c", pt, "--data", prepared.path, "--json", js, "--quiet") == 0
    assert json.loads(js.read_text())["n_masked"] > 0


def test_pretrain_init_continues_from_given_weights_with_their_architecture(
    tmp_path, prepared, capsys
):
    """--init: the run starts from another model's weights (here a 1-step tiny run, read from its
    run folder), takes its architecture, records where it came from, and refuses architecture
    options."""
    common = pretrain_args(
        prepared.path,
        out=None,  # each run names its own
        preset=None,  # the first run names one; an --init run takes its checkpoint's
        warmup_steps=1,
        tokens_per_batch=512,
        crop_length=64,
        val_every=1000,
        threads=1,
        quiet=True,
    )
    assert (
        run(
            *common,
            "--out",
            tmp_path / "base",
            "--preset",
            "tiny-0.1m",
            "--max-steps",
            "1",
        )
        == 0
    )
    base = torch.load(tmp_path / "base" / "checkpoints" / "last.ckpt", weights_only=False)
    # lr 0: the continued run must hold exactly the weights it was given
    assert (
        run(
            *common,
            "--out",
            tmp_path / "cont",
            "--init",
            tmp_path / "base",
            "--max-steps",
            "2",
            "--lr",
            "0",
        )
        == 0
    )
    cont = torch.load(tmp_path / "cont" / "checkpoints" / "last.ckpt", weights_only=False)
    assert cont["coordformer"]["model_config"] == base["coordformer"]["model_config"]
    assert cont["coordformer"]["train_config"]["init"] == str(tmp_path / "base")
    assert all(torch.equal(cont["state_dict"][k], v) for k, v in base["state_dict"].items())
    # with learning it moves away from them (so the check above could fail)
    assert (
        run(
            *common,
            "--out",
            tmp_path / "moved",
            "--init",
            tmp_path / "base",
            "--max-steps",
            "2",
        )
        == 0
    )
    moved = torch.load(tmp_path / "moved" / "checkpoints" / "last.ckpt", weights_only=False)
    assert not all(torch.equal(moved["state_dict"][k], v) for k, v in base["state_dict"].items())
    capsys.readouterr()
    assert (
        run(
            *common,
            "--out",
            tmp_path / "bad",
            "--init",
            tmp_path / "base",
            "--preset",
            "small-3m",
            "--no-coords",
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--preset, --no-coords set the architecture" in err
    # from Python, TrainConfig(init=...) alone loads those weights (it was recorded, not loaded)
    from coordformer.config import ModelConfig, TrainConfig, preset
    from coordformer.errors import OptionError
    from coordformer.train.run import pretrain

    tc = TrainConfig(
        max_steps=1, lr=0.0, warmup_steps=1, tokens_per_batch=512, crop_length=64,
        val_every_steps=1000, threads=1, accelerator="cpu", init=str(tmp_path / "base"),
    )  # fmt: skip
    mc = ModelConfig.from_dict(base["coordformer"]["model_config"])
    torch.set_num_threads(2)
    pretrain(prepared.path, tmp_path / "py", mc, tc, progress=False)
    assert torch.get_num_threads() == 2  # threads=1 held for the run only
    py = torch.load(tmp_path / "py" / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(torch.equal(py["state_dict"][k], v) for k, v in base["state_dict"].items())
    with pytest.raises(OptionError, match="another architecture than `model_config`"):
        pretrain(prepared.path, tmp_path / "py2", preset("small-3m"), tc, progress=False)


def test_models_lists_shipped_models(capsys):
    assert run("models") == 0
    out = capsys.readouterr().out
    assert "small-coords" in out and "small-nocoords" in out


def test_device_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    from coordformer.cli import _device
    from coordformer.errors import UsageError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert _device("auto") == "cpu"
    with pytest.raises(UsageError, match="no CUDA GPU"):
        _device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert _device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device("auto") == "cuda" and _device("cuda:1") == "cuda:1"


def test_evaluate_json_records_the_data_split_command_and_version(tmp_path, prepared, monkeypatch):
    """--json had the metrics and masking settings but not which dataset, split, command line or
    coordformer version produced them (the --report's "Data:" and "Command:" lines)."""
    from coordformer import __version__

    data = {"path": str(Path(prepared.path).resolve()), "fingerprint": prepared.fingerprint}
    common = ["--data", prepared.path, "--split", "train", "--max-chains", "2", "--device", "cpu"]
    for checkpoints in (["small-coords"], ["small-coords", "small-nocoords"]):
        js = tmp_path / f"e{len(checkpoints)}.json"
        argv = [
            str(a)
            for a in ["evaluate", *(x for c in checkpoints for x in ("-c", c)), *common]
            + ["--json", js, "--quiet"]
        ]
        monkeypatch.setattr(sys, "argv", ["coordformer", *argv])
        assert main(argv) == 0
        res = json.loads(js.read_text())
        assert res["split"] == "train" and res["data"] == data
        assert res["command"] == "coordformer " + shlex.join(argv)
        assert res["coordformer_version"] == __version__
        models = res["models"] if len(checkpoints) > 1 else {"small-coords": res}
        assert list(models) == checkpoints
        assert all(m["split"] == "train" and "seed" in m["settings"] for m in models.values())
    # the comparison's report beside the JSON names the same command
    assert f"Command: `{res['command']}`" in js.with_suffix(".md").read_text()


_FOLDER_OUT = {
    "prepare": [DATA / "1orc.pdb"],
    "fetch": ["1abc"],
    "pretrain": ["--data", DATA],
    "finetune": ["-c", "small-coords", "--labels", DATA, "--data", DATA],
    "analyze-attention": ["-c", "small-coords", "--data", DATA],
    "demo": [],
    "construct": [],
    "simulate": [],
}


@pytest.mark.parametrize("command", sorted(_FOLDER_OUT))
def test_a_file_given_for_an_output_folder_is_a_one_line_error(command, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("kept")
    assert run(command, *_FOLDER_OUT[command], "--out", a_file) == 2
    assert capsys.readouterr().err == f"error: --out {a_file} is a file; give a folder\n"
    assert a_file.read_text() == "kept"


@pytest.mark.parametrize(
    "args",
    [
        ["embed", DATA / "1orc.pdb", "-c", "small-coords", "--out"],
        ["score", DATA / "1orc.pdb", "-c", "small-coords", "--out"],
        ["evaluate", "-c", "small-coords", "--data", DATA, "--json"],
    ],
    ids=lambda a: a[0],
)
def test_a_folder_given_for_an_output_file_is_a_one_line_error(args, tmp_path, capsys):
    folder = tmp_path / "out.tsv"
    folder.mkdir()
    assert run(*args, folder) == 2
    assert capsys.readouterr().err == f"error: {args[-1]} {folder} is a folder; give a file name\n"
    assert list(tmp_path.iterdir()) == [folder]  # nothing written beside it (no out.tsv.tmp)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true", "64", "foo"])
def test_pretrain_refuses_an_unsupported_precision_before_the_run_folder(
    tmp_path, prepared, capsys, precision
):
    """Weights in half or double precision crashed at the first batch (Lightning cannot cast the
    frozen Batch) and an unknown value printed Lightning's raw error; both left a run folder."""
    out = tmp_path / "run"
    args = pretrain_args(
        prepared.path, out, precision=precision, max_steps=1, tokens_per_batch=1024, quiet=True
    )
    assert run(*args, "--accelerator", "cpu", "--threads", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --precision {precision}: ") and err.count("\n") == 1, err
    assert "auto, 32-true, 32, bf16-mixed, 16-mixed" in err
    assert ("use bf16-mixed" in err) == (precision != "foo")
    assert not out.exists()


def test_pretrain_on_an_empty_valid_split_says_there_is_no_best_checkpoint(
    tmp_path, prepared, capsys, caplog
):
    (prepared.path / "splits" / "valid.txt").write_text("")
    out = tmp_path / "run"
    args = pretrain_args(
        prepared.path,
        out,
        max_steps=2,
        warmup_steps=1,
        tokens_per_batch=1024,
        accelerator="cpu",
        threads=1,
        quiet=True,
    )
    with caplog.at_level("WARNING", logger="coordformer.train.run"):
        assert run(*args) == 0
    said = [r.getMessage() for r in caplog.records if "valid split is empty" in r.getMessage()]
    assert len(said) == 1
    assert f"`coordformer evaluate -c {out}` will use checkpoints/last.ckpt" in said[0]
    summary = json.loads((out / "summary.json").read_text())
    assert "valid split" in summary["no_validation"] and "best_checkpoint" not in summary
    assert not (out / "checkpoints" / "best.ckpt").exists()
    capsys.readouterr()
    js = tmp_path / "eval.json"
    evaluate = ("evaluate", "-c", out, "--data", prepared.path, "--max-chains", "2")
    assert run(*evaluate, "--device", "cpu", "--json", js, "--quiet") == 0
    err = capsys.readouterr().err
    assert f"warning: {out} has no checkpoints/best.ckpt" in err and err.count("\n") == 1, err
    assert json.loads(js.read_text())["checkpoint"] == str(out / "checkpoints" / "last.ckpt")


def test_validation_every_n_optimizer_steps_with_gradient_accumulation(tmp_path, prepared):
    """--val-every-steps counts optimizer steps, not the micro-batches Lightning counts."""
    import csv

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    tc = TrainConfig(
        max_steps=6,
        val_every_steps=3,
        tokens_per_batch=512,
        crop_length=64,
        warmup_steps=2,
        accumulate_grad_batches=2,
    )
    pretrain(prepared.path, tmp_path / "a", preset("tiny-0.1m"), tc, progress=False)
    (log,) = (tmp_path / "a" / "logs").glob("*/metrics.csv")
    steps = [int(r["step"]) for r in csv.DictReader(open(log)) if r.get("val/loss")]
    assert steps == [2, 5]  # after optimizer steps 3 and 6 (Lightning logs the step index)


def test_an_empty_array_file_is_a_one_line_error_not_a_silent_exit(tmp_path, prepared, capsys):
    """np.load raises EOFError on an empty file, which click turned into a bare Abort: exit 1 and
    nothing printed but a blank line (evaluate, pretrain, embed, evaluate-function)."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(prepared.path, broken)
    (broken / "seq.npy").write_bytes(b"")
    capsys.readouterr()
    assert run("evaluate", "-c", "small-coords", "-d", broken) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unreadable array file" in err and "\n" not in err
    (tmp_path / "p.npz").write_bytes(b"")
    assert run("evaluate-function", tmp_path / "p.npz") == 2
    assert "not a predictions file" in capsys.readouterr().err


def test_a_run_that_diverged_says_so(tmp_path, prepared, caplog):
    """`--lr 1e30` exited 0 with val/loss NaN in summary.json and no word; evaluate then warned it
    never validated and embed wrote NaN embeddings."""
    import json

    from coordformer.config import TrainConfig, preset
    from coordformer.train.run import pretrain

    tc = TrainConfig(
        max_steps=2, val_every_steps=100, tokens_per_batch=1024, crop_length=64, lr=1e30
    )
    s = pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)
    assert "the run diverged" in s["diverged"] and "lower --lr" in s["diverged"]
    assert "the run diverged" in caplog.text
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["diverged"]
    ok = pretrain(
        prepared.path, tmp_path / "ok", preset("tiny-0.1m"), tc.replace(lr=1e-3), progress=False
    )
    assert "diverged" not in ok


def test_bad_devices_and_trainer_settings_are_one_line_errors(tmp_path, prepared, capsys):
    """torch's and Lightning's own exceptions came through raw ('RuntimeError: Expected one of
    cpu, cuda, ...', MisconfigurationException)."""
    for device in ("gpu", "CPU", "bogus"):
        capsys.readouterr()
        assert run("evaluate", "-c", "small-coords", "-d", prepared.path, "--device", device) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --device '{device}' is not a device") and "\n" not in err
    for flag, value in (("--accelerator", "bogus"), ("--devices", "0"), ("--strategy", "bogus")):
        args = pretrain_args(prepared.path, tmp_path / value, max_steps=1, quiet=True)
        assert run(*args, flag, value) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: the trainer refused") and "\n" not in err, err


def test_two_outputs_on_one_file_are_refused_before_any_work(tmp_path, prepared, capsys):
    """`evaluate --report r.png` wrote the figure, then the Markdown over it; `--json x.md` with two
    models lost the JSON to the report; `score -o s.png --plot s.png` lost the table: exit 0."""
    from conftest import DATA

    cases = [
        ["evaluate", "-c", "small-coords", "-d", prepared.path, "--report", tmp_path / "r.png"],
        [
            "evaluate",
            "-c",
            "small-coords",
            "-c",
            "small-nocoords",
            "-d",
            prepared.path,
            "--json",
            tmp_path / "res.md",
        ],
        [
            "score",
            DATA / "1orc.pdb",
            "-c",
            "small-coords",
            "-o",
            tmp_path / "s.png",
            "--plot",
            tmp_path / "s.png",
        ],
    ]
    for args in cases:
        capsys.readouterr()
        assert run(*args) == 2
        err = capsys.readouterr().err.strip()
        assert "would both write" in err and "\n" not in err, err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.md"))  # nothing written
    assert (
        run(
            "score",
            DATA / "1orc.pdb",
            "-c",
            "small-coords",
            "-o",
            tmp_path / "t.tsv",
            "--plot",
            tmp_path / "noext",
        )
        == 2
    )
    assert "a figure file ends in .png" in capsys.readouterr().err
