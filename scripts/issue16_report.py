#!/usr/bin/env python
"""Turn what `scripts/gpu_session.sh issue16` brought back into the Markdown tables of
docs/RESULTS.md.

    tar -xzf issue16.tar.gz -C work/issue16      # gives work/issue16/eval/
    python scripts/issue16_report.py work/issue16/eval > work/issue16/report.md

Reads the two runs' summary.json and metrics.csv, the four evaluations (test/valid x all-mask/BERT),
the int8/float16 exports' test scores, analyze-attention's heads.csv and the non-finite replay.
Prints only what it finds; a part that is missing is named as missing.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

#: the stage's runs (RUN16 picks which trained); each table shows those that came back
RUNS = ("paper-coords", "paper-nocoords", "paper-recipe")


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def training(e: Path) -> list[str]:
    out = [
        "| run | steps | training minutes | skipped steps | median tokens/s "
        "| validation perplexity at 500 / 1k / 2k / 4k / end |",
        "|---|---|---|---|---|---|",
    ]
    for n in RUNS:
        s = _json(e / f"{n}.summary.json")
        rows = (
            list(csv.DictReader(open(e / f"{n}.metrics.csv")))
            if (e / f"{n}.metrics.csv").exists()
            else []
        )
        if s is None and not rows:
            if n != "paper-recipe":  # trained only when RUN16 names it
                out.append(f"| {n} | missing | | | | |")
            continue
        val = {
            int(r["step"]) + 1: float(r["val/perplexity"]) for r in rows if r.get("val/perplexity")
        }
        rates = sorted(float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s"))
        at = " / ".join(f"{val[k]:.2f}" if k in val else "-" for k in (500, 1000, 2000, 4000))
        # a run stopped by the stage's deadline (SIGTERM) has no final validation: its last
        # periodic one stands
        end = (s or {}).get("final_val", {}).get("val/perplexity")
        end_txt = (
            f"{end:.2f}" if end else (f"{val[max(val)]:.2f} (step {max(val)})" if val else "-")
        )
        minutes = (s or {}).get("train_minutes")
        median = f"{rates[len(rates) // 2]:,.0f}" if rates else "-"
        out.append(
            f"| {n} | {(s or {}).get('global_step', '-')} | "
            f"{f'{minutes:.1f}' if minutes else '-'} | "
            f"{(s or {}).get('skipped_steps', '-')} | {median} | {at} / {end_txt} |"
        )
    return out


def evaluations(e: Path) -> list[str]:
    """One row per split and masking, one perplexity / recovery cell per run that was evaluated,
    and each coordinates run's perplexity over the twin's."""
    found = [
        n for n in RUNS if any(n in (_json(p) or {}).get("models", {}) for p in e.glob("*_*.json"))
    ]
    ratios = [n for n in found if n != "paper-nocoords"] if "paper-nocoords" in found else []
    out = [
        "| split, masking | "
        + " | ".join(f"{n} perplexity / recovery" for n in found)
        + "".join(f" | {n} / twin perplexity" for n in ratios)
        + " | masked residues |",
        "|---" * (2 + len(found) + len(ratios)) + "|",
    ]
    for split in ("test", "valid"):
        for masking in ("mask", "bert"):
            d = _json(e / f"{split}_{masking}.json")
            if d is None:
                out.append(f"| {split}, {masking} | missing |")
                continue
            m = d["models"]
            cells = [
                f"{m[n]['perplexity']:.2f} / {100 * m[n]['recovery']:.1f}%" if n in m else "-"
                for n in found
            ]
            cells += [
                f"{m[n]['perplexity'] / m['paper-nocoords']['perplexity']:.3f}"
                if n in m and "paper-nocoords" in m
                else "-"
                for n in ratios
            ]
            n_masked = next(iter(m.values()))["n_masked"]
            out.append(
                f"| {split}, {'all <mask>' if masking == 'mask' else 'BERT 80/10/10'} | "
                + " | ".join(cells)
                + f" | {n_masked:,} |"
            )
    return out


def per_aa(e: Path) -> list[str]:
    d = _json(e / "test_mask.json")
    if d is None or "paper-coords" not in d["models"]:
        return ["(test evaluation missing)"]
    other = next((k for k in ("paper-nocoords", "paper-recipe") if k in d["models"]), None)
    if other is None:
        return ["(no second run to compare with)"]
    c, n = d["models"]["paper-coords"], d["models"][other]
    aas = sorted(
        c["per_residue_recovery"],
        key=lambda a: c["per_residue_recovery"][a] - n["per_residue_recovery"][a],
        reverse=True,
    )
    out = [f"| residue | paper-coords | {other} | difference (pt) |", "|---|---|---|---|"]
    for a in aas:
        x, y = c["per_residue_recovery"][a], n["per_residue_recovery"][a]
        bold = "**" if a in "GP" else ""
        out.append(f"| {bold}{a}{bold} | {100 * x:.1f}% | {100 * y:.1f}% | {100 * (x - y):+.1f} |")
    return out


def quantisation(e: Path) -> list[str]:
    d = _json(e / "test_mask.json")
    if d is None:
        return ["(test evaluation missing)"]
    m = d["models"]
    ref = m.get("paper-coords")
    out = ["| weights | test perplexity | relative to the checkpoint |", "|---|---|---|"]
    for k in ("paper-coords", "paper-coords.fp16", "paper-coords.int8"):
        if k in m:
            out.append(
                f"| {k} | {m[k]['perplexity']:.4f} | "
                f"{100 * (m[k]['perplexity'] / ref['perplexity'] - 1):+.3f}% |"
            )
    return out


def attention(e: Path) -> list[str]:
    p = e / "attention" / "heads.csv"
    if not p.exists():
        return ["(analyze-attention output missing)"]
    rows = list(csv.DictReader(open(p)))
    out = [
        "| model | layer | 3D-local heads | their sigma with positions zeroed (A) "
        "| their sigma by the paper's fit (A) |",
        "|---|---|---|---|---|",
    ]
    # positions zeroed: the sigma of the test that makes a head 3D-local; the paper's fit (mean
    # weight, self point at 0 A, full input) is the quantity of the paper's per-layer sigma
    for model in sorted({r["model"] for r in rows}):
        for layer in sorted({int(r["layer"]) for r in rows if r["model"] == model}):
            hs = [
                r
                for r in rows
                if r["model"] == model and int(r["layer"]) == layer and r.get("local_3d") == "True"
            ]
            cols = [
                ", ".join(
                    f"{float(r[k]):.1f}"
                    for r in hs
                    if r.get(k) not in ("", None) and float(r[k]) == float(r[k])  # not NaN
                )
                for k in ("sigma_3d_only", "sigma_3d_paper")
            ]
            out.append(f"| {model} | {layer} | {len(hs)} | {cols[0]} | {cols[1]} |")
    return out


def replay(e: Path) -> list[str]:
    d = _json(e / "replay.json")
    if d is None:
        return ["(replay missing)"]
    out = [f"device {d.get('device')}, torch {d.get('torch')}, model {d.get('model')}"]
    for length, r in (d.get("kernel") or {}).items():
        out.append(
            f"- kernel, L = {length}: non-finite dQ entries, "
            f"default kernels {r['default']['nonfinite_dq']}, "
            f"coordformer.attention {r['coordformer']['nonfinite_dq']}"
        )
    s = d.get("scan", {})
    if s:
        for i, (rm, pm, rb, pb) in enumerate(
            zip(s["real_min"], s["pad_min"], s["real_below"], s["pad_below"]), 1
        ):
            out.append(
                f"- layer {i}: lowest log-sum-exp, real rows {rm:.1f} ({rb} below -88.7), "
                f"padding rows {pm if math.isfinite(pm) else float('nan'):.1f} ({pb} below)"
            )
        out.append(
            f"- {s['batches_len_mod128_eq64']} of {s['batches']} batches have L % 128 == 64; "
            f"{s['batches_that_trip_cudnn']} of those have a row below -88.7"
        )
    for name, r in (d.get("steps") or {}).items():
        out.append(
            f"- steps padded to L % 128 == 64, {name} kernels: "
            f"{r['nonfinite_steps']} of {r['steps']} non-finite"
        )
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    e = Path(sys.argv[1])
    for title, part in (
        ("Training", training),
        ("Held-out evaluation", evaluations),
        ("Per residue (test, all-mask)", per_aa),
        ("Weights", quantisation),
        ("Attention", attention),
        ("Non-finite replay", replay),
    ):
        print(f"### {title}\n")
        try:
            print("\n".join(part(e)))
        except (KeyError, ValueError, IndexError) as err:
            print(f"(could not read: {type(err).__name__}: {err})")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
