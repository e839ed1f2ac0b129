"""The training step's fast paths (issue 18 item 3): counts read on the host before the transfer
(``Batch.indexed``), the LM head on the masked positions only, and fused AdamW with its
device-side skip of non-finite steps. Each must leave the numbers as they were."""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from coordformer.batch import Batch
from coordformer.config import TrainConfig, preset
from coordformer.data.batching import pack_batch
from coordformer.model.core import CoordFormer
from coordformer.train.mlm import masked_lm_loss, target_loss
from poison import PoisonGrads


def _batch(seed: int = 0, pad: bool = True) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b, length = 3, 40
    tokens = torch.randint(5, 25, (b, length), generator=g)
    if pad:
        tokens[1, 30:] = 0
        tokens[2, 17:] = 0
    coords = torch.randn(b, length, 4, 3, generator=g) * 8.0
    targets = torch.full((b, length), -100)
    pick = (torch.rand(b, length, generator=g) < 0.2) & (tokens != 0)
    targets[pick] = tokens[pick]
    return Batch.from_tokens(tokens, coords, targets=targets, clean=tokens.clone())


def _train_config(**changes):
    """The tiny run these tests train: crops of 64, 1,024 tokens per step, no validation until
    the end; ``changes`` on top."""
    base = {"val_every_steps": 100, "tokens_per_batch": 1024, "crop_length": 64, "warmup_steps": 2}
    return TrainConfig(**{**base, **changes})


def test_indexed_reads_counts_and_target_positions_on_the_host():
    b = _batch().indexed()
    assert b.chain_lengths == (40, 30, 17) and b.padded is True
    flat = b.targets.flatten()
    assert torch.equal(b.target_index, torch.nonzero(flat != -100).squeeze(1))
    assert _batch(pad=False).indexed().padded is False
    packed = pack_batch(_batch()).indexed()
    assert sorted(packed.chain_lengths) == [17, 30, 40]
    # host fields stay on the host when the batch moves; tensors move
    moved = b.to("cpu")
    assert moved.chain_lengths == b.chain_lengths and moved.padded is True
    # a changed batch drops them: they described the old tensors
    changed = b.replace(padding_mask=torch.ones_like(b.padding_mask))
    assert changed.padded is None and changed.target_index is None
    assert changed.chain_lengths is None


@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_training_forward_and_loss_never_wait_for_the_device(pad, packed):
    """Under FakeTensorMode any read of a tensor's value (.item(), bool(), nonzero, a boolean
    index) raises; that is exactly what would make the host wait for a GPU. The forward, the loss
    on the targets and the backward of an indexed batch read none; the old path (the model asking
    ``padding_mask.all()``) does."""
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe="fast")).train()
    batch = _batch(pad=pad)
    batch = (pack_batch(batch) if packed else batch).indexed()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = batch._map(mode.from_tensor)
    with mode:
        out = model(**fake.inputs(), logits_at=fake.target_index)
        loss, _, n = target_loss(out.logits, fake.targets.flatten()[fake.target_index])
        loss.backward()
        assert n == int(batch.target_index.numel())
        if not packed:
            with pytest.raises(Exception, match="local_scalar_dense|data-dependent|DataDependent"):
                model(**fake.replace(padded=None).inputs())


@pytest.mark.parametrize("recipe", ["fast", "paper"])
def test_head_on_targets_only_gives_the_loss_and_gradients_of_the_full_head(recipe):
    torch.manual_seed(0)
    model = CoordFormer(preset("tiny-0.1m", recipe=recipe)).train()
    batch = _batch().indexed()

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, c_full, n_full = masked_lm_loss(model(**batch.inputs()).logits, batch.targets)
    g_full = grads(full)
    out = model(**batch.inputs(), logits_at=batch.target_index)
    assert out.logits.shape == (n_full, model.config.vocab_size)
    part, c_part, n_part = target_loss(out.logits, batch.targets.flatten()[batch.target_index])
    g_part = grads(part)
    assert n_part == n_full and int(c_part) == int(c_full)
    torch.testing.assert_close(part, full, rtol=1e-6, atol=1e-6)
    assert g_part.keys() == g_full.keys()
    for name in g_full:
        torch.testing.assert_close(g_part[name], g_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_adamw_skips_non_finite_steps_like_the_host_check(tmp_path, prepared):
    """The device-side skip (fused AdamW's found_inf) leaves the same weights as dropping the
    gradients on the host, and counts the same skipped steps."""
    from coordformer.train.run import pretrain

    mc = preset("tiny-0.1m")
    states, summaries = {}, {}
    for fused in (False, True):
        tc = _train_config(max_steps=6, fused_adamw=fused, log_every_steps=2)
        out = tmp_path / f"fused{fused}"
        summaries[fused] = pretrain(
            prepared.path, out, mc, tc, progress=False, callbacks=[PoisonGrads({1, 2, 4})]
        )
        states[fused] = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert summaries[True]["skipped_steps"] == summaries[False]["skipped_steps"] == 3
    assert summaries[True]["global_step"] == 6
    a, b = states[False]["state_dict"], states[True]["state_dict"]
    assert all(torch.isfinite(v).all() for v in b.values())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    # AdamW's step counts: 3 real updates of 6 in both
    steps = [s["step"] for s in states[True]["optimizer_states"][0]["state"].values()]
    assert all(float(s) == 3.0 for s in steps)
    assert math.isfinite(summaries[True]["final_val"]["val/loss"])


@pytest.mark.slow
def test_ablation_benchmark_runs_real_training_arms_on_cpu(tmp_path, prepared, monkeypatch):
    """benchmarks/training_ablations.py (the GPU session's issue18 stage) on a CPU, tiny preset:
    every requested arm trains and is reported with its ratio to the default and the old step."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "abl.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/training_ablations.py",
            "--data",
            str(prepared.path),
            "--preset",
            "tiny-0.1m",
            "--tokens",
            "1024",
            "--crop-length",
            "64",
            "--steps",
            "3",
            "--warmup",
            "2",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--arms",
            "default",
            "old",
            "head",
            "pack",
            "varlen",
            "--profile",
            "2",
            "--profile-trace",
            str(tmp_path / "trace.json.gz"),
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    )
    record = json.loads(out.read_text())
    summary = record["summary"]
    # the profile follows the default arm's timed steps; on a CPU it ranks host operators only
    (prof,) = [r["profile"] for r in record["rounds"]["default"]]
    assert prof["steps"] == 2 and prof["wall_ms_per_step"] > 0
    assert prof["device_busy_fraction"] is None and prof["top_host_ops"]
    assert all(
        "profile" not in r for a in ("old", "head", "pack", "varlen") for r in record["rounds"][a]
    )
    assert (tmp_path / "trace.json.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert set(summary) == {"default", "old", "head", "pack", "varlen"}
    assert all(s["residues_per_s"] > 0 and 0 < s["mfu"] for s in summary.values())
    assert summary["default"]["ratio_to_default"] == 1.0
    assert summary["old"]["ratio_to_old"] == 1.0 and summary["old"]["syncs_per_step"] is None
    # what the issue16 stage's PICK16 reads: start-up time per arm, and the settings it measured at
    assert all(s["startup_seconds"] > 0 for s in summary.values())
    monkeypatch.syspath_prepend(str(root / "scripts"))
    import pick_step

    assert pick_step.mismatch(record, preset="tiny-0.1m", tokens=1024, precision="auto") == ""
    assert pick_step.mismatch(record, preset="paper-33m") != ""


@pytest.mark.parametrize("first,then", [(False, True), (True, False)])
def test_a_resume_may_switch_fused_adamw(tmp_path, prepared, first, then):
    """The optimizer state of a checkpoint carries its ``fused`` switch; a resume follows the
    current setting (before, resuming a plain run with --fused-adamw failed in AdamW's step)."""
    from coordformer.train.run import pretrain

    def tc(fused, steps):
        return _train_config(max_steps=steps, fused_adamw=fused, log_every_steps=1)

    mc = preset("tiny-0.1m")
    pretrain(prepared.path, tmp_path / "r", mc, tc(first, 3), progress=False)
    s = pretrain(
        prepared.path, tmp_path / "r", mc, tc(then, 6), progress=False, callbacks=[PoisonGrads({4})]
    )
    assert s["global_step"] == 6 and s["skipped_steps"] == 1
    ck = torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["optimizer_states"][0]["param_groups"][0]["fused"] == (then or None)
    assert all(float(v["step"]) == 5.0 for v in ck["optimizer_states"][0]["state"].values())


@pytest.mark.parametrize(
    "max_steps,log_every", [(12, 2), (4, 25)], ids=["at-a-log-step", "in-the-last-steps"]
)
def test_fused_adamw_stops_a_diverged_run(tmp_path, prepared, monkeypatch, max_steps, log_every):
    """The device-side streak of skipped steps is checked every log_every_steps and at the end of
    training (a run that diverges after its last log step is caught too)."""
    from coordformer.errors import TrainingDivergedError
    from coordformer.train import mlm
    from coordformer.train.run import pretrain

    monkeypatch.setattr(mlm, "MAX_CONSECUTIVE_SKIPS", 3)
    tc = _train_config(max_steps=max_steps, fused_adamw=True, log_every_steps=log_every)
    with pytest.raises(TrainingDivergedError, match="steps in a row"):
        pretrain(
            prepared.path,
            tmp_path / "d",
            preset("tiny-0.1m"),
            tc,
            progress=False,
            callbacks=[PoisonGrads("all")],
        )


def test_training_batches_carry_the_models_position_limit():
    """Spatial crops keep positions below the model's max_len: the model no longer checks the
    positions of indexed batches, so the batch settings must."""
    from coordformer.train.run import batch_settings

    cfg = TrainConfig(crop_mode="spatial")
    assert batch_settings(cfg, True, 300).max_position == 300
    assert batch_settings(cfg, False, 300).max_position == 300


def test_fused_adamw_trains_under_bf16_mixed_precision_with_clipping(tmp_path, prepared):
    """GPU training's default (bf16-mixed, gradient clipping at 1.0, fused AdamW), on the CPU:
    Lightning's mixed-precision plugin refuses to clip for a fused optimizer, so the module clips
    itself (before, every GPU run stopped at its first step)."""
    from coordformer.train.run import pretrain

    tc = _train_config(max_steps=3, precision="bf16-mixed", accelerator="cpu")
    assert tc.fused_adamw and tc.grad_clip == 1.0
    s = pretrain(prepared.path, tmp_path / "b", preset("tiny-0.1m"), tc, progress=False)
    assert s["global_step"] == 3 and s["skipped_steps"] == 0
    ck = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values())


def test_fp16_mixed_precision_keeps_plain_adamw():
    """Under fp16, Lightning's GradScaler unscales before clipping, which a fused optimizer would
    skip: AdamW is not fused there whatever the setting."""
    from types import SimpleNamespace

    from coordformer.train.mlm import MaskedLMModule

    module = MaskedLMModule(preset("tiny-0.1m").to_dict(), TrainConfig().to_dict())
    module._trainer = SimpleNamespace(precision="16-mixed")
    assert module._fused() is False
    module._trainer = SimpleNamespace(precision="bf16-mixed")
    assert module._fused() is True


@pytest.mark.parametrize("accumulate", [1, 2])
def test_numbers_are_logged_only_for_the_steps_the_logger_writes(
    tmp_path, prepared, monkeypatch, accumulate
):
    """A Python number given to ``self.log`` becomes a device tensor (a host-to-device copy, which
    waits for the GPU). The learning rate and the minutes were logged every step; they are now
    logged for the steps whose row the logger writes, and every written row still has them,
    current (tokens/s too: it used to reach the row 24 steps late). The loss and accuracy, logged
    as tensors every step before, follow the same rule without a progress bar. With accumulation,
    once per step: on its last micro-batch."""
    import csv
    import numbers

    from coordformer.train.mlm import MaskedLMModule
    from coordformer.train.run import pretrain

    logged, every_value = [], []
    real_log = MaskedLMModule.log

    def spy(self, name, value, *args, **kwargs):
        if isinstance(value, numbers.Number) and name.startswith("train/"):
            logged.append((self.global_step, name))
        if name.startswith("train/"):
            every_value.append((self.global_step, name))
        return real_log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(MaskedLMModule, "log", spy)
    tc = _train_config(
        max_steps=20, log_every_steps=5, val_every_steps=1000, accumulate_grad_batches=accumulate
    )
    pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)
    assert logged and {step % 5 for step, _ in logged} == {4}
    assert len(logged) == len(set(logged))  # each number once per written step
    # the loss and accuracy tensors too: each self.log costs host time (no bar shows them here)
    assert {step % 5 for step, _ in every_value} == {4}
    assert ("train/loss" in {n for _, n in every_value}) and len(every_value) == len(
        set(every_value)
    )
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv")))
    written = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in written] == [4, 9, 14, 19]
    assert all(r["train/lr"] and r["train/minutes"] for r in written)
    # from the first written row on, the rate of the steps just before it
    assert all(float(r["train/tokens_per_s"]) > 0 for r in written)


def test_the_row_of_the_stopping_step_has_that_steps_values(tmp_path, prepared):
    """Lightning also writes a row on the step where training stops (time budget, signal), off the
    log_every_steps grid. Its loss, accuracy and rate must be that step's, not those of the last
    written step (review, 2026-11-27: they were up to log_every_steps - 1 steps old)."""
    import csv

    from lightning.pytorch.callbacks import Callback

    from coordformer.train.run import pretrain

    class StopAt(Callback):
        def __init__(self):
            self.losses = {}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses[batch_idx] = float(outputs["loss"])
            if batch_idx == 6:
                trainer.should_stop = True

    stop = StopAt()
    tc = _train_config(max_steps=20, log_every_steps=5, val_every_steps=1000)
    pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False,
             callbacks=[stop])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv")))
    written = {int(r["step"]): r for r in rows if r.get("train/loss")}
    assert sorted(written) == [4, 6]
    assert float(written[6]["train/loss"]) == pytest.approx(stop.losses[6], rel=1e-6)
    assert float(written[6]["train/loss"]) != pytest.approx(stop.losses[4], rel=1e-6)
    assert float(written[6]["train/tokens_per_s"]) > 0 and written[6]["train/lr"]


def test_accumulated_micro_batches_weigh_each_target_alike(tmp_path, prepared):
    """Two accumulated micro-batches give the gradient of the mean loss over all their targets,
    not the mean of their two mean losses (which weighs a target of the smaller micro-batch
    more). Checked against that loss computed directly, from the same weights and batches."""
    import copy

    from lightning.pytorch.callbacks import Callback

    from coordformer.train.run import pretrain

    class Capture(Callback):
        def __init__(self):
            self.batches, self.state, self.grads = [], None, None

        def on_train_start(self, trainer, module):
            self.state = copy.deepcopy(module.model.state_dict())

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.batches.append(batch)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:  # the step's gradient, after the optimizer step (no clipping)
                self.grads = {k: p.grad.clone() for k, p in module.model.named_parameters()}

    mc = preset("tiny-0.1m", recipe="fast")
    cap = Capture()
    tc = _train_config(max_steps=1, accumulate_grad_batches=2, grad_clip=0.0, tokens_per_batch=512)
    pretrain(prepared.path, tmp_path / "run", mc, tc, progress=False, callbacks=[cap])
    a, b = cap.batches
    n_a, n_b = (int((x.targets != -100).sum()) for x in (a, b))
    assert n_a != n_b  # otherwise both rules agree and the test shows nothing
    model = CoordFormer(mc)
    model.load_state_dict(cap.state)
    model.train()
    total = sum(
        torch.nn.functional.cross_entropy(
            model(**x.inputs(True)).logits.float().flatten(0, 1), x.targets.flatten(),
            ignore_index=-100, reduction="sum",
        )
        for x in (a, b)
    ) / (n_a + n_b)  # fmt: skip
    total.backward()
    worst = max(
        ((p.grad - cap.grads[k]).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
        for k, p in model.named_parameters()
        if p.grad is not None
    )
    assert worst < 1e-4, worst


def test_training_accuracy_is_recovery_over_the_20_amino_acids():
    # the <mask> column is the largest of the vocabulary, L the largest amino acid: counted as
    # correct, as evaluate's recovery counts it, not as wrong (a special token never is a target)
    from coordformer.constants import AA_OFFSET, AMINO_ACIDS, MASK, VOCAB_SIZE, token_of

    logits = torch.zeros(2, VOCAB_SIZE)
    logits[:, MASK] = 5.0
    leucine = token_of("L")
    logits[:, leucine] = 1.0
    targets = torch.tensor([leucine, AA_OFFSET + AMINO_ACIDS.index("A")])
    _, correct, n = target_loss(logits, targets)
    assert (int(correct), n) == (1, 2)
