"""coordformer simulate: synthetic point clouds, stacked training and the study pipeline."""

import csv
import json
import math

import pytest
import torch

from coordformer.cli import main
from coordformer.config import ConfigError, SimConfig
from coordformer.geometry import random_rotation
from coordformer.sim import studies
from coordformer.sim.studies import (
    PRESETS,
    SimPreset,
    build_jobs,
    drop_dimension,
    simulate,
    summarise_headdim,
)
from coordformer.sim.synthetic import (
    PointCloudAttention,
    distance_targets,
    learning_rates,
    make_point_clouds,
    noam_rate,
    train_run,
    train_stack,
)

SMALL = dict(
    d_model=16, n_heads=2, d_ff=32, n_train=256, n_valid=64, n_test=64, steps=30, eval_every=10
)


@pytest.mark.parametrize("dim", [1, 2, 3, 4])
def test_random_rotation_in_n_dimensions_is_proper(dim):
    r = random_rotation(200, torch.Generator().manual_seed(1), dtype=torch.float64, dim=dim)
    assert r.shape == (200, dim, dim)
    eye = torch.eye(dim, dtype=torch.float64).expand(200, -1, -1)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(r), torch.ones(200, dtype=torch.float64), atol=1e-10)
    if dim > 1:  # uniform: the mean rotation is zero
        assert r.mean(0).abs().max() < 0.2


def test_point_clouds_are_seeded_uniform_and_targets_follow_the_kernel():
    cfg = SimConfig(n_dims=2, exponent=1.5, **SMALL)
    a, b = make_point_clouds(cfg), make_point_clouds(cfg)
    assert torch.equal(a["train"].coords, b["train"].coords)
    assert a["train"].coords.shape == (256, 5, 2) and a["valid"].targets.shape == (64, 5, 5)
    x = a["train"].coords
    assert 0 <= x.min() and x.max() <= 200 and x.max() > 150
    d = torch.linalg.norm(x[0, 1] - x[0, 3])
    assert math.isclose(
        a["train"].targets[0, 1, 3].item(), math.exp(-((d / 200) ** 1.5)), rel_tol=1e-5
    )
    assert torch.allclose(torch.diagonal(a["train"].targets, dim1=-2, dim2=-1), torch.ones(256, 5))
    # a different model seed keeps the data; a different data seed changes it
    assert torch.equal(make_point_clouds(cfg.replace(seed=7))["valid"].coords, a["valid"].coords)
    assert not torch.equal(
        make_point_clouds(cfg.replace(data_seed=7))["valid"].coords, a["valid"].coords
    )
    # the validation set does not depend on the training-set size
    assert torch.equal(
        make_point_clouds(cfg.replace(n_train=10))["valid"].coords, a["valid"].coords
    )


def test_targets_are_rotation_invariant():
    x = torch.rand(10, 5, 3) * 200
    r = random_rotation(10, torch.Generator().manual_seed(0))
    assert torch.allclose(
        distance_targets(x, 200, 2), distance_targets(x @ r.transpose(-1, -2), 200, 2), atol=1e-5
    )


def test_row_output_is_one_at_each_rows_maximum_and_raw_is_exp_of_logits():
    torch.manual_seed(0)
    x = torch.rand(4, 5, 3) * 200
    row = PointCloudAttention(SimConfig(**SMALL))
    y = row(x)
    assert torch.allclose(y.amax(-1), torch.ones(4, 5))
    raw = PointCloudAttention(SimConfig(output="raw", **SMALL))
    assert torch.allclose(raw(x), raw.logits(x).exp())


def test_padding_the_head_changes_nothing():
    torch.manual_seed(0)
    x = torch.rand(3, 5, 2) * 200
    m = PointCloudAttention(SimConfig(n_dims=2, d_out=3, **SMALL))
    before = m(x)
    m.pad_head(8)
    assert m.query.weight.shape == (8, 16)
    assert torch.allclose(m(x), before, atol=1e-6)


def test_a_stacked_model_trains_as_it_would_alone():
    cfgs = [SimConfig(n_dims=2, d_out=h, seed=s, **SMALL) for h, s in ((1, 0), (3, 1), (2, 2))]
    stacked = train_stack(cfgs)
    for c, r in zip(cfgs, stacked):
        alone = train_run(c)
        assert alone["test_l1"] == pytest.approx(r["test_l1"], rel=1e-4)
        assert alone["best_step"] == r["best_step"]


def test_stack_refuses_configs_that_cannot_share_an_optimiser():
    with pytest.raises(ValueError, match="differ only"):
        train_stack([SimConfig(**SMALL), SimConfig(**{**SMALL, "d_model": 32})])


def test_schedules():
    assert noam_rate(4000, 256, 0.4, 4000) == pytest.approx(0.4 / 16 / math.sqrt(4000))
    assert (
        noam_rate(2000, 256, 0.4, 4000)
        < noam_rate(4000, 256, 0.4, 4000)
        > noam_rate(8000, 256, 0.4, 4000)
    )
    rates = learning_rates(SimConfig(steps=1000, lr=2e-3))
    assert len(rates) == 1000 and rates[0] == pytest.approx(2e-3 / 25)
    assert max(rates) == pytest.approx(2e-3) and rates[-1] < 1e-6


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="output"):
        SimConfig(output="softmax")
    with pytest.raises(ConfigError, match="regime"):
        SimConfig(regime="sgd")


def test_drop_dimension():
    assert drop_dimension({1: 0.1, 2: 0.05, 3: 0.004, 4: 0.003}) == 3
    assert drop_dimension({1: 0.1, 2: 0.05, 3: 0.02}) is None
    # a dimension whose runs all diverged drops to nothing and from nothing: the drop is at 3
    assert drop_dimension({1: math.inf, 2: 0.05, 3: 0.004}) == 3
    assert drop_dimension({1: 0.1, 2: math.inf, 3: 0.001}) is None
    recs = summarise_headdim(
        [
            {"regime": "modern", "output": "row", "n": 2, "d_out": h, "seed": s, "test_l1": v}
            for h, v3 in ((2, 0.05), (3, 0.001), (4, 0.001))
            for s, v in ((0, v3), (1, v3 * 2), (2, math.inf))
        ]
    )
    # the median is over the finished seeds, and so is the count (seed 2 diverged)
    assert recs[0]["drop_at"] == 3 and recs[0]["theory"] == 3 and recs[0]["seeds"] == 2
    assert recs[0]["floor_at"] == 3


def test_quick_preset_covers_the_three_effects():
    jobs = build_jobs(PRESETS["quick"], studies.STUDIES)
    kinds = {j.study for j in jobs}
    assert {"exponent", "headdim", "augment"} <= kinds
    exps = sorted({c.exponent for j in jobs if j.study == "exponent" for c in j.configs})
    assert exps == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    aug = [c for j in jobs if j.study == "augment" for c in j.configs]
    assert {c.augment for c in aug} == {False, True} and {c.n_train for c in aug} == {100}
    # the x axis of the head-dim study is the output head's own dimension
    hd = [c for j in jobs if j.study == "headdim" for c in j.configs]
    assert {c.d_out for c in hd} == set(range(1, 7)) and {c.d_model for c in hd} == {32}
    # the width study reproduces the paper's coupling: one head of d_model = 8x
    w = [c for j in build_jobs(PRESETS["standard"], ("width",)) for c in j.configs]
    assert all(c.n_heads == 1 and c.d_out == c.d_model for c in w)


@pytest.fixture
def tiny_preset(monkeypatch):
    p = SimPreset(
        name="tiny",
        base=SMALL,
        exponents=(1.0, 2.0),
        dims=(1, 2),
        head_dims=(1, 2, 3),
        seeds=(0,),
        regimes={"modern": {}, "paper": dict(regime="paper", batch_size=8, warmup=10)},
        width_dims=(2,),
        width_xs=(1, 2),
        augment_n_train=20,
        augment_overrides=dict(steps=40),
    )
    monkeypatch.setitem(PRESETS, "tiny", p)
    return p


@pytest.mark.slow
def test_simulate_writes_every_output_and_resumes(tmp_path, tiny_preset):
    out = tmp_path / "sim"
    summary = simulate(out, preset="tiny", workers=1, progress=False)
    for study in ("exponent", "headdim", "width", "augment"):
        assert (out / f"{study}.csv").stat().st_size > 0
        assert (out / f"{study}.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(out / "headdim.csv")))
    # modern: row + raw for n = 1, 2; paper: row only -> 3 x 2 x 3 head dims
    assert len(rows) == 18 and {r["output"] for r in rows} == {"row", "raw"}
    assert {s["study"] for s in summary} >= {
        "exponent",
        "headdim modern row n=2",
        "headdim paper row n=1",
    }
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == len(summary) + 1  # header + one line per summary entry
    assert json.loads((out / "simulate.json").read_text())["preset_settings"]["name"] == "tiny"
    n_runs = len(list((out / "runs").rglob("*.json")))
    messages = []
    again = simulate(out, preset="tiny", workers=1, progress=False, echo=messages.append)
    assert again == summary
    assert messages == [f"reusing {n_runs} finished stacks from {out / 'runs'}"]


@pytest.mark.slow
def test_simulate_in_worker_processes_matches_in_process(tmp_path, tiny_preset):
    a = simulate(
        tmp_path / "a", preset="tiny", studies=("exponent", "augment"), workers=1, progress=False
    )
    b = simulate(
        tmp_path / "b", preset="tiny", studies=("exponent", "augment"), workers=2, progress=False
    )
    assert (
        len(list((tmp_path / "b" / "runs").rglob("*.json"))) == 2
    )  # two stacks, so two processes ran
    assert a == b


@pytest.mark.slow
def test_head_dimension_n_plus_1_learns_the_gaussian_and_n_does_not():
    """The core effect at small scale: for n = 2, head dim 3 reaches a loss several times lower
    than 2."""
    cfgs = [
        SimConfig(n_dims=2, d_out=h, d_model=32, n_heads=4, d_ff=128, steps=600, eval_every=100)
        for h in (2, 3)
    ]
    low, high = train_stack(cfgs)
    assert high["test_l1"] * 4 < low["test_l1"]


def test_cli_simulate_rejects_bad_arguments_in_one_line(tmp_path, capsys):
    assert main(["simulate", "--preset", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown --preset 'huge'") and "\n" not in err
    assert main(["simulate", "--study", "exponents"]) == 2
    assert "choose from exponent, headdim, width, augment" in capsys.readouterr().err
    # a negative seed would fail inside every stack after minutes of work; --quick is a preset
    assert main(["simulate", "--quick", "--seed", "-1", "-o", str(tmp_path / "s")]) == 2
    assert "--seed -1: must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["simulate", "--quick", "--preset", "paper"]) == 2
    assert "give one of --quick and --preset paper" in capsys.readouterr().err


def test_labels_give_the_seeds_the_models_trained_with():
    for job in build_jobs(PRESETS["quick"], studies.STUDIES, seed_offset=5):
        assert [lab["seed"] for lab in job.labels] == [c.seed for c in job.configs]


def test_a_failing_stack_is_reported_and_the_others_are_kept(tmp_path, tiny_preset, monkeypatch):
    from coordformer.errors import CoordformerError

    real = studies._run_job

    def flaky(job, device):
        if job.study == "augment":
            raise RuntimeError("boom")
        return real(job, device)

    monkeypatch.setattr(studies, "_run_job", flaky)
    messages = []
    with pytest.raises(CoordformerError, match="1 of 2 stacks failed"):
        simulate(
            tmp_path,
            preset="tiny",
            studies=("exponent", "augment"),
            workers=1,
            progress=False,
            echo=messages.append,
        )
    assert any("failed: RuntimeError: boom" in m for m in messages)
    assert len(list((tmp_path / "runs" / "exponent").glob("*.json"))) == 1
