"""All matplotlib use lives here (headless Agg backend; imported lazily by callers)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..constants import AMINO_ACIDS  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def per_residue_recovery_figure(
    results: dict[str, dict], path: str | Path, title: str = ""
) -> Path:
    """Grouped bars of per-amino-acid recovery, one group per residue, one bar per model.

    results: {model label: evaluate_mlm() output}.
    """
    labels = list(results)
    x = np.arange(len(AMINO_ACIDS))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(11, 4))
    for k, lab in enumerate(labels):
        per = results[lab]["per_residue_recovery"]
        vals = [per.get(a) if per.get(a) is not None else np.nan for a in AMINO_ACIDS]
        ax.bar(
            x + (k - (len(labels) - 1) / 2) * width,
            vals,
            width,
            label=f"{lab} (overall {results[lab]['recovery']:.1%})",
        )
    ax.set_xticks(x, list(AMINO_ACIDS))
    ax.set_ylabel("recovery of masked residues")
    ax.set_xlabel("true amino acid")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def construction_figure(attn_rows: list[dict], ffn_rows: list[dict], path: str | Path) -> Path:
    """Left: attention error vs head dimension (relative to n); right: |x|^2 FFN error vs width."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for n in sorted({r["n"] for r in attn_rows}):
        fit = sorted(
            (r["d_head"] - n, r["mean_abs_error"])
            for r in attn_rows
            if r["n"] == n and r["method"] != "constructed"
        )
        a1.plot(
            [f[0] for f in fit], [max(f[1], 1e-17) for f in fit], "o-", label=f"best fit, n = {n}"
        )
        con = sorted(
            (r["d_head"] - n, r["mean_abs_error"])
            for r in attn_rows
            if r["n"] == n and r["method"] == "constructed"
        )
        a1.plot(
            [c[0] for c in con],
            [max(c[1], 1e-17) for c in con],
            "k*",
            ms=10,
            label="constructed" if n == 1 else None,
        )
    a1.set_yscale("log")
    a1.set_xticks([0, 1, 2], ["n", "n + 1", "n + 2"])
    a1.set_xlabel("head dimension")
    a1.set_ylabel("mean |attention - normalised Gaussian|")
    a1.legend(fontsize=8)
    for act in sorted({r["activation"] for r in ffn_rows}):
        rows = sorted((r["width"], r["max_abs_error"]) for r in ffn_rows if r["activation"] == act)
        a2.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label=act.upper())
    a2.set_xscale("log")
    a2.set_yscale("log")
    a2.set_xlabel("feed-forward width (n = 3)")
    a2.set_ylabel("max |FFN(x) - |x|^2|, x in [-1, 1]^3")
    a2.legend(fontsize=8)
    return _save(fig, path)


def _median_band(rows: list[dict], x: str, y: str = "test_l1"):
    """Sorted xs with median, min and max of y over the rows sharing each x (non-finite dropped)."""
    by: dict = {}
    for r in rows:
        if np.isfinite(r[y]):
            by.setdefault(r[x], []).append(r[y])
    xs = sorted(by)
    return (
        np.array(xs, dtype=float),
        np.array([np.median(by[v]) for v in xs]),
        np.array([min(by[v]) for v in xs]),
        np.array([max(by[v]) for v in xs]),
    )


def _lines_per_n(ax, rows: list[dict], x: str) -> list[int]:
    """One median line with a min-max band of test L1 against ``x`` per spatial dimension n; returns
    the ns."""
    ns = sorted({r["n"] for r in rows})
    for i, n in enumerate(ns):
        xs, med, lo, hi = _median_band([r for r in rows if r["n"] == n], x)
        ax.plot(xs, med, "o-", color=f"C{i}", label=f"n = {n}")
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.15)
    return ns


def exponent_figure(rows: list[dict], path: str | Path) -> Path:
    """Test L1 (median and range over seeds) against the target exponent p."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs, med, lo, hi = _median_band(rows, "exponent")
    ax.plot(xs, med, "o-", color="C0")
    ax.fill_between(xs, lo, hi, color="C0", alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("exponent p of the target exp(-(d/200)^p)")
    ax.set_ylabel("test L1 (best validation weights)")
    ax.set_title("Which distance kernel is learnt best?")
    return _save(fig, path)


def headdim_figure(rows: list[dict], path: str | Path) -> Path:
    """One panel per (regime, output): test L1 against the output head's per-head dimension,
    one line per spatial dimension n (median over seeds, band = range); dotted lines mark the
    theoretical requirement (n + 1 for per-query-normalised output, n + 2 for raw)."""
    panels = sorted({(r["regime"], r["output"]) for r in rows}, key=lambda t: (t[1] != "row", t[0]))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False, sharey=True
    )
    for ax, (regime, output) in zip(axes[0], panels):
        sub = [r for r in rows if r["regime"] == regime and r["output"] == output]
        for i, n in enumerate(_lines_per_n(ax, sub, "d_out")):
            ax.axvline(n + (1 if output == "row" else 2), color=f"C{i}", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("per-head dimension of the output attention")
        ax.set_title(
            f"{regime} optimisation, {'exp(l - max_j l)' if output == 'row' else 'exp(l) (raw)'}",
            fontsize=9,
        )
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test L1 (best validation weights)")
    return _save(fig, path)


def width_figure(rows: list[dict], path: str | Path) -> Path:
    """The paper's sweep: x = d_model / 8 with one head (output head dim 8x); one line per n."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    _lines_per_n(ax, rows, "x")
    ax.set_yscale("log")
    ax.set_xlabel("x = d_model / 8 (one head; output q/k dimension = 8x)")
    ax.set_ylabel("test L1 (best validation weights)")
    ax.legend(fontsize=8)
    ax.set_title("The paper's 'embedding dimension' sweep", fontsize=10)
    return _save(fig, path)


def augment_figure(rows: list[dict], path: str | Path) -> Path:
    """Learning curves (train L1 in the canonical frame, validation L1) with and without
    rotations."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        c = r["curve"]
        color = "C1" if r["augment"] else "C0"
        name = "rotations" if r["augment"] else "no rotations"
        first = r["seed"] == min(q["seed"] for q in rows)
        ax.plot(
            c["step"],
            c["train_l1"],
            "--",
            color=color,
            alpha=0.8,
            label=f"{name}: train" if first else None,
        )
        ax.plot(
            c["step"],
            c["valid_l1"],
            "-",
            color=color,
            alpha=0.8,
            label=f"{name}: validation" if first else None,
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("L1")
    ax.legend(fontsize=8)
    ax.set_title("100 training structures: rotation augmentation", fontsize=10)
    return _save(fig, path)


def attention_layer_figure(
    stats,
    fits: list[dict],
    layer: int,
    path: str | Path,
    title: str = "",
    quantity: str = "relative",
    heads: list[dict] | None = None,
    fitted: dict[str, np.ndarray] | None = None,
) -> Path:
    """One layer: per head, ``quantity`` ("relative": each weight over its query's largest on
    another residue, what report.md's sigmas and calls use; or "attention": the weight) against
    CA-CA distance (top, Angstrom) and sequence separation (bottom, residues): 10-90 and 25-75
    percentile bands, median, mean per bin (black; grey: bins too sparse to fit) and the fitted
    Gaussian (red, from ``fit_all`` rows of that quantity; its floor dashed). ``heads``
    (:func:`classify_heads` rows) marks the 3D- and sequence-local calls in the panel titles;
    ``fitted`` ({"distance", "separation"}: [bins] bool, ``attention.fit_bins``) the bins the fits
    used (default: every non-empty one). ``layer`` counts from 1."""
    n_heads = stats.sum_dist.shape[1]
    calls = {h["head"]: h for h in heads or [] if h["layer"] == layer}
    fig, axes = plt.subplots(2, n_heads, figsize=(2.3 * n_heads, 4.8), squeeze=False)
    for row, kind in enumerate(("distance", "separation")):
        xs = stats.bin_positions(kind, quantity)
        mean = stats.mean(kind, quantity)[layer - 1]
        used = (fitted or {}).get(kind, stats.pairs(kind, quantity) > 0)
        p10, p25, p50, p75, p90 = stats.percentiles(kind, quantity=quantity)[:, layer - 1]
        for h in range(n_heads):
            ax = axes[row][h]
            ax.fill_between(xs, p10[h], p90[h], color="C0", alpha=0.15, lw=0)
            ax.fill_between(xs, p25[h], p75[h], color="C0", alpha=0.3, lw=0)
            ax.plot(xs, p50[h], color="C0", lw=0.8)
            ax.plot(xs[used], mean[h][used], "k.", ms=3)
            ax.plot(xs[~used], mean[h][~used], ".", color="0.6", ms=3)
            fit = next(
                (
                    f
                    for f in fits
                    if f["layer"] == layer
                    and f["head"] == h
                    and f["kind"] == kind
                    and f.get("quantity", "attention") == quantity
                ),
                None,
            )
            shown = np.concatenate([p10[h], mean[h]])
            shown = shown[np.isfinite(shown) & (shown > 0)]
            unit = "Å" if kind == "distance" else "res"
            head_title = f"h{h}"
            if fit and np.isfinite(fit["sigma"]):
                grid = np.linspace(xs.min(), xs.max(), 200)
                base = fit.get("baseline", 0.0)
                curve = fit["amplitude"] * np.exp(
                    -((grid - fit["mean"]) ** 2) / (2 * fit["sigma"] ** 2)
                )
                ax.plot(grid, curve + base, "C3", lw=1)
                if base > 0:
                    ax.axhline(base, color="C3", lw=0.6, ls="--")
                head_title += f": σ={fit['sigma']:.1f} {unit}, R²={fit['r2']:.2f}"
            call = calls.get(h, {}).get("local_3d" if kind == "distance" else "local_seq")
            if call:
                head_title += "\n3D-local" if kind == "distance" else "\nsequence-local"
            ax.set_title(head_title, fontsize=7, color="C3" if call else "black")
            if len(shown):  # keep the axis on the data; a narrow fitted Gaussian falls off it
                ax.set_yscale("log")
                ax.set_ylim(shown.min() / 3, max(np.nanmax(p90[h]), shown.max()) * 3)
            else:
                # nothing to draw (no coordinates: no distances);
                # a log axis of nothing cannot be drawn
                _note(ax, "no pairs" + (" with coordinates" if kind == "distance" else ""))
                ax.set_xticks([])
            ax.tick_params(labelsize=6)
            if row == 1:
                ax.set_xlabel("sequence separation j - i" if h == 0 else "", fontsize=7)
            else:
                ax.set_xlabel("CA-CA distance (Å)" if h == 0 else "", fontsize=7)
        axes[row][0].set_ylabel(
            "relative attention" if quantity == "relative" else "attention", fontsize=8
        )
    what = (
        "relative attention (weight / query's largest on another residue), its Gaussian over a "
        "floor (report.md's σ)"
        if quantity == "relative"
        else "attention weight, its Gaussian fit without a floor"
    )
    calls_from = " Local calls: from the ablation passes." if calls else ""
    fig.suptitle(f"{title or f'layer {layer}'}: {what}.{calls_from}", fontsize=9)
    return _save(fig, path)


def attention_summary_figure(
    selected: dict[str, dict[str, tuple[list[dict], bool]]],
    path: str | Path,
    paper_sigmas: tuple[float, ...] = (),
) -> Path:
    """Per layer, the heads each model has that attend locally: top, sigma of the relative fit
    (filled; open circles: the paper's quantity's fit of the same 3D heads); bottom, the fit's peak
    over its floor at the nearest bin, from the ablation pass that made the call where it ran (as
    report.md's column). Left against CA-CA distance (Angstrom), right against
    sequence separation (residues). ``selected``: model -> :func:`summary_heads` of its heads;
    ``paper_sigmas``: the paper's per-layer sigmas (Angstrom, layers from 1), drawn as crosses."""
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    called = {}
    for i, (label, kinds) in enumerate(selected.items()):
        jitter = (i - (len(selected) - 1) / 2) * 0.12
        for col, kind in enumerate(("distance", "separation")):
            rows, called[kind] = kinds[kind]
            suffix = "3d" if kind == "distance" else "seq"
            x = [h["layer"] + jitter for h in rows]
            axes[0][col].scatter(
                x, [h[f"sigma_{suffix}"] for h in rows], s=14, color=f"C{i}", label=label
            )
            if kind == "distance":
                axes[0][col].scatter(
                    x,
                    [h["sigma_3d_paper"] for h in rows],
                    s=18,
                    facecolors="none",
                    edgecolors=f"C{i}",
                    lw=0.8,
                )
            # peak / floor of the pass that made the call (as report.md's column), where it ran
            axes[1][col].scatter(
                x,
                [min(h.get(f"contrast_{suffix}_only", h[f"contrast_{suffix}"]), 1e3) for h in rows],
                s=14,
                color=f"C{i}",
            )
    if paper_sigmas:
        axes[0][0].scatter(
            range(1, len(paper_sigmas) + 1),
            paper_sigmas,
            marker="x",
            color="k",
            s=30,
            label="paper (one head per layer, its fit)",
        )
    names = {"distance": "3D-local", "separation": "sequence-local"}
    for col, kind in enumerate(("distance", "separation")):
        heads_of = (
            f"{names[kind]} heads"
            if called.get(kind)
            else f"heads passing the {names[kind]} tests unablated"
        )
        axes[0][col].set_title(heads_of, fontsize=9)
    axes[0][0].set_ylabel("σ (Å; open: paper's quantity)")
    axes[0][1].set_ylabel("σ (residues)")
    layers = sorted(
        {h["layer"] for kinds in selected.values() for rows, _ in kinds.values() for h in rows}
        | set(range(1, len(paper_sigmas) + 1))
    ) or [1]
    for ax in axes[1]:
        ax.set_ylabel("peak / floor")
        ax.set_xlabel("layer")
        ax.set_xticks(layers)
    for ax in axes.flat:
        if _has_positive(ax):
            ax.set_yscale("log")
        else:
            # no local head (an untrained model; no coordinates): say so, not a log axis of nothing
            _note(ax, "no local head")
    shown = [ax for ax in axes[0] if _has_positive(ax)]
    if shown:
        shown[0].legend(fontsize=8)
    fig.suptitle(
        "Local attention per layer (relative attention, Gaussian over a floor)", fontsize=9
    )
    return _save(fig, path)


def _has_positive(ax) -> bool:
    return any(
        np.any(np.asarray(c.get_offsets())[:, 1] > 0)
        for c in ax.collections
        if len(c.get_offsets())
    )


def _note(ax, text: str) -> None:
    ax.text(
        0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.4"
    )
    ax.set_yticks([])


def recovery_difference_figure(diff: dict[str, float], path: str | Path, title: str) -> Path:
    """Bars of per-amino-acid recovery difference (percentage points), sorted."""
    items = sorted(((a, v) for a, v in diff.items() if v is not None), key=lambda t: -t[1])
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(
        [a for a, _ in items],
        [100 * v for _, v in items],
        color=["C2" if v >= 0 else "C3" for _, v in items],
    )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("recovery difference (pt)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def per_position_score_figure(
    chains: list[tuple[str, np.ndarray, np.ndarray]],
    path: str | Path,
    title: str = "",
    max_chains: int = 12,
) -> Path:
    """``coordformer score``: per chain (one panel each, the first ``max_chains``), log p(native)
    with the residue masked and the entropy of that masked marginal, against the 1-based residue
    index.

    chains: [(chain id, log p(native) [L], entropy [L])]."""
    shown = chains[:max_chains]
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 2.4 * len(shown) + 0.4), squeeze=False)
    for ax, (cid, lp, ent) in zip(axes[:, 0], shown):
        x = np.arange(1, len(lp) + 1)
        ax.plot(x, lp, lw=0.9, color="tab:blue", label="log p(native | masked)")
        ax.plot(
            x, -np.asarray(ent), lw=0.8, color="tab:orange", alpha=0.7, label="- entropy (nats)"
        )
        ax.axhline(-np.log(20), color="grey", lw=0.6, ls="--", label="uniform over 20")
        ax.set_xlim(0.5, len(lp) + 0.5)
        ok = np.isfinite(lp)
        ppl = float(np.exp(-np.mean(lp[ok]))) if ok.any() else float("nan")
        ax.set_title(f"{cid}: pseudo-perplexity {ppl:.2f}", fontsize=9, loc="left")
        ax.set_ylabel("nats")
    axes[0, 0].legend(fontsize=7, loc="lower right", ncol=3)
    axes[-1, 0].set_xlabel("residue (1-based index)")
    if len(chains) > len(shown):
        axes[-1, 0].annotate(
            f"{len(chains) - len(shown)} more chains not shown",
            (0.99, 0.02),
            xycoords="axes fraction",
            ha="right",
            fontsize=7,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def mutation_score_figure(
    points: list[tuple[str, int, float]], path: str | Path, title: str = "", max_chains: int = 6
) -> Path:
    """``coordformer score --mutations``: single-substitution scores against the 1-based residue
    index, one panel per chain (the first ``max_chains``), with the per-position mean.

    points: [(chain id, index, score)]."""
    by: dict[str, list[tuple[int, float]]] = {}
    for cid, i, s in points:
        by.setdefault(cid, []).append((i, s))
    names = list(by)[:max_chains] or ["(no single substitutions scored)"]
    fig, axes = plt.subplots(len(names), 1, figsize=(11, 2.6 * len(names) + 0.4), squeeze=False)
    for ax, cid in zip(axes[:, 0], names):
        pts = np.asarray(by.get(cid, []), dtype=np.float64).reshape(-1, 2)
        if len(pts):
            ax.scatter(
                pts[:, 0], pts[:, 1], s=4, alpha=0.35, color="tab:blue", label="substitution"
            )
            pos = np.unique(pts[:, 0])
            mean = np.array([pts[pts[:, 0] == p, 1].mean() for p in pos])
            ax.plot(pos, mean, lw=0.9, color="tab:red", label="mean per position")
            ax.legend(fontsize=7, loc="lower right")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(cid, fontsize=9, loc="left")
        ax.set_ylabel("log p(mut) - log p(wt)")
    axes[-1, 0].set_xlabel("residue (1-based index)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
