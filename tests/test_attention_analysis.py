"""analyze-attention: streaming attention statistics, Gaussian fits, ablations and the report."""

import csv
import json
import math
import types

import numpy as np
import pytest
import torch

from conftest import pretrain_args, write_jsonl
from coordformer.analysis.attention import (
    AttentionAnalysisConfig,
    AttentionStats,
    chains_attention,
    classify_heads,
    collect_attention,
    fit_all,
    fit_gaussian,
    summary_heads,
)
from coordformer.cli import main
from coordformer.config import ModelConfig, PrepareConfig
from coordformer.data.prepare import prepare
from coordformer.data.store import PreparedDataset
from coordformer.errors import UsageError
from coordformer.io import iter_chain_set
from coordformer.model import CoordFormer
from coordformer.sim.construct import features, normalised_head


class ConstructedGaussianHeads(torch.nn.Module):
    """One layer whose heads are the exact construction of ``sim.construct`` (head dim n + 1 = 4):
    softmax attention equal to the normalised Gaussian kernel of CA distance, sigma in Angstrom."""

    def __init__(self, sigmas):
        super().__init__()
        self.heads = [normalised_head(3, s) for s in sigmas]

    def forward(self, tokens, coords, padding_mask=None, need_attention=False, ablate=()):
        ca = coords[:, :, 1].double()
        ok = ~torch.isnan(ca).any(-1) & padding_mask
        f = features(torch.nan_to_num(ca))
        maps = [
            h.logits(f).masked_fill(~ok[:, None, :], float("-inf")).softmax(-1).nan_to_num()
            for h in self.heads
        ]
        return types.SimpleNamespace(attentions=[torch.stack(maps, 1).float()])


class ArtefactHeads(torch.nn.Module):
    """One layer of hand-made heads that fooled the first analysis (session 16 audit): a Gaussian
    head that also prefers the query itself (``self_bonus``: its logit on itself raised by that
    many nats), a Gaussian head mixed with evenly spread attention (``floor``: that share spread
    over every residue), a head that attends mostly to itself, and one that ignores distance."""

    def __init__(self, sigma=6.0, self_bonus=math.log(3.0), floor=0.3):
        super().__init__()
        self.gauss = normalised_head(3, sigma)
        self.self_bonus, self.floor = self_bonus, floor

    def forward(self, tokens, coords, padding_mask=None, need_attention=False, ablate=()):
        ca = coords[:, :, 1].double()
        ok = ~torch.isnan(ca).any(-1) & padding_mask
        logits = self.gauss.logits(features(torch.nan_to_num(ca)))
        logits = logits.masked_fill(~ok[:, None, :], float("-inf"))
        eye = torch.eye(ca.shape[1], dtype=torch.double)
        uniform = padding_mask[:, None, :].double().expand_as(logits)
        uniform = uniform / uniform.sum(-1, keepdim=True)
        gauss = logits.softmax(-1).nan_to_num()
        maps = [
            (logits + self.self_bonus * eye).softmax(-1).nan_to_num(),  # self-preferring
            (1 - self.floor) * gauss + self.floor * uniform,  # over a floor
            0.9 * eye + 0.1 * uniform,  # mostly itself
            uniform,  # ignores distance; 1 / L in chains of 30-120 residues
        ]
        return types.SimpleNamespace(attentions=[torch.stack(maps, 1).float()])


def _dataset(tmp_path, records, name="ds"):
    src = write_jsonl(records, tmp_path / f"{name}.jsonl")
    prepare(
        [str(src)],
        tmp_path / name,
        PrepareConfig(min_length=10, valid_fraction=0.0, test_fraction=1.0),
        workers=1,
        progress=False,
    )
    return PreparedDataset(tmp_path / name)


def _helix(i, length):
    """An ideal alpha-helix CA trace (radius 2.3 A, 1.5 A rise, 100 degrees a residue): as in real
    proteins and unlike random walks, every residue's nearest other CA is a chain neighbour at
    3.8 A."""
    t = np.radians(100.0) * np.arange(length)
    ca = np.stack([2.3 * np.cos(t), 2.3 * np.sin(t), 1.5 * np.arange(length)], 1) + 7.0 * i
    coords = {
        a: (ca + off).round(3).tolist()
        for a, off in zip(("N", "CA", "C", "O"), (-1.0, 0.0, 1.0, 2.0))
    }
    return {"name": f"H{i:03d}.A", "seq": "ACDEFGHIKL" * (length // 10), "coords": coords}


def _ring(i, length=60, radius=40.0):
    """CA atoms evenly on a circle: every residue sees the same distances, so the softmax
    normaliser is the same for every query and the mean weight is exactly proportional to the
    kernel."""
    t = np.arange(length) * 2 * np.pi / length
    ca = np.stack([radius * np.cos(t), radius * np.sin(t), np.zeros(length)], 1) + i
    coords = {
        a: (ca + off).round(3).tolist()
        for a, off in zip(("N", "CA", "C", "O"), (-1.0, 0.0, 1.0, 2.0))
    }
    return {"name": f"R{i:03d}.A", "seq": "ACDEFGHIKL" * (length // 10), "coords": coords}


@pytest.mark.parametrize("sigma", [4.0, 6.0, 10.0])
def test_fit_recovers_the_sigma_of_constructed_gaussian_heads(tmp_path, synthetic_jsonl, sigma):
    model = ConstructedGaussianHeads([sigma])
    cfg = AttentionAnalysisConfig(max_chains=None, max_distance=40.0)
    # helices of 30-120 residues: the query-normalised quantity is the kernel over its value at
    # the nearest other residue, 3.8 A for every query (as in real proteins, where it recovers
    # sigma to 0.3%: docs/RESULTS.md); random walks, which cross themselves, widen it a little
    helices = _dataset(tmp_path, [_helix(i, 30 + 10 * i) for i in range(10)], "helices")
    walk = _dataset(tmp_path, [json.loads(x) for x in open(synthetic_jsonl)], "walk")
    for data, tol in ((helices, 0.01), (walk, 0.1)):
        rel = [
            r
            for r in fit_all(collect_attention(model, data, cfg, progress=False))
            if r["kind"] == "distance" and r["quantity"] == "relative"
        ]
        assert rel[0]["sigma"] == pytest.approx(sigma, rel=tol)
    # the plain mean weight carries the per-query normaliser; on a ring it is constant
    ring = _dataset(tmp_path, [_ring(i) for i in range(8)], "ring")
    fits = fit_all(collect_attention(model, ring, cfg, progress=False))
    d = next(r for r in fits if r["kind"] == "distance" and r["quantity"] == "attention")
    assert d["sigma"] == pytest.approx(sigma, rel=0.05) and d["r2"] > 0.99
    # fit_all of one pass (no ablation recorded) goes straight into classify_heads, whose sigma
    # is of the relative attention (with a floor)
    calls = {(h["layer"], h["head"]): h for h in classify_heads(fits)}
    r = next(r for r in fits if r["kind"] == "distance" and r["quantity"] == "relative")
    assert (
        calls[(d["layer"], d["head"])]["sigma_3d"] == r["sigma"] == pytest.approx(sigma, rel=0.01)
    )
    # the same from Chain objects in memory (no prepared dataset)
    chains = list(iter_chain_set(write_jsonl([_ring(i) for i in range(8)], tmp_path / "r.jsonl")))
    mem_fits, heads = chains_attention(model, chains, cfg, ablations=("none",))
    m = next(r for r in mem_fits if r["kind"] == "distance" and r["quantity"] == "relative")
    assert m["ablation"] == "none" and m["sigma"] == pytest.approx(r["sigma"], rel=1e-6)
    assert heads[0]["sigma_3d"] == m["sigma"]


def test_self_attention_floors_and_chain_length_do_not_fake_or_bend_3d_local_heads(tmp_path):
    sigma = 6.0
    helices = [_helix(i, 30 + 10 * i) for i in range(10)]  # 30-120 residues
    chains = list(iter_chain_set(write_jsonl(helices, tmp_path / "helices.jsonl")))
    cfg = AttentionAnalysisConfig(max_chains=None, max_distance=40.0)
    fits, heads = chains_attention(
        ArtefactHeads(sigma), chains, cfg, ablations=("none", "no-positions")
    )
    prefers_self, floored, mostly_self, uniform = heads
    # the query's own weight is apart from the distance bins: it neither narrows sigma ...
    assert prefers_self["self"] > 0.15 and prefers_self["local_3d"]
    assert prefers_self["sigma_3d_only"] == pytest.approx(sigma, rel=0.02)
    # (the paper's quantity keeps the self point at 0 A, and is narrowed by it)
    assert prefers_self["sigma_3d_paper"] < 0.8 * sigma
    # ... nor makes a head that attends to itself look like a narrow Gaussian of distance
    assert mostly_self["self"] == pytest.approx(0.9, abs=0.01) and not mostly_self["local_3d"]
    # attention spread over every residue is a floor, not a wider Gaussian
    assert floored["local_3d"] and floored["sigma_3d_only"] == pytest.approx(sigma, rel=0.1)
    # a head that ignores distance is not 3D-local, however its 1 / L weights pool
    assert not uniform["local_3d"] and not uniform["contrast_3d_only"] >= 0.1  # NaN: no fit
    rel = [f for f in fits if f["quantity"] == "relative" and f["kind"] == "distance"]
    assert not any(f["baseline"] < 0.0 for f in rel) and len(rel) == 2 * 4


def _captured(monkeypatch):
    """Keep the figures the plotting functions save, instead of closing them."""
    from coordformer.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    return plots, figs


def test_layer_figure_draws_the_relative_fit_the_calls_use(tmp_path, monkeypatch):
    sigma = 6.0
    data = _dataset(tmp_path, [_helix(i, 30 + 10 * i) for i in range(10)], "helices")
    cfg = AttentionAnalysisConfig(max_chains=None, max_distance=40.0)
    stats = collect_attention(ArtefactHeads(sigma), data, cfg, progress=False)
    fits = fit_all(stats)
    # the relative quantity has its own value histograms, of the same pairs, all at most 1
    assert torch.equal(
        stats.hist_dist_rel.view(1, 4, -1, 61).sum(-1), stats.hist_dist.view(1, 4, -1, 61).sum(-1)
    )
    q = stats.percentiles("distance", quantity="relative")
    assert np.nanmax(q) <= 1.0 and np.nanmax(q) == pytest.approx(1.0)
    # the constructed heads ignore positions: the unablated fits stand in for the ablation's
    heads = classify_heads(
        fits + [{**f, "ablation": "no-positions"} for f in fits if f["kind"] == "distance"]
    )
    plots, figs = _captured(monkeypatch)
    plots.attention_layer_figure(stats, fits, 1, tmp_path / "l1.png", heads=heads)
    axes = figs[0].axes
    rel = [f for f in fits if f["quantity"] == "relative" and f["kind"] == "distance"]
    for h, ax in enumerate(axes[:4]):
        title = ax.get_title()
        if np.isfinite(rel[h]["sigma"]):  # the panel's sigma is the relative fit's (report.md's)
            assert f"σ={rel[h]['sigma']:.1f} Å" in title
        assert ("3D-local" in title) == heads[h]["local_3d"]
    assert "σ=6.0 Å" in axes[1].get_title() and axes[0].get_ylabel() == "relative attention"
    # the red curve is the Gaussian over its floor, the floor drawn dashed
    curve = next(line for line in axes[1].lines if len(line.get_xdata()) == 200)
    assert curve.get_ydata().min() == pytest.approx(rel[1]["baseline"], rel=1e-3)
    assert any(line.get_linestyle() == "--" for line in axes[1].lines)
    # the plain weight is still available, labelled as such
    plots.attention_layer_figure(stats, fits, 1, tmp_path / "w.png", quantity="attention")
    assert figs[1].axes[0].get_ylabel() == "attention"


def test_summary_draws_the_local_heads_and_the_papers_sigmas(tmp_path, monkeypatch):
    def head(layer, h, local_3d=None, sigma_3d=5.0, r2_3d=0.95, contrast_3d=4.0):
        row = {
            "layer": layer,
            "head": h,
            "sigma_3d": sigma_3d,
            "r2_3d": r2_3d,
            "contrast_3d": contrast_3d,
            "sigma_3d_paper": 3.0,
            "sigma_seq": 50.0,
            "r2_seq": 0.1,
            "contrast_seq": 0.5,
        }
        if local_3d is not None:
            row.update(local_3d=local_3d, local_seq=False, contrast_3d_only=7.0)
        return row

    called = [head(1, 0, True), head(1, 1, False), head(2, 0, True, sigma_3d=20.0)]
    sel = summary_heads(called)
    assert [h["head"] for h in sel["distance"][0]] == [0, 0] and sel["distance"][1]
    assert sel["separation"] == ([], True)
    # without the ablation the unablated fit is held to the same tests (sigma <= 12 A)
    uncalled = summary_heads([head(1, 0), head(1, 1, r2_3d=0.5), head(2, 0, sigma_3d=20.0)])
    assert [(h["layer"], h["head"]) for h in uncalled["distance"][0]] == [(1, 0)]
    assert not uncalled["distance"][1]
    plots, figs = _captured(monkeypatch)
    plots.attention_summary_figure({"m": sel}, tmp_path / "s.png", paper_sigmas=(4.7, 2.7))
    ax = figs[0].axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    # two local heads (filled and open markers) and the paper's two layers
    assert sorted(points[:, 1].tolist()) == [2.7, 3.0, 3.0, 4.7, 5.0, 20.0]
    assert "3D-local heads" in ax.get_title()
    # peak / floor of the pass that made the call, as report.md's column
    low = np.concatenate([c.get_offsets() for c in figs[0].axes[2].collections])
    assert low[:, 1].tolist() == [7.0, 7.0]
    assert "no local head" in [t.get_text() for t in figs[0].axes[1].texts]


def test_fit_gaussian_on_known_curves():
    x = np.arange(0.5, 32, 1.0)
    f = fit_gaussian(x, 0.3 * np.exp(-(x**2) / (2 * 5.0**2)), zero_mean=True)
    assert f["sigma"] == pytest.approx(5.0, rel=1e-4) and f["amplitude"] == pytest.approx(
        0.3, rel=1e-4
    )
    assert f["r2"] == pytest.approx(1.0) and f["mean"] == 0.0
    s = np.arange(-20, 21, dtype=float)
    g = fit_gaussian(s, 0.1 * np.exp(-((s - 1.0) ** 2) / (2 * 2.0**2)), zero_mean=False)
    assert g["mean"] == pytest.approx(1.0, abs=1e-3) and g["sigma"] == pytest.approx(2.0, rel=1e-3)
    flat = fit_gaussian(x, np.full_like(x, 0.01) + 0.001 * np.sin(x), zero_mean=True)
    assert flat["r2"] < 0.5  # a flat head is not called Gaussian
    assert math.isnan(fit_gaussian(x[:2], x[:2], zero_mean=True)["sigma"])


def test_streaming_statistics_do_not_depend_on_batching_and_have_fixed_size(prepared):
    torch.manual_seed(0)
    model = CoordFormer(ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64))
    small = collect_attention(
        model,
        prepared,
        AttentionAnalysisConfig(split="train", tokens_per_batch=512, crop_length=128),
        progress=False,
    )
    big = collect_attention(
        model,
        prepared,
        AttentionAnalysisConfig(split="train", tokens_per_batch=8192, crop_length=128),
        progress=False,
    )
    assert torch.allclose(small.sum_dist, big.sum_dist, rtol=1e-4, atol=1e-8)
    assert torch.equal(small.count_sep, big.count_sep) and torch.equal(
        small.hist_dist, big.hist_dist
    )
    few = collect_attention(
        model,
        prepared,
        AttentionAnalysisConfig(split="train", max_chains=3, crop_length=128),
        progress=False,
    )
    assert (
        few.n_chains == 3 and few.hist_dist.shape == big.hist_dist.shape
    )  # memory set by bins only
    # every pair within the cut-off is counted once per head: weights of a query sum to at most 1
    pairs = int(big.count_sep.sum())
    assert 0 < big.sum_sep[0, 0].sum() <= pairs
    q = big.percentiles("distance")
    assert np.all(
        np.isnan(q[:, :, :, 1]) == (big.count_dist[1] == 0).item()
    )  # empty 1-2 A bin -> NaN


def test_ablations_zero_exactly_one_signal(prepared):
    torch.manual_seed(0)
    model = CoordFormer(ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64)).eval()
    tokens = torch.randint(4, 24, (2, 10))
    coords = torch.randn(2, 10, 4, 3) * 10
    full = model.embed(tokens, coords)
    no_pos = model.embed(tokens, coords, ablate=("positions",))
    assert torch.allclose(full - no_pos, model.positions[:10].expand(2, -1, -1), atol=1e-5)
    no_xyz = model.embed(tokens, coords, ablate=("coords",))
    assert torch.allclose(
        no_xyz, model.tokens(tokens) + model.positions[:10] + model.coord_embed.bias, atol=1e-5
    )
    assert torch.allclose(
        model.embed(tokens, coords * 0 + 5.0, ablate=("coords",)), no_xyz, atol=1e-5
    )
    with pytest.raises(UsageError, match="ablation"):
        model.embed(tokens, coords, ablate=("tokens",))


def test_heads_are_classified_from_the_ablation_fits():
    def rows(kind, ab, sigma, r2, baseline=0.0):
        return [
            {
                "layer": 1,
                "head": 0,
                "kind": kind,
                "ablation": ab,
                "quantity": q,
                "sigma": sigma,
                "r2": r2,
                "mean": 0.0,
                "amplitude": 0.5,
                "peak": 0.5,
                "baseline": baseline if q == "relative" else 0.0,
                "self": 0.2,
            }
            for q in ("attention", "paper", "relative")
        ]

    fits = [
        *rows("distance", "none", 6, 0.99),
        *rows("separation", "none", 3, 0.9),
        *rows("distance", "no-positions", 5, 0.95, baseline=0.1),
        *rows("separation", "no-positions", 50, 0.2),
        *rows("distance", "no-coords", 30, 0.5),
        *rows("separation", "no-coords", 2, 0.95, baseline=0.6),  # peak under its floor
    ]
    (h,) = classify_heads(fits)
    assert h["local_3d"] and h["sigma_3d_only"] == 5 and h["contrast_3d_only"] == 5.0
    assert not h["local_seq"] and h["self"] == 0.2


@pytest.mark.slow
def test_analyze_attention_end_to_end_on_tiny_trained_models(tmp_path, prepared, capsys):
    runs = {}
    for flag in ("--coords", "--no-coords"):
        out = tmp_path / flag.strip("-")
        args = pretrain_args(
            prepared.path,
            out,
            flag,
            max_steps=6,
            val_every=6,
            warmup_steps=2,
            tokens_per_batch=1024,
            quiet=True,
        )
        assert main(args) == 0
        runs[flag] = out
    out = tmp_path / "attn"
    assert (
        main(
            [
                "analyze-attention",
                "-c",
                str(runs["--coords"]),
                "-c",
                str(runs["--no-coords"]),
                "--data",
                str(prepared.path),
                "--split",
                "train",
                "--max-chains",
                "12",
                "--max-distance",
                "20",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    fits = list(csv.DictReader(open(out / "fits.csv")))
    # 2 models x 3 ablations x 3 quantities x 2 kinds x 2 layers x 4 heads
    assert len(fits) == 2 * 3 * 3 * 2 * 2 * 4
    binned = list(csv.DictReader(open(out / "binned.csv")))
    assert {b["quantity"] for b in binned} == {"attention", "paper", "relative"}
    heads = list(csv.DictReader(open(out / "heads.csv")))
    assert all(0.0 <= float(h["self"]) <= 1.0 for h in heads) and "sigma_3d_paper" in heads[0]
    assert {f["ablation"] for f in fits} == {"none", "no-coords", "no-positions"}
    labels = json.loads((out / "analysis.json").read_text())["labels"]
    for label in labels:
        for layer in (1, 2):
            assert (out / f"{label}_layer{layer}.png").stat().st_size > 5000
    assert (out / "summary.png").exists() and (out / "recovery.png").exists()
    report = (out / "report.md").read_text()
    assert all(f"## {label}" in report for label in labels) and "Recovery:" in report
    printed = capsys.readouterr().out
    assert "3D-local heads" in printed
    assert "attention pass" not in printed  # --quiet: results only, no progress lines


def test_analyze_attention_bad_arguments(tmp_path, capsys):
    assert main(["analyze-attention", "-c", "small-coords", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data") and err.count("\n") == 1
    # a distance range that would make millions of bins: a one-line error before any work
    args = ["analyze-attention", "-c", "small-coords", "--data", str(tmp_path / "nope")]
    assert main([*args, "--max-distance", "1e12"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: --max-distance 1000000000000.0: makes")
        and "raise --bin-width" in err
    )
    assert main([*args, "--max-distance", "inf"]) == 2
    assert "--max-distance inf: must be a number" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(UsageError):
        AttentionAnalysisConfig(bin_width=0)
    # a bin width so small that the bin count is infinite: the same one-line error, not overflow
    with pytest.raises(UsageError, match="distance bins"):
        AttentionAnalysisConfig(bin_width=1e-320)
    stats = AttentionStats(2, 3, AttentionAnalysisConfig(max_distance=10, bin_width=2.5))
    assert stats.sum_dist.shape == (2, 3, 4)


def test_a_model_without_3d_local_heads_is_reported_not_a_crash(tmp_path, prepared, capsys):
    """An untrained model (no head attends by distance) and data without coordinates (no distances
    at all): the report says "no 3D-local heads" and every figure is still written."""
    from conftest import synthetic_chains
    from coordformer.config import preset
    from coordformer.model.checkpoints import export_model

    torch.manual_seed(0)
    model = export_model(CoordFormer(preset("tiny-0.1m")), tmp_path / "untrained.pt")
    fasta = tmp_path / "seqs.fasta"
    fasta.write_text("".join(f">{r['name']}\n{r['seq']}\n" for r in synthetic_chains(6)))
    prepare(
        [str(fasta)],
        tmp_path / "seqonly",
        PrepareConfig(min_length=10, valid_fraction=0.0, test_fraction=1.0),
        workers=1,
        progress=False,
    )
    cases = (
        (prepared.path, (), "no head's attention falls off with 3D distance", "no 3D-local heads"),
        (tmp_path / "seqonly", ("--no-ablations",), "no coordinates", "heads not classified"),
    )
    for i, (data, extra, why, said) in enumerate(cases):
        out = tmp_path / f"attn{i}"
        assert (
            main(
                [
                    "analyze-attention",
                    "-c",
                    str(model),
                    "--data",
                    str(data),
                    "--max-chains",
                    "6",
                    "--out",
                    str(out),
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        report = (out / "report.md").read_text()
        assert "**No 3D-local heads**" in report and why in report, report
        for name in ("untrained_layer1.png", "untrained_layer2.png", "summary.png"):
            assert (out / name).stat().st_size > 5000, name
        assert f"untrained: {said}" in capsys.readouterr().out


def test_without_ablations_heads_are_not_counted_as_not_local(tmp_path, prepared, capsys):
    """--no-ablations skips the runs that decide 3D- and sequence-locality: the report and the
    printed line say the heads are not classified, not that none is 3D-local."""
    from coordformer.config import preset
    from coordformer.model.checkpoints import export_model

    torch.manual_seed(0)
    model = export_model(CoordFormer(preset("tiny-0.1m")), tmp_path / "m.pt")
    out = tmp_path / "attn"
    args = ["-c", str(model), "--data", str(prepared.path), "--max-chains", "4", "--out", str(out)]
    assert main(["analyze-attention", *args, "--quiet", "--no-ablations"]) == 0
    assert "m: heads not classified" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "3D-local: not classified (the no-positions ablation was not run)" in report
    assert "heads 3D-local" not in report and "No 3D-local heads" not in report
    assert "| n/a | n/a |" in report


def test_a_failed_analysis_leaves_no_out_folder(tmp_path, prepared, capsys):
    """A checkpoint that does not load, or an empty split: one line, and no empty --out folder."""
    prep = tmp_path / "novalid"
    prepare(
        [str(prepared.path.parent / "synthetic.jsonl")],
        prep,
        PrepareConfig(min_length=10, valid_fraction=0.0, test_fraction=0.2),
        workers=1,
        progress=False,
    )
    cases = (
        (["-c", "no-such-model", "--data", str(prepared.path)], "no-such-model"),
        (["-c", "small-coords", "--data", str(prep), "--split", "valid"], "'valid' is empty"),
    )
    for i, (args, said) in enumerate(cases):
        out = tmp_path / f"attn{i}"
        assert main(["analyze-attention", *args, "--out", str(out), "--quiet"]) == 2
        captured = capsys.readouterr()
        assert said in captured.err and captured.err.count("\n") == 1, captured.err
        assert captured.out == "" and not out.exists()


@pytest.mark.parametrize("near", [0.58, 0.488])
def test_one_sparse_near_bin_does_not_make_a_narrow_3d_local_head(near):
    # small-nocoords with positions zeroed, as measured over 200 test chains: relative attention
    # flat (0.49; 0.11 for L4 H3) except in the 2-3 A bin, which only cis peptides reach (202
    # pairs against 94,316 in the 3-4 A bin). A narrow Gaussian over the floor explains that one
    # point (R^2 ~ 1, sigma < 1 A); a sequence-only model's head is no neighbourhood.
    cfg = AttentionAnalysisConfig(max_distance=32.0)
    stats = AttentionStats(1, 1, cfg)
    counts = torch.full((cfg.n_distance_bins,), 100_000, dtype=torch.int64)
    counts[:2] = 0
    counts[2] = 202
    jitter = torch.as_tensor(np.random.default_rng(0).normal(0.0, 0.002, cfg.n_distance_bins))
    level = (0.49 if near == 0.58 else 0.111) + jitter
    level[2] = near
    stats.count_dist = counts
    stats.sum_d = torch.as_tensor(cfg.distance_centres()) * counts
    stats.sum_dist_rel[0, 0] = level * counts
    stats.sum_dist[0, 0] = level * counts / 200
    fits = [{**f, "ablation": ab} for f in fit_all(stats) for ab in ("none", "no-positions")]
    (head,) = classify_heads(fits)
    assert not head["local_3d"], head
    # the sparse bin is out of the fit; the flat rest is no Gaussian (no sigma, not a narrow one)
    assert not head["sigma_3d_only"] < 3.0, head
