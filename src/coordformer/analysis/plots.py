"""All matplotlib use lives here (headless Agg backend; imported lazily by callers)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..constants import AMINO_ACIDS  # noqa: E402


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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
