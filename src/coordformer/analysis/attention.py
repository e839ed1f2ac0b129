"""Attention against 3D distance and sequence separation, per layer and head, with Gaussian fits.

One streaming pass over a prepared dataset accumulates, for every layer and head, the sum of
attention weights and a histogram of their values in bins of CA-CA distance (``bin_width`` A up to
``max_distance``) and of signed sequence separation j - i (-max_separation .. +max_separation).
Memory is fixed by the number of bins, not the number of chains: attention maps [B, H, L, L] live
for one batch only (``tokens_per_batch`` bounds B * L).

A query's weight on itself is kept apart (``self`` per head): it is not a distance measurement, and
as the only point at 0 A it would pin a zero-mean fit (a head that attends only to itself fits a
narrow Gaussian with R^2 near 1). Quantities per bin, each fitted (scipy ``curve_fit``):

* ``attention``: the mean weight (what the paper plots), A * exp(-d^2 / (2 sigma^2));
* ``paper``: the same with the query's own point put back at 0 A / separation 0, as the paper's
  code fits it (its per-layer sigmas are of this kind);
* ``relative``: the weight divided by its query's largest weight on another residue.
  It removes the softmax's per-query normaliser: pooled over chains of different lengths the
  plain mean falls with distance even for a head that ignores distance (its weights are 1 / L),
  and for a head whose logits are -d^2 / (2 sigma^2) it is the kernel over its value at the
  nearest neighbour (3.8 A for nearly every query). It does not remove a length effect that
  comes through the logits: a head that sinks attention onto one residue type ranks short chains
  without it differently from long ones (a known limit of every pooled profile). Fitted with a
  floor, A * exp(-d^2 / (2 sigma^2)) + c, so that attention spread evenly beyond the
  neighbourhood does not widen sigma. The 3D- and sequence-local calls use this fit.

Distance fits have zero mean (sigma in Angstrom); separation fits a free mean (sigma and mu in
residues); each with R^2 over the bins it uses: those holding at least ``MIN_BIN_SHARE`` of the
median bin's pairs (below 3.5 A only cis peptides, a bin too sparse to fit). Ablations separate
the two signals: ``ablate=("coords",)`` zeroes the coordinate input (sequence signal only),
``("positions",)`` zeroes the positional encoding (3D signal only).
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

#: What is averaged per bin (module docstring); fitted with a floor: ``FLOOR_QUANTITIES``.
QUANTITIES = ("attention", "paper", "relative")
FLOOR_QUANTITIES = ("relative",)

#: log10 edges for the histogram of attention values (percentile bands); values below 1e-6 go to
#: the first bin.
VALUE_EDGES = np.linspace(-6.0, 0.0, 61)


class AttentionStats:
    """Streaming sums and value histograms of attention per (layer, head, bin), a query's weight on
    itself left out of every bin.

    sum_*: [layers, heads, bins] float64 (``_rel``: weight / its query's largest weight on
    another residue);
    count_*: [bins] int64 (the same pairs for every head);
    hist_*: [layers, heads, bins * len(VALUE_EDGES)] int64 of the weights' log10 values
    (``_rel``: of the relative quantity, in (0, 1]); sum_self: [layers, heads] float64, the
    weights queries with a CA give themselves, count_self of them (what ``paper`` puts back).
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
        self.sum_dist_rel = torch.zeros_like(self.sum_dist)
        self.sum_sep_rel = torch.zeros_like(self.sum_sep)
        self.hist_dist_rel = torch.zeros_like(self.hist_dist)
        self.count_sep = torch.zeros(ns, dtype=torch.int64)
        self.hist_sep = torch.zeros(n_layers, n_heads, ns * nv, dtype=torch.int64)
        self.hist_sep_rel = torch.zeros_like(self.hist_sep)
        self.sum_self = torch.zeros(n_layers, n_heads, dtype=torch.float64)  # queries with a CA
        self.count_self = 0
        self.sum_self_all = torch.zeros_like(self.sum_self)  # every query
        self.count_self_all = 0
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
        other = ~torch.eye(l, dtype=torch.bool)[None]  # a query's weight on itself is apart
        pair = padding_mask[:, :, None] & padding_mask[:, None, :] & other
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
        self.count_self += int(present.sum())
        self.count_self_all += int(padding_mask.sum())
        for layer, a in enumerate(attentions):
            a = a.float().cpu().permute(1, 0, 2, 3)  # [H, B, L, L]
            # over the largest weight on another residue: a self weight that varies with the
            # query (burial, say) would otherwise rescale each query's curve differently
            rel = a / a.masked_fill(~other, 0.0).amax(-1, keepdim=True).clamp_min(1e-30)
            diag = a.diagonal(dim1=-2, dim2=-1).double()  # [H, B, L]
            self.sum_self[layer] += diag[:, present].sum(-1)
            self.sum_self_all[layer] += diag[:, padding_mask].sum(-1)
            for ok, bins, total, total_rel, hist, hist_rel in (
                (
                    dist_ok,
                    dist_bin,
                    self.sum_dist,
                    self.sum_dist_rel,
                    self.hist_dist,
                    self.hist_dist_rel,
                ),
                (sep_ok, sep_bin, self.sum_sep, self.sum_sep_rel, self.hist_sep, self.hist_sep_rel),
            ):
                for vals, sums, counts in (
                    (a[:, ok], total, hist),
                    (rel[:, ok], total_rel, hist_rel),
                ):
                    sums[layer].index_add_(1, bins, vals.double())  # vals: [H, N]
                    vb = torch.bucketize(torch.log10(vals.clamp_min(1e-12)), edges)
                    flat = bins[None, :] * nv + vb.clamp(max=nv - 1)  # [H, N]
                    counts[layer].scatter_add_(1, flat, torch.ones_like(flat))
        self.n_chains += int(padding_mask.shape[0])

    def self_weight(self) -> np.ndarray:
        """Mean weight a query gives itself, [layers, heads] (NaN before any query)."""
        if not self.count_self_all:
            return np.full(tuple(self.sum_self.shape), np.nan)
        return (self.sum_self_all / self.count_self_all).numpy()

    def _zero_bin(self, kind: str) -> int:
        """Index of the bin where ``paper`` puts a query's own point (0 A; separation 0)."""
        return 0 if kind == "distance" else self.cfg.max_separation

    def pairs(self, kind: str, quantity: str = "attention") -> np.ndarray:
        """Pairs per bin, [bins] int64 (with ``quantity="paper"`` the self points count in the 0 A
        / separation 0 bin)."""
        c = (self.count_dist if kind == "distance" else self.count_sep).numpy().copy()
        if quantity == "paper":
            c[self._zero_bin(kind)] += self.count_self
        return c

    def bin_positions(self, kind: str, quantity: str = "attention") -> np.ndarray:
        """x values of the bins: mean CA-CA distance of the pairs in each distance bin (Angstrom;
        the centre where empty; with ``quantity="paper"`` the self points at 0 A count in the
        first), or the separation itself."""
        if kind == "separation":
            return self.cfg.separations().astype(float)
        centres = self.cfg.distance_centres()
        c = self.pairs(kind, quantity).astype(float)
        return np.where(c > 0, self.sum_d.numpy() / np.maximum(c, 1.0), centres)

    def mean(self, kind: str, quantity: str = "attention") -> np.ndarray:
        """Mean per bin of ``quantity`` (see the module docstring: "attention", "paper",
        "relative"), [layers, heads, bins] (NaN for empty bins)."""
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown quantity {quantity!r}; one of {', '.join(QUANTITIES)}")
        dist = kind == "distance"
        s = {
            "attention": self.sum_dist if dist else self.sum_sep,
            "paper": self.sum_dist if dist else self.sum_sep,
            "relative": self.sum_dist_rel if dist else self.sum_sep_rel,
        }[quantity].clone()
        if quantity == "paper":
            s[:, :, self._zero_bin(kind)] += self.sum_self
        c = torch.from_numpy(self.pairs(kind, quantity)).double()
        with np.errstate(invalid="ignore", divide="ignore"):
            return (s / c).numpy()

    def percentiles(
        self, kind: str, qs=(10, 25, 50, 75, 90), quantity: str = "attention"
    ) -> np.ndarray:
        """Approximate percentiles per bin of the weights (``quantity`` "attention") or of the
        relative quantity ("relative"), from the histograms (to the resolution of VALUE_EDGES):
        [len(qs), layers, heads, bins], NaN for empty bins."""
        if quantity not in ("attention", "relative"):
            raise ValueError(f"no value histogram of {quantity!r}; 'attention' or 'relative'")
        rel = quantity == "relative"
        if kind == "distance":
            hist = self.hist_dist_rel if rel else self.hist_dist
        else:
            hist = self.hist_sep_rel if rel else self.hist_sep
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


def _gauss0(d, a, sigma, c=0.0):
    return a * np.exp(-(d**2) / (2 * sigma**2)) + c


def _gauss(s, a, mu, sigma, c=0.0):
    return a * np.exp(-((s - mu) ** 2) / (2 * sigma**2)) + c


def fit_gaussian(x: np.ndarray, y: np.ndarray, zero_mean: bool, floor: bool = False) -> dict:
    """Least-squares Gaussian through (x, y), NaNs ignored: amplitude * exp(-(x - mean)^2 /
    (2 sigma^2)) + baseline, the mean 0 with ``zero_mean``, the baseline (>= 0) fitted with
    ``floor`` and 0 otherwise. Returns amplitude, mean, sigma, baseline, r2 and ``peak``, the
    Gaussian's height (over the baseline) at the data point nearest its mean: what the data show,
    where ``amplitude`` may be extrapolated (a Gaussian narrower than the gap to the nearest
    distance observed, 3.8 A for chain neighbours). NaN when the fit fails."""
    from scipy.optimize import curve_fit

    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    fail = {
        "amplitude": math.nan,
        "mean": 0.0 if zero_mean else math.nan,
        "sigma": math.nan,
        "baseline": math.nan if floor else 0.0,
        "r2": math.nan,
        "peak": math.nan,
    }
    # two points more than parameters, or an exact fit would pass for a Gaussian
    if len(x) < (2 if zero_mean else 3) + int(floor) + 2 or not np.any(y > 0):
        return fail
    span = float(x.max() - x.min()) or 1.0
    c0 = float(max(y.min(), 0.0)) if floor else 0.0
    top = float(y.max())
    # start from the half-height crossing above the floor, a robust guess for sigma
    low = y < c0 + (top - c0) / 2
    try:
        if zero_mean:
            half = x[np.argmax(low)] if np.any(low) else span
            p0, lo, hi = [top - c0, max(half / 1.18, 1e-3)], [0.0, 1e-3], [np.inf, 1e3 * span]
            fn = _gauss0
        else:
            p0 = [top - c0, x[np.argmax(y)], span / 8]
            lo, hi = [0.0, x.min() - span, 1e-3], [np.inf, x.max() + span, 1e3 * span]
            fn = _gauss
        if floor:
            p0, lo, hi = p0 + [c0], lo + [0.0], hi + [np.inf]
        p, _ = curve_fit(fn, x, y, p0=p0, bounds=(lo, hi), maxfev=20000)
    except (RuntimeError, ValueError):
        return fail
    pred = fn(x, *p)
    p = list(p) + ([] if floor else [0.0])
    if zero_mean:
        res = {"amplitude": p[0], "mean": 0.0, "sigma": p[1], "baseline": p[2]}
    else:
        res = {"amplitude": p[0], "mean": p[1], "sigma": p[2], "baseline": p[3]}
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    res["r2"] = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    near = x[np.argmin(np.abs(x - res["mean"]))]
    res["peak"] = res["amplitude"] * math.exp(
        -((near - res["mean"]) ** 2) / (2 * res["sigma"] ** 2)
    )
    if not res["r2"] > 0.0 or res["peak"] <= 1e-3 * float(y.max() - y.min()):
        # no better than the mean, or a Gaussian that touches no data point (collapsed onto the
        # floor, or narrower than the gap to the nearest bin): a sigma here means nothing
        return {**fail, "r2": res["r2"]}
    return {k: float(v) for k, v in res.items()}


def fit_all(stats: AttentionStats) -> list[dict]:
    """One row per (layer, head, kind, quantity) with the Gaussian fit of the bin means (with a
    floor for ``FLOOR_QUANTITIES``) and ``self``, the head's mean weight on the query itself.
    Layers are numbered from 1. For a head whose logits are exactly -d^2 / (2 sigma^2),
    "relative" is the kernel up to a scale (its value at the nearest other residue), so the fit's
    sigma is the kernel's; it is what the local calls use (module docstring)."""
    rows = []
    self_w = stats.self_weight()
    for quantity in QUANTITIES:
        for kind, zero in (("distance", True), ("separation", False)):
            xs, mean = stats.bin_positions(kind, quantity), stats.mean(kind, quantity)
            counts = stats.pairs(kind, quantity)
            mean = np.where(fit_bins(counts), mean, np.nan)
            n_pairs = int(counts.sum())
            for layer in range(mean.shape[0]):
                for head in range(mean.shape[1]):
                    f = fit_gaussian(
                        xs, mean[layer, head], zero_mean=zero, floor=quantity in FLOOR_QUANTITIES
                    )
                    rows.append(
                        {
                            "layer": layer + 1,
                            "head": head,
                            "kind": kind,
                            "quantity": quantity,
                            **f,
                            "self": float(self_w[layer, head]),
                            "n_pairs": n_pairs,
                        }
                    )
    return rows


#: Ablations run by ``analyze_attention``: name -> inputs zeroed.
ABLATIONS = {"none": (), "no-coords": ("coords",), "no-positions": ("positions",)}

#: A head is called 3D-local when, with the positional encoding zeroed (3D signal only), its
#: relative attention against distance fits a zero-mean Gaussian over a floor with
#: R^2 >= LOCAL_R2, sigma <= LOCAL_SIGMA Angstrom and a peak at least LOCAL_CONTRAST times the
#: floor at the nearest distance observed (there attention at least doubles over what it is far
#: away), sparse bins left out of every fit (``fit_bins``); sequence-local
#: when, with coordinates zeroed, its separation fit passes the same tests with
#: sigma <= LOCAL_SEQ_SIGMA residues. A heuristic, stated in every report.
LOCAL_R2, LOCAL_SIGMA, LOCAL_SEQ_SIGMA, LOCAL_CONTRAST = 0.8, 12.0, 4.0, 1.0
#: Bins with fewer pairs than this share of the median (non-empty) bin's are left out of the fits:
#: below 3.5 A there are only the rare cis peptides (0.2% of the 3-4 A bin's pairs over 200 test
#: chains), whose one noisy bin a narrow Gaussian over a floor would explain alone. A share, not a
#: count (the paper's code drops bins of <= 100 pairs of one batch), so that it holds for one chain
#: and for thousands.
MIN_BIN_SHARE = 0.01


def fit_bins(counts: np.ndarray) -> np.ndarray:
    """Which bins the fits use: [bins] bool of those with at least ``MIN_BIN_SHARE`` of the median
    non-empty bin's pairs."""
    filled = counts[counts > 0]
    if not len(filled):
        return counts > 0
    return (counts > 0) & (counts >= MIN_BIN_SHARE * float(np.median(filled)))


#: The quantity whose fits decide the local calls and give their sigmas.
CALL_QUANTITY = "relative"


def _fit(fits: list[dict], layer: int, head: int, kind: str, ablation: str, quantity: str) -> dict:
    return next(
        f
        for f in fits
        if f["layer"] == layer
        and f["head"] == head
        and f["kind"] == kind
        and f["ablation"] == ablation
        and f["quantity"] == quantity
    )


def contrast(fit: dict) -> float:
    """Peak over floor of a fit with a baseline: the Gaussian's height at the bin nearest its mean
    (``peak``) over the baseline (inf on a zero floor; NaN for a failed fit)."""
    a, c = fit["peak"], fit.get("baseline", 0.0)
    if not (math.isfinite(a) and math.isfinite(c)):
        return math.nan
    return a / c if c > 0 else (math.inf if a > 0 else 0.0)


def _passes(r2: float, sigma: float, peak_over_floor: float, max_sigma: float) -> bool:
    return bool(r2 >= LOCAL_R2 and sigma <= max_sigma and peak_over_floor >= LOCAL_CONTRAST)


def _local(fit: dict, max_sigma: float) -> bool:
    return _passes(fit["r2"], fit["sigma"], contrast(fit), max_sigma)


#: sigma of the Gaussian fitted per layer in the paper (layers 1-4, Angstrom; one head per layer,
#: the mean weight with the query's own point, no floor): drawn for comparison in summary.png.
PAPER_LAYER_SIGMAS = (4.7, 2.7, 3.5, 4.7)


def summary_heads(heads: list[dict]) -> dict[str, tuple[list[dict], bool]]:
    """The heads of one model (:func:`classify_heads` rows) that summary.png draws, per kind
    ("distance", "separation"): (rows, called). ``called`` is True where the ablation that decides
    the call ran and the rows are the 3D- / sequence-local heads; otherwise the rows are those whose
    fit on the unablated pass passes the same tests (both signals present)."""
    out = {}
    for kind, key, suffix, max_sigma in (
        ("distance", "local_3d", "3d", LOCAL_SIGMA),
        ("separation", "local_seq", "seq", LOCAL_SEQ_SIGMA),
    ):
        called = bool(heads) and all(key in h for h in heads)
        out[kind] = (
            [
                h
                for h in heads
                if (
                    h[key]
                    if called
                    else _passes(
                        h[f"r2_{suffix}"], h[f"sigma_{suffix}"], h[f"contrast_{suffix}"], max_sigma
                    )
                )
            ],
            called,
        )
    return out


def classify_heads(fits: list[dict]) -> list[dict]:
    """Per (layer, head) of one model: sigmas under each ablation and the
    3D-/sequence-local calls. ``fits``: rows of :func:`fit_all`, each with its ``ablation``
    ("none" where a row has none, as ``fit_all`` of one pass gives). ``sigma_3d`` and
    ``sigma_seq`` are of the relative-attention fits (as the calls); ``sigma_3d_paper`` is the
    paper's quantity (mean weight, the query's own point at 0 A, no floor), for comparison with its
    figures; ``self`` the mean weight a query gives itself."""
    out = []
    fits = [{"ablation": "none", **f} for f in fits]
    ablations = {f["ablation"] for f in fits}
    q = CALL_QUANTITY
    for layer, head in sorted({(f["layer"], f["head"]) for f in fits}):
        full_d = _fit(fits, layer, head, "distance", "none", q)
        full_s = _fit(fits, layer, head, "separation", "none", q)
        paper = _fit(fits, layer, head, "distance", "none", "paper")
        rec = {
            "layer": layer,
            "head": head,
            "self": full_d.get("self", math.nan),
            "sigma_3d": full_d["sigma"],
            "r2_3d": full_d["r2"],
            "contrast_3d": contrast(full_d),
            "sigma_3d_paper": paper["sigma"],
            "r2_3d_paper": paper["r2"],
            "sigma_seq": full_s["sigma"],
            "mu_seq": full_s["mean"],
            "r2_seq": full_s["r2"],
            "contrast_seq": contrast(full_s),
        }
        if "no-positions" in ablations:
            d = _fit(fits, layer, head, "distance", "no-positions", q)
            rec.update(
                sigma_3d_only=d["sigma"],
                r2_3d_only=d["r2"],
                contrast_3d_only=contrast(d),
                local_3d=_local(d, LOCAL_SIGMA),
            )
        if "no-coords" in ablations:
            s_ = _fit(fits, layer, head, "separation", "no-coords", q)
            rec.update(
                sigma_seq_only=s_["sigma"],
                r2_seq_only=s_["r2"],
                contrast_seq_only=contrast(s_),
                local_seq=_local(s_, LOCAL_SEQ_SIGMA),
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


def _fmt(v: float, digits: int = 1, cap: float | None = None) -> str:
    """A report cell: "-" for none, "∞" (a peak over a zero floor), ">cap" above ``cap`` (a sigma
    wider than the range fitted, or a ratio over a floor of nearly nothing, is only "large")."""
    if v == math.inf:
        return "∞"
    if v is None or not math.isfinite(v):
        return "-"
    if cap is not None and v > cap:
        return f">{cap:g}"
    return f"{v:.{digits}f}"


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
    (relative attention of the unablated pass, local calls marked), summary.png (sigma and peak /
    floor per layer of the local heads, with the paper's per-layer sigmas), report.md,
    analysis.json (settings and command); with two or more checkpoints also the per-amino-acid
    recovery difference of the first two (recovery.png).
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
            for quantity in QUANTITIES:
                for kind in ("distance", "separation"):
                    xs, mean = st.bin_positions(kind, quantity), st.mean(kind, quantity)
                    counts = st.pairs(kind, quantity)
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
        all_fits += fits
        heads[label] = classify_heads(fits)
        st = stats_none[label]
        for layer in range(1, st.sum_dist.shape[0] + 1):
            plots.attention_layer_figure(
                st,
                [f for f in fits if f["ablation"] == "none"],
                layer,
                out / f"{label}_layer{layer}.png",
                title=f"{label}, layer {layer} ({st.n_chains} chains, split {cfg.split})",
                heads=heads[label],
                fitted={k: fit_bins(st.pairs(k, "relative")) for k in ("distance", "separation")},
            )
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
        {m: summary_heads(heads[m]) for m in labels},
        out / "summary.png",
        paper_sigmas=PAPER_LAYER_SIGMAS,
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
        "A query's weight on itself is left out of every bin and shown apart (*self*). The σ and "
        "R² columns fit the *relative* attention per bin (each weight over its query's "
        "largest, which removes the softmax's per-query normaliser) with a Gaussian over a "
        "floor: zero-mean against CA-CA distance (σ in Å), free-mean against sequence "
        "separation j - i (σ and μ in residues). *σ paper's fit* is the paper's code's "
        "quantity: the mean weight with the query's own point at 0 Å, a zero-mean Gaussian "
        "without a floor (its per-layer σ are of this kind).",
        "A head is called **3D-local** when, with the positional encoding zeroed (3D signal "
        f"only), its distance fit has R² ≥ {LOCAL_R2}, σ ≤ {LOCAL_SIGMA:g} Å and, at the nearest "
        f"distance observed, a peak at least {LOCAL_CONTRAST:g}× its floor (bins holding under "
        f"{100 * MIN_BIN_SHARE:g}% of the median bin's pairs are left out of the fits); "
        "**sequence-local** when, with the "
        "coordinates zeroed, its separation fit passes the same tests with σ ≤ "
        f"{LOCAL_SEQ_SIGMA:g} residues. These "
        "thresholds are a heuristic; fits.csv holds every number (binned.csv every bin).",
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
            "| layer | head | self | σ 3D (Å) | R² | σ 3D, positions zeroed | R² | peak / floor "
            "| σ paper's fit (Å) | σ seq (res) | μ seq | R² | 3D-local | seq-local |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        d_span, s_span = cfg.max_distance, float(2 * cfg.max_separation)
        for h in hs:
            lines.append(
                f"| {h['layer']} | {h['head']} | {_fmt(h['self'], 2)} | "
                f"{_fmt(h['sigma_3d'], cap=d_span)} | {_fmt(h['r2_3d'], 2)} | "
                f"{_fmt(h.get('sigma_3d_only', math.nan), cap=d_span)} | "
                f"{_fmt(h.get('r2_3d_only', math.nan), 2)} | "
                f"{_fmt(h.get('contrast_3d_only', math.nan), cap=1000)} | "
                f"{_fmt(h['sigma_3d_paper'], cap=d_span)} | {_fmt(h['sigma_seq'], cap=s_span)} | "
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
