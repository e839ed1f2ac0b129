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


def per_residue_recovery_figure(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
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
        ax.bar(x + (k - (len(labels) - 1) / 2) * width, vals, width, label=f"{lab} (overall {results[lab]['recovery']:.1%})")
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
        fit = sorted((r["d_head"] - n, r["mean_abs_error"]) for r in attn_rows if r["n"] == n and r["method"] != "constructed")
        a1.plot([f[0] for f in fit], [max(f[1], 1e-17) for f in fit], "o-", label=f"best fit, n = {n}")
        con = sorted((r["d_head"] - n, r["mean_abs_error"]) for r in attn_rows if r["n"] == n and r["method"] == "constructed")
        a1.plot([c[0] for c in con], [max(c[1], 1e-17) for c in con], "k*", ms=10, label="constructed" if n == 1 else None)
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
