"""Model-FLOPs arithmetic behind the MFU figures (issue 18)."""

import pytest
import torch

from coordformer.config import preset
from coordformer.model.core import CoordFormer
from coordformer.model.flops import (
    flops_per_token,
    matrix_params,
    measured_matmul_rate,
    training_flops,
)


def test_matrix_params_are_the_models_weight_matrices():
    for name in ("tiny-0.1m", "paper-33m"):
        for recipe in ("fast", "paper"):
            c = preset(name, recipe=recipe)
            m = CoordFormer(c)
            mats = sum(
                p.numel()
                for n, p in m.named_parameters()
                if p.ndim == 2 and not n.startswith("tokens")
            )
            assert matrix_params(c) == mats


def test_a_conditioned_model_counts_its_language_model_connector():
    c = preset("tiny-0.1m", recipe="paper")
    conditioned = c.replace(condition_on="esm2_t6_8M", lm_dim=320)
    assert matrix_params(conditioned) - matrix_params(c) == 320 * c.d_model


def test_training_flops_count_matrices_and_attention_per_sequence():
    c = preset("paper-33m")
    n = matrix_params(c)
    assert training_flops(c, [100]) == pytest.approx(6 * n * 100 + 12 * 6 * 768 * 100**2)
    # padding costs nothing here: two sequences are the sum of each, not a [2, 300] block
    assert training_flops(c, [100, 300]) == pytest.approx(
        training_flops(c, [100]) + training_flops(c, [300])
    )
    # at L = 512 attention adds 12 * 6 * 768 * 512 / (6 N) ~ 14% to the paper model's matrix work
    assert flops_per_token(c, 512) / (6 * n) == pytest.approx(1 + 12 * 6 * 768 * 512 / (6 * n))


def test_a_forward_backward_costs_about_what_the_count_says():
    """torch's own FLOP counter on one training step of the tiny model agrees within 2%. (The
    explicit softmax path, need_attention=True: the counter does not see CPU's fused SDPA
    kernel.)"""
    from torch.utils.flop_counter import FlopCounterMode

    c = preset("tiny-0.1m", recipe="paper")
    m = CoordFormer(c)
    tok = torch.randint(5, 25, (2, 64))
    with FlopCounterMode(display=False) as fc:
        m(tok, torch.randn(2, 64, 4, 3), need_attention=True).logits.sum().backward()
    assert fc.get_total_flops() == pytest.approx(training_flops(c, [64, 64]), rel=0.02)


def test_a_head_run_on_the_targets_alone_is_charged_for_them_alone():
    """With logits_at_targets (the default) the MLM head runs on the ~15% masked positions: the
    count charged it for every residue (2.5% too high at tiny-0.1m, 1.4% at paper size)."""
    from torch.utils.flop_counter import FlopCounterMode

    from coordformer.model.flops import head_params

    c = preset("tiny-0.1m", recipe="paper")
    m = CoordFormer(c)
    tok = torch.randint(5, 25, (2, 64))
    at = torch.arange(0, 128, 7)  # 19 positions of the flattened batch
    with FlopCounterMode(display=False) as fc:
        m(tok, torch.randn(2, 64, 4, 3), need_attention=True, logits_at=at).logits.sum().backward()
    counted = training_flops(c, [64, 64], head_positions=len(at))
    assert type(counted) is float  # summed into checkpoints, which resume weights-only
    assert fc.get_total_flops() == pytest.approx(counted, rel=0.02)
    assert training_flops(c, [64, 64]) - counted == 6 * head_params(c) * (128 - len(at))


def test_matmul_rate_is_positive_on_cpu_and_timed_long_enough():
    import time

    assert measured_matmul_rate("cpu", n=256, trials=2) > 1e6
    # each trial runs at least min_seconds: a few milliseconds of products measured a GPU still
    # raising its clocks, and made every utilisation divided by it too high
    t0 = time.perf_counter()
    measured_matmul_rate("cpu", n=128, trials=3, min_seconds=0.05, warmup_seconds=0.02)
    assert time.perf_counter() - t0 >= 3 * 0.05 + 0.02


def test_pretrain_reports_model_flops_and_utilisation(tmp_path, prepared):
    import json

    from coordformer.config import TrainConfig
    from coordformer.train.run import pretrain

    tc = TrainConfig(
        max_steps=3,
        warmup_steps=1,
        tokens_per_batch=512,
        crop_length=64,
        val_every_steps=1000,
        accelerator="cpu",
        threads=1,
    )
    s = pretrain(
        prepared.path, tmp_path / "run", preset("tiny-0.1m", recipe="fast"), tc, progress=False
    )
    assert s["model_tflops_per_s"] > 0 and s["matmul_tflops_per_s"] > 0 and 0 < s["mfu"] < 2
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    flops = ck["coordformer"]["model_flops"]
    # three steps of at most 512 residues each, and at least one residue each
    c = preset("tiny-0.1m", recipe="fast")
    assert training_flops(c, [1, 1, 1]) < flops <= 3 * training_flops(c, [64] * 8)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mfu"] == s["mfu"]


def test_pretrain_rates_divide_the_work_of_n_steps_by_the_time_of_the_same_n(
    tmp_path, prepared, monkeypatch
):
    """A step's time runs from its start to the next one's, but its FLOPs and residues were
    counted at once: every rate counted one step too many (the summary's MFU +1/N, the first
    logged tokens/s +4% at 25 steps a row). Now a step counts when its interval closes."""
    from coordformer.config import TrainConfig
    from coordformer.train import mlm
    from coordformer.train.run import pretrain

    monkeypatch.setattr(mlm, "training_flops", lambda *a, **k: 1.0)  # one "FLOP" per step
    tc = TrainConfig(
        max_steps=4,
        warmup_steps=1,
        tokens_per_batch=512,
        crop_length=64,
        val_every_steps=1000,
        accelerator="cpu",
        threads=1,
    )
    pretrain(prepared.path, tmp_path / "run", preset("tiny-0.1m"), tc, progress=False)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    # steps 0-2 closed by their successors' starts; step 3's interval was never timed
    assert ck["coordformer"]["model_flops"] == 3.0
