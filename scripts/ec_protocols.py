"""Function metrics of saved predictions under both scorings coordformer has used, side by side:
``finetune``'s predictions_<split>.npz scored as before session 17 (every class, partial EC numbers
included; Fmax on 0.00-1.00 with score >= t over labelled chains; micro-AUPR over every class) and
under DeepFRI's protocol (``function.metrics.function_metrics``, what ``finetune`` and
``evaluate-function`` report now). For reading numbers of the two eras against each other.

    .venv/bin/python scripts/ec_protocols.py work/ec17/mlp-coords work/ec17/mlp-nocoords
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from coordformer.function.metrics import fmax, function_metrics, micro_aupr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finetune output folders")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    head = ["run", "chains", "Fmax, old", "Fmax, DeepFRI", "micro-AUPR, old", "micro-AUPR, DeepFRI"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|")
    for run in args.runs:
        z = np.load(run / f"predictions_{args.split}.npz")
        y, s, classes = z["y_true"], z["y_score"], [str(c) for c in z["classes"]]
        new = function_metrics(y, s, classes)
        print(
            f"| {run.name} | {len(y)} | {fmax(y, s)[0]:.3f} | {new['fmax']:.3f} | "
            f"{micro_aupr(y, s):.3f} | {new['micro_aupr']:.3f} |"
        )


if __name__ == "__main__":
    main()
