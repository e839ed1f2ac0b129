"""Attention against 3D distance and sequence separation, per layer and head, with Gaussian fits.

One streaming pass over a prepared dataset accumulates, for every layer and head, the sum of
attention weights and a histogram of their values in bins of CA-CA distance (``bin_width`` A up to
``max_distance``) and of signed sequence separation j - i (-max_separation .. +max_separation).
Memory is fixed by the number of bins, not the number of chains: attention maps [B, H, L, L] live
for one batch only (``tokens_per_batch`` bounds B * L).

Fits (scipy ``curve_fit``) on the mean attention per bin:

* distance: A * exp(-d^2 / (2 sigma^2)), zero mean, sigma in Angstrom;
* separation: A * exp(-(s - mu)^2 / (2 sigma^2)), free mean, sigma and mu in residues;

each with R^2 over the non-empty bins. Ablations separate the two signals: ``ablate=("coords",)``
zeroes the coordinate input (sequence signal only), ``("positions",)`` zeroes the positional
encoding (3D signal only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..config import AttentionAnalysisConfig
from ..constants import CA_INDEX
from ..data.batching import check_fits, unmasked_batches
from ..data.store import PreparedDataset
from ..errors import OptionError, UsageError
from ..model.encode import model_device

if TYPE_CHECKING:
    from ..io import Chain
    from ..model.core import CoordFormer

#: log10 edges for the histogram of attention values (percentile bands); values below 1e-6 go to
#: the first bin.
VALUE_EDGES = np.linspace(-6.0, 0.0, 61)


class AttentionStats:
    """Streaming sums and value histograms of attention per (layer, head, bin).

    sum_*: [layers, heads, bins] float64; count_*: [bins] int64 (the same pairs for every head);
    hist_*: [layers, heads, bins, len(VALUE_EDGES)] int64.
    """

    def __init__(self, n_layers: int, n_heads: int, cfg: AttentionAnalysisConfig):
        self.cfg = cfg
        nd, ns, nv = cfg.n_distance_bins, 2 * cfg.max_separation + 1, len(VALUE_EDGES)
        self.sum_dist = torch.zeros(n_layers, n_heads, nd, dtype=torch.float64)
        self.count_dist = torch.zeros(nd, dtype=torch.int64)
        self.sum_d = torch.zeros(
            nd, dtype=torch.float64
        )  # fits use each bin's mean distance, not its centre
        self.hist_dist = torch.zeros(n_layers, n_heads, nd * nv, dtype=torch.int64)
        self.sum_sep = torch.zeros(n_layers, n_heads, ns, dtype=torch.float64)
        # "relative": each weight divided by its query's largest weight (scale-free, as in simulate)
        self.sum_dist_rel = torch.zeros_like(self.sum_dist)
        self.sum_sep_rel = torch.zeros_like(self.sum_sep)
        self.count_sep = torch.zeros(ns, dtype=torch.int64)
        self.hist_sep = torch.zeros(n_layers, n_heads, ns * nv, dtype=torch.int64)
        self.n_chains = 0

    def add(
        self, attentions: list[torch.Tensor], ca: torch.Tensor, padding_mask: torch.Tensor
    ) -> None:
        """attentions: per layer [B, H, L, L]; ca: [B, L, 3] Angstrom (NaN = missing);
        padding_mask [B, L]."""
        cfg = self.cfg
        nv = len(VALUE_EDGES)
        edges = torch.as_tensor(VALUE_EDGES, dtype=torch.float32)
        l = ca.shape[1]
        pair = padding_mask[:, :, None] & padding_mask[:, None, :]
        present = ~torch.isnan(ca).any(-1) & padding_mask
        d = torch.cdist(torch.nan_to_num(ca).double(), torch.nan_to_num(ca).double()).float()
        dist_ok = pair & present[:, :, None] & present[:, None, :] & (d < cfg.max_distance)
        dist_bin = (d / cfg.bin_width).long()[dist_ok]
        sep = torch.arange(l)[None, :] - torch.arange(l)[:, None]  # j - i
        sep_ok = pair & (sep.abs() <= cfg.max_separation)[None]
        sep_bin = (sep + cfg.max_separation).expand_as(pair)[sep_ok]
        self.count_dist += torch.bincount(dist_bin, minlength=cfg.n_distance_bins)
        self.sum_d.index_add_(0, dist_bin, d[dist_ok].double())
        self.count_sep += torch.bincount(sep_bin, minlength=2 * cfg.max_separation + 1)
        for layer, a in enumerate(attentions):
            a = a.float().cpu().permute(1, 0, 2, 3)  # [H, B, L, L]
            rel = a / a.amax(-1, keepdim=True).clamp_min(1e-30)
            for ok, bins, total, total_rel, hist in (
                (dist_ok, dist_bin, self.sum_dist, self.sum_dist_rel, self.hist_dist),
                (sep_ok, sep_bin, self.sum_sep, self.sum_sep_rel, self.hist_sep),
            ):
                vals = a[:, ok]  # [H, N]
                total[layer].index_add_(1, bins, vals.double())
                total_rel[layer].index_add_(1, bins, rel[:, ok].double())
                vb = torch.bucketize(torch.log10(vals.clamp_min(1e-12)), edges).clamp(max=nv - 1)
                flat = bins[None, :] * nv + vb  # [H, N]
                hist[layer].scatter_add_(1, flat, torch.ones_like(flat))
        self.n_chains += int(padding_mask.shape[0])

    def bin_positions(self, kind: str) -> np.ndarray:
        """x values of the bins: mean CA-CA distance of the pairs in each distance bin (Angstrom;
        the centre where empty), or the separation itself."""
        if kind == "separation":
            return self.cfg.separations().astype(float)
        centres = self.cfg.distance_centres()
        c = self.count_dist.double()
        return np.where(c.numpy() > 0, (self.sum_d / c.clamp_min(1)).numpy(), centres)

    def mean(self, kind: str, quantity: str = "attention") -> np.ndarray:
        """Mean per bin of the attention weight (``quantity="attention"``) or of the weight divided
        by its query's largest weight ("relative"), [layers, heads, bins] (NaN for empty bins)."""
        rel = quantity == "relative"
        if kind == "distance":
            s, c = (self.sum_dist_rel if rel else self.sum_dist), self.count_dist
        else:
            s, c = (self.sum_sep_rel if rel else self.sum_sep), self.count_sep
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s / c.double()).numpy()

    def percentiles(self, kind: str, qs=(10, 25, 50, 75, 90)) -> np.ndarray:
        """Approximate percentiles of attention values per bin from the histograms (to the
        resolution of VALUE_EDGES): [len(qs), layers, heads, bins], NaN for empty bins."""
        hist = self.hist_dist if kind == "distance" else self.hist_sep
        empty = ((self.count_dist if kind == "distance" else self.count_sep) == 0).numpy()
        nl, nh, _ = hist.shape
        h = hist.view(nl, nh, -1, len(VALUE_EDGES)).double()
        cdf = h.cumsum(-1) / h.sum(-1, keepdim=True).clamp_min(1)
        out = []
        for q in qs:
            k = (cdf < q / 100).sum(-1).clamp(max=len(VALUE_EDGES) - 1)
            out.append(np.where(empty, np.nan, 10 ** VALUE_EDGES[k.numpy()]))
        return np.stack(out)


@torch.no_grad()
def collect_attention(
    model: CoordFormer,
    data: PreparedDataset,
    cfg: AttentionAnalysisConfig,
    ablate: tuple[str, ...] = (),
    device: str = "cpu",
    progress: bool = True,
) -> AttentionStats:
    """One pass over ``cfg.split`` (first ``cfg.max_chains`` chains, each cropped to its first
    ``cfg.crop_length`` residues) with clean, unmasked inputs. ``model`` is a CoordFormer or
    anything with the same
    ``forward(tokens, coords, padding_mask, need_attention=True, ablate=...)`` (positions and plddt
    are passed only where the batch holds them, see ``Batch.inputs``); it is moved to ``device``
    and put in eval mode, in place."""
    idx = data.split_indices(cfg.split)
    if cfg.max_chains:
        idx = idx[: cfg.max_chains]
    if len(idx) == 0:
        raise UsageError(f"{data.path}: split {cfg.split!r} is empty")
    return _collect(model, data, idx, cfg, ablate, device, progress)


def _collect(model, data, idx, cfg, ablate, device, progress) -> AttentionStats:
    """:func:`collect_attention` over the chains ``idx`` of ``data`` (a prepared dataset or a
    ``data.memory.MemoryDataset``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from ..progress import Progress  # plain periodic lines when the output is not a terminal

    if hasattr(model, "config"):
        check_fits(data, idx, cfg.crop_length, model.config.max_len)
    model = model.to(device).eval()
    stats = None
    with Progress(
        TextColumn("attention"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("attention", total=len(idx))
        for b in unmasked_batches(data, idx, cfg.crop_length, cfg.tokens_per_batch, rotate=True):
            with torch.no_grad():
                out = model(**b.to(device).inputs(), need_attention=True, ablate=ablate)
            if stats is None:
                stats = AttentionStats(len(out.attentions), out.attentions[0].shape[1], cfg)
            stats.add(out.attentions, b.coords[:, :, CA_INDEX], b.padding_mask)
            bar.advance(task, len(b))
    return stats


def _gauss0(d, a, sigma):
    return a * np.exp(-(d**2) / (2 * sigma**2))


def _gauss(s, a, mu, sigma):
    return a * np.exp(-((s - mu) ** 2) / (2 * sigma**2))


def fit_gaussian(x: np.ndarray, y: np.ndarray, zero_mean: bool) -> dict:
    """Least-squares Gaussian through (x, y), NaNs ignored. Returns amplitude, mean, sigma, r2
    (all NaN when the fit fails)."""
    from scipy.optimize import curve_fit

    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    fail = {
        "amplitude": math.nan,
        "mean": 0.0 if zero_mean else math.nan,
        "sigma": math.nan,
        "r2": math.nan,
    }
    if len(x) < 3 or not np.any(y > 0):
        return fail
    span = float(x.max() - x.min()) or 1.0
    try:
        if zero_mean:
            # start from the half-height crossing, a robust guess for sigma
            half = x[np.argmax(y < y.max() / 2)] if np.any(y < y.max() / 2) else span
            p, _ = curve_fit(
                _gauss0,
                x,
                y,
                p0=(y.max(), max(half / 1.18, 1e-3)),
                bounds=([0.0, 1e-3], [np.inf, 1e3 * span]),
                maxfev=20000,
            )
            pred, res = _gauss0(x, *p), {"amplitude": p[0], "mean": 0.0, "sigma": p[1]}
        else:
            p, _ = curve_fit(
                _gauss,
                x,
                y,
                p0=(y.max(), x[np.argmax(y)], span / 8),
                bounds=([0.0, x.min() - span, 1e-3], [np.inf, x.max() + span, 1e3 * span]),
                maxfev=20000,
            )
            pred, res = _gauss(x, *p), {"amplitude": p[0], "mean": p[1], "sigma": p[2]}
    except (RuntimeError, ValueError):
        return fail
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    res["r2"] = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return {k: float(v) for k, v in res.items()}


def fit_all(stats: AttentionStats) -> list[dict]:
    """One row per (layer, head, kind, quantity) with the Gaussian fit of the bin means. Layers are
    numbered from 1. quantity "attention" is the mean weight (what the paper plots); "relative"
    divides each weight by its query's largest weight first, which removes the per-query softmax
    normaliser: for a head whose logits are exactly -d^2 / (2 sigma^2) it is exactly the kernel."""
    rows = []
    for quantity in ("attention", "relative"):
        for kind, zero in (("distance", True), ("separation", False)):
            xs, mean = stats.bin_positions(kind), stats.mean(kind, quantity)
            n_pairs = int((stats.count_dist if kind == "distance" else stats.count_sep).sum())
            for layer in range(mean.shape[0]):
                for head in range(mean.shape[1]):
                    f = fit_gaussian(xs, mean[layer, head], zero_mean=zero)
                    rows.append(
                        {
                            "layer": layer + 1,
                            "head": head,
                            "kind": kind,
                            "quantity": quantity,
                            **f,
                            "n_pairs": n_pairs,
                        }
                    )
    return rows


#: Ablations run by ``analyze_attention``: name -> inputs zeroed.
ABLATIONS = {"none": (), "no-coords": ("coords",), "no-positions": ("positions",)}

#: A head is called 3D-local when, with the positional encoding zeroed (3D signal only), its mean
#: attention against distance fits a zero-mean Gaussian with R^2 >= LOCAL_R2 and sigma <=
#: LOCAL_SIGMA Angstrom; sequence-local when, with coordinates zeroed, its separation fit has R^2 >=
#: LOCAL_R2 and sigma <= LOCAL_SEQ_SIGMA residues. A heuristic, stated in every report.
LOCAL_R2, LOCAL_SIGMA, LOCAL_SEQ_SIGMA = 0.8, 12.0, 4.0


def _fit(
    fits: list[dict], layer: int, head: int, kind: str, ablation: str, quantity: str = "attention"
) -> dict:
    return next(
        f
        for f in fits
        if f["layer"] == layer
        and f["head"] == head
        and f["kind"] == kind
        and f["ablation"] == ablation
        and f["quantity"] == quantity
    )


def classify_heads(fits: list[dict]) -> list[dict]:
    """Per (layer, head) of one model: sigmas under each ablation and the
    3D-/sequence-local calls. ``fits``: rows of :func:`fit_all`, each with its ``ablation``
    ("none" where a row has none, as ``fit_all`` of one pass gives)."""
    out = []
    fits = [{"ablation": "none", **f} for f in fits]
    ablations = {f["ablation"] for f in fits}
    for layer, head in sorted({(f["layer"], f["head"]) for f in fits}):
        full_d, full_s = (
            _fit(fits, layer, head, "distance", "none"),
            _fit(fits, layer, head, "separation", "none"),
        )
        rec = {
            "layer": layer,
            "head": head,
            "sigma_3d": full_d["sigma"],
            "r2_3d": full_d["r2"],
            "sigma_seq": full_s["sigma"],
            "mu_seq": full_s["mean"],
            "r2_seq": full_s["r2"],
        }
        if "no-positions" in ablations:
            d = _fit(fits, layer, head, "distance", "no-positions")
            rec.update(
                sigma_3d_only=d["sigma"],
                r2_3d_only=d["r2"],
                local_3d=bool(d["r2"] >= LOCAL_R2 and d["sigma"] <= LOCAL_SIGMA),
            )
        if "no-coords" in ablations:
            s = _fit(fits, layer, head, "separation", "no-coords")
            rec.update(
                sigma_seq_only=s["sigma"],
                r2_seq_only=s["r2"],
                local_seq=bool(s["r2"] >= LOCAL_R2 and s["sigma"] <= LOCAL_SEQ_SIGMA),
            )
        out.append(rec)
    return out


def _yes(head: dict, key: str) -> str:
    """A report cell: yes / blank, or n/a when the ablation that decides it was not run."""
    return "n/a" if key not in head else "yes" if head[key] else ""


def chains_attention(
    model: CoordFormer,
    chains: Sequence[Chain],
    cfg: AttentionAnalysisConfig = AttentionAnalysisConfig(),
    ablations: tuple[str, ...] = tuple(ABLATIONS),
    device: str | torch.device | None = None,
) -> tuple[list[dict], list[dict]]:
    """What ``analyze-attention`` measures, for ``chains`` in memory (``io.Chain`` objects, e.g.
    one ``read_structure`` file): (fits, heads). ``fits``: per layer, head, kind ("distance": CA
    distance in Angstrom, "separation": residues), quantity and ablation, the Gaussian fit
    (``sigma``, ``r2``, ...) of mean attention against that kind (:func:`fit_all`); ``heads``: per
    layer and head, :func:`classify_heads` (``sigma_3d``, ``local_3d`` with ``"no-positions"``
    among ``ablations``, ...). Each chain is cropped to its first ``cfg.crop_length`` residues;
    ``device`` None: where the model's weights are (it is put in eval mode, in place)."""
    from ..data.prepare import chains_in_memory

    unknown = set(ablations) - set(ABLATIONS)
    if unknown:
        raise OptionError(
            "ablations", tuple(ablations), f"unknown {sorted(unknown)}; use {', '.join(ABLATIONS)}"
        )
    if device is None:
        device = model_device(model)
    data = chains_in_memory(chains)
    idx = np.arange(len(data))
    fits = []
    for ab in ablations:
        stats = _collect(model, data, idx, cfg, ABLATIONS[ab], device, progress=False)
        fits += [{"ablation": ab, **row} for row in fit_all(stats)]
    return fits, classify_heads(fits)


def _fmt(v: float, digits: int = 1) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def analyze_attention(
    checkpoints: list[str],
    data_dir: str,
    out: str,
    cfg: AttentionAnalysisConfig,
    ablations: tuple[str, ...] = tuple(ABLATIONS),
    device: str = "cpu",
    progress: bool = True,
    echo=print,
    command: str = "",
) -> dict:
    """Attention-versus-distance analysis of one or more checkpoints on one prepared dataset.

    Writes to ``out``: fits.csv (every layer/head/kind/quantity/ablation/model), binned.csv (the
    bin means behind the fits), heads.csv (per-head sigmas and local calls), <model>_layer<k>.png
    (no ablation), summary.png, report.md, analysis.json (settings and command); with two or more
    checkpoints also the per-amino-acid recovery difference of the first two (recovery.png).
    Returns {"fits": rows, "heads": {model: classify_heads rows}, "recovery": ... or None,
    "ablations": the ablations run}.
    """
    import csv
    import json
    from pathlib import Path

    from ..model.checkpoints import load_model
    from . import plots

    bad = [a for a in ablations if a not in ABLATIONS]
    if bad or "none" not in ablations:
        raise OptionError(
            "ablations", ablations, f"must include 'none' and be among {', '.join(ABLATIONS)}"
        )
    out = Path(out)
    data = PreparedDataset(data_dir)
    if len(data.split_indices(cfg.split)) == 0:  # before any model loads or folder is made
        raise UsageError(f"{data.path}: split {cfg.split!r} is empty; choose another split")
    labels, models = [], []
    for ck in checkpoints:
        model, _ = load_model(ck, map_location=device)
        label = Path(str(ck)).name.removesuffix(".pt").removesuffix(".ckpt") or str(ck)
        while label in labels:
            label += "'"
        labels.append(label)
        models.append(model.float())
    out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
    all_fits, binned, heads, stats_none = [], [], {}, {}
    for label, model in zip(labels, models):
        fits, done = [], {}
        for ab in ablations:
            if ab == "no-coords" and not model.config.use_coords and "none" in done:
                echo(f"{label}: no coordinate input to zero; 'no-coords' reuses the 'none' pass")
                st = done["none"]
            else:
                if progress:  # a progress line: --quiet leaves only the results
                    echo(f"{label}: attention pass, ablation {ab}")
                st = collect_attention(
                    model, data, cfg, ablate=ABLATIONS[ab], device=device, progress=progress
                )
            done[ab] = st
            rows = [{"model": label, "ablation": ab, **r} for r in fit_all(st)]
            fits += rows
            for quantity in ("attention", "relative"):
                for kind in ("distance", "separation"):
                    xs, mean = st.bin_positions(kind), st.mean(kind, quantity)
                    counts = (st.count_dist if kind == "distance" else st.count_sep).numpy()
                    for layer in range(mean.shape[0]):
                        for h in range(mean.shape[1]):
                            for x, m, c in zip(xs, mean[layer, h], counts):
                                binned.append(
                                    {
                                        "model": label,
                                        "ablation": ab,
                                        "quantity": quantity,
                                        "kind": kind,
                                        "layer": layer + 1,
                                        "head": h,
                                        "x": float(x),
                                        "mean": float(m),
                                        "pairs": int(c),
                                    }
                                )
            if ab == "none":
                stats_none[label] = st
                for layer in range(1, st.sum_dist.shape[0] + 1):
                    plots.attention_layer_figure(
                        st,
                        rows,
                        layer,
                        out / f"{label}_layer{layer}.png",
                        title=f"{label}, layer {layer} ({st.n_chains} chains, split {cfg.split})",
                    )
        all_fits += fits
        heads[label] = classify_heads(fits)
    for name, rows in (
        ("fits.csv", all_fits),
        ("binned.csv", binned),
        ("heads.csv", [{"model": m, **r} for m, rs in heads.items() for r in rs]),
    ):
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    plots.attention_summary_figure(
        {m: [f for f in all_fits if f["model"] == m and f["ablation"] == "none"] for m in labels},
        out / "summary.png",
        min_r2=LOCAL_R2,
    )
    recovery = None
    if len(models) >= 2:
        from ..eval.mlm import evaluate_mlm

        res = [
            evaluate_mlm(
                m,
                data,
                split=cfg.split,
                max_chains=cfg.max_chains,
                crop_length=cfg.crop_length,  # the residues the attention passes saw
                device=device,
                progress=progress,
            )
            for m in models[:2]
        ]
        diff = {
            a: (
                None
                if res[0]["per_residue_recovery"][a] is None
                else res[0]["per_residue_recovery"][a] - res[1]["per_residue_recovery"][a]
            )
            for a in res[0]["per_residue_recovery"]
        }
        recovery = {
            "models": labels[:2],
            "recovery": [r["recovery"] for r in res],
            "perplexity": [r["perplexity"] for r in res],
            "difference": diff,
            "n_masked": res[0]["n_masked"],
        }
        plots.recovery_difference_figure(
            diff,
            out / "recovery.png",
            f"per-residue recovery, {labels[0]} minus {labels[1]} ({res[0]['n_masked']} masked "
            "residues)",
        )
    pairs_3d = {m: int(st.count_dist.sum()) for m, st in stats_none.items()}
    _write_report(
        out / "report.md", labels, heads, recovery, cfg, data, command, ablations, pairs_3d
    )
    (out / "analysis.json").write_text(
        json.dumps(
            {
                "config": cfg.to_dict(),
                "checkpoints": list(map(str, checkpoints)),
                "labels": labels,
                "data": str(data_dir),
                "ablations": list(ablations),
                "command": command,
                "recovery": recovery,
            },
            indent=2,
        )
    )
    return {"fits": all_fits, "heads": heads, "recovery": recovery, "ablations": list(ablations)}


def _write_report(
    path, labels, heads, recovery, cfg, data, command, ablations, pairs_3d=None
) -> None:
    n_chains = min(len(data.split_indices(cfg.split)), cfg.max_chains or 10**9)
    lines = [
        "# Attention versus distance",
        "",
        f"Data: `{data.path}`, split `{cfg.split}`, {n_chains} chains (first {cfg.crop_length} "
        f"residues each), distance bins {cfg.bin_width:g} Å up to {cfg.max_distance:g} Å, "
        f"separations ±{cfg.max_separation}.",
        f"Command: `{command}`" if command else "",
        "",
        "Fits are on the mean attention weight per bin: zero-mean Gaussian of CA-CA distance (σ "
        "in Å) and a free-mean Gaussian of sequence separation j - i (σ and μ in residues).",
        "A head is called **3D-local** when, with the positional encoding zeroed (3D signal "
        f"only), its distance fit has R² ≥ {LOCAL_R2} and σ ≤ {LOCAL_SIGMA:g} Å; "
        "**sequence-local** when, with the coordinates zeroed, its separation fit has R² ≥ "
        f"{LOCAL_R2} and σ ≤ {LOCAL_SEQ_SIGMA:g} residues. These thresholds are a heuristic; "
        "fits.csv holds every number.",
        "",
    ]
    for label in labels:
        hs = heads[label]
        # A class needs its ablation: without it the count would read as "none found"
        counts = [
            f"{sum(h.get(key, False) for h in hs)} of {len(hs)} heads {name}"
            if ablation in ablations
            else f"{name}: not classified (the {ablation} ablation was not run)"
            for key, name, ablation in (
                ("local_3d", "3D-local", "no-positions"),
                ("local_seq", "sequence-local", "no-coords"),
            )
        ]
        lines += [f"## {label}", "", "; ".join(counts) + ".", ""]
        no_distances = pairs_3d is not None and not pairs_3d.get(label)
        if no_distances or ("no-positions" in ablations and not any(h.get("local_3d") for h in hs)):
            # a result, not a failure: say why it may be so
            why = (
                "the data hold no CA-CA distances within the cut-off (no coordinates)"
                if no_distances
                else "no head's attention falls off with 3D distance like a Gaussian (an "
                "untrained or weakly trained "
                "model, a sequence-only model, or too few chains)"
            )
            lines += [f"**No 3D-local heads**: {why}.", ""]
        lines += [
            "| layer | head | σ 3D (Å) | R² | σ 3D, positions zeroed | R² | σ seq (res) | μ seq "
            "| R² | 3D-local | seq-local |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for h in hs:
            lines.append(
                f"| {h['layer']} | {h['head']} | {_fmt(h['sigma_3d'])} | {_fmt(h['r2_3d'], 2)} | "
                f"{_fmt(h.get('sigma_3d_only', math.nan))} | "
                f"{_fmt(h.get('r2_3d_only', math.nan), 2)} | {_fmt(h['sigma_seq'])} | "
                f"{_fmt(h['mu_seq'])} | {_fmt(h['r2_seq'], 2)} | "
                f"{_yes(h, 'local_3d')} | {_yes(h, 'local_seq')} |"
            )
        lines.append("")
    if recovery:
        a, b = recovery["models"]
        lines += [
            f"## Recovery: {a} vs {b}",
            "",
            f"Masked-residue recovery {100 * recovery['recovery'][0]:.1f}% vs "
            f"{100 * recovery['recovery'][1]:.1f}%, perplexity {recovery['perplexity'][0]:.2f} vs "
            f"{recovery['perplexity'][1]:.2f} ({recovery['n_masked']} masked residues, same "
            "masks).",
            "",
            "![recovery](recovery.png)",
            "",
            "| residue | difference (pt) |",
            "|---|---|",
        ]
        for aa, v in sorted(recovery["difference"].items(), key=lambda t: -(t[1] or -1e9)):
            lines.append(f"| {aa} | {_fmt(None if v is None else 100 * v)} |")
        lines.append("")
    lines += ["![summary](summary.png)", ""]
    path.write_text("\n".join(lines))
