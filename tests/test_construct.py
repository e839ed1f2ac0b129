"""The hand-built Gaussian-attention weights (issue: theory demonstrated)."""

import pytest
import torch

from coordformer.sim.construct import (
    ApproxSquareFFN,
    best_fit_attention,
    features,
    gaussian_kernel,
    normalised_head,
    one_layer_attention,
    square_ffn_exact,
    unnormalised_head,
)


def _clouds(n, count=50, points=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(count, points, n, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("sigma", [0.15, 0.5, 2.0])
def test_head_dim_n_plus_1_gives_the_normalised_gaussian_exactly(n, sigma):
    x = _clouds(n)
    head = normalised_head(n, sigma)
    assert head.d_head == n + 1
    err = (one_layer_attention(x, head) - gaussian_kernel(x, sigma, normalised=True)).abs().max()
    assert err < 1e-5 and err < 1e-12  # float64: exact up to rounding


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_head_dim_n_plus_2_gives_exact_logits_and_the_unnormalised_kernel(n):
    x, sigma = _clouds(n), 0.4
    head = unnormalised_head(n, sigma)
    assert head.d_head == n + 2
    d2 = (x.unsqueeze(-2) - x.unsqueeze(-3)).pow(2).sum(-1)
    logits = head.logits(features(x, square_ffn_exact(x)))
    assert (logits + d2 / (2 * sigma**2)).abs().max() < 1e-12
    assert (logits.exp() - gaussian_kernel(x, sigma, normalised=False)).abs().max() < 1e-12


def test_normalised_head_is_not_an_unnormalised_kernel():
    # The n + 1 head's raw logits carry the per-query term |x_i|^2/(2 sigma^2): only softmax removes
    # it.
    x, sigma = _clouds(3), 0.5
    logits = normalised_head(3, sigma).logits(features(x))
    assert (logits.exp() - gaussian_kernel(x, sigma, normalised=False)).abs().max() > 1e-3


@pytest.mark.slow
def test_head_dim_n_cannot_reach_the_kernel_but_n_plus_1_can_be_learned():
    _, err_n = best_fit_attention(2, 2, sigma=0.5, steps=800, restarts=1)
    _, err_n1 = best_fit_attention(2, 3, sigma=0.5, steps=800, restarts=1)
    assert err_n > 0.01  # measurably wrong
    assert err_n1 < err_n / 100


def test_standard_ffn_approximates_the_square_better_with_width():
    x = _clouds(3, count=400).reshape(-1, 3)
    truth = (x * x).sum(-1)
    assert (square_ffn_exact(x) - truth).abs().max() < 1e-12
    for act in ("relu", "gelu"):
        errs = [
            (ApproxSquareFFN.fit(act, w, 3)(x) - truth).abs().max().item() for w in (12, 48, 192)
        ]
        assert errs[0] > errs[1] > errs[2]
        assert errs[2] < 1e-3
    # and the attention built on the approximate square converges to the exact Gaussian
    head = normalised_head(3, 0.5)
    target = gaussian_kernel(x.reshape(400, 6, 3), 0.5, True)
    approx = [
        (
            one_layer_attention(x.reshape(400, 6, 3), head, ApproxSquareFFN.fit("relu", w, 3))
            - target
        )
        .abs()
        .max()
        for w in (12, 192)
    ]
    assert approx[1] < approx[0] / 10


def test_construct_saves_its_settings_beside_the_tables(tmp_path, monkeypatch, capsys):
    """`construct --out DIR` wrote CSVs and a figure but no record of --sigma or --seed."""
    import json
    import shlex
    import sys

    import coordformer.sim.construct as construct
    from coordformer import __version__
    from coordformer.cli import main

    full = construct.construction_report
    # the best fits' 1500 Adam steps are the slow part; the record is what is tested here
    monkeypatch.setattr(
        construct, "construction_report", lambda *a, **k: full(*a, **{**k, "steps": 3})
    )
    argv = ["construct", "--out", str(tmp_path / "c"), "--sigma", "0.7", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", ["coordformer", *argv])
    assert main(argv) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text()) == {
        "construct": {"sigma": 0.7, "seed": 3, "steps": 3},
        "command": "coordformer " + shlex.join(argv),
        "coordformer_version": __version__,
    }
    assert (tmp_path / "c" / "construction_attention.csv").exists()
    # its own folder again: fine; a training run's folder: refused, its config.json left whole
    assert main(argv) == 0
    run = tmp_path / "run"
    run.mkdir()
    record = json.dumps({"train_config": {}, "command": "coordformer pretrain --data d --out run"})
    (run / "config.json").write_text(record)
    assert main(["construct", "--out", str(run)]) == 2
    assert "holds the output of `coordformer pretrain`" in capsys.readouterr().err
    assert (run / "config.json").read_text() == record
    # a folder whose config.json records no command (an exported model, a run started from Python,
    # anything else) is not construct's either; a global option before the command is skipped
    for other, who in (
        ({"model_type": "coordformer", "coordformer_meta": {}}, "`coordformer export`"),
        ({"model_config": {}, "train_config": {}}, "`coordformer pretrain`"),
        ({"finetune": {}, "model": {}, "command": ""}, "`coordformer finetune`"),
        ({"model_type": "bert"}, "another program"),
    ):
        (run / "config.json").write_text(json.dumps(other))
        assert main(["construct", "--out", str(run)]) == 2
        assert f"holds the output of {who}" in capsys.readouterr().err
        assert json.loads((run / "config.json").read_text()) == other
    mine = {"construct": {}, "command": "coordformer --debug construct -o c"}
    (run / "config.json").write_text(json.dumps(mine))
    assert main(argv[:1] + ["--out", str(run), "--sigma", "0.7"]) == 0
