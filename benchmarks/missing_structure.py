"""Masked-LM quality when coordinates are missing: every model on the same masked residues of a
split, with all coordinates given, with one 5-30% stretch per chain withheld (an unresolved loop put
back from the deposited sequence, `--seqres gaps`), with that stretch deleted (a loop the file
omits, read as modelled: `--seqres off`), and with none given (a FASTA input); `coordformer evaluate
--hide-coords` for each condition.

    python benchmarks/missing_structure.py -c small-coords -c small-coords-sd -c small-nocoords \
        --data work/pdb_chains_x --split test --json work/sd/missing_structure.json

Prints, per condition and model, perplexity and recovery over all masked residues and over those fed
without coordinates, and paired-bootstrap intervals (over chains) of each model against the last one
given (the reference, e.g. the sequence-only model). A sequence-only model reads no coordinates: its
overall figures are the same in every condition but "cut", and its figures on the withheld residues
are the reference for the structure models there. The residues outside the stretch are the same in
"none", "span" and "cut": their figures ("outside") say whether putting an omitted loop back helps
the rest of the chain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONDITIONS = ("none", "span", "cut", "all")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-c",
        "--checkpoint",
        action="append",
        required=True,
        help="model (name, .pt, .ckpt, run folder); repeat",
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-chains", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)

    import torch

    from coordformer.cli import (
        _checkpoint_label,
    )  # the model names `coordformer evaluate --json` uses
    from coordformer.data.store import PreparedDataset
    from coordformer.eval.mlm import evaluate_mlm
    from coordformer.eval.stats import paired_bootstrap
    from coordformer.model.checkpoints import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    data = PreparedDataset(a.data)
    results: dict[str, dict[str, dict]] = {c: {} for c in CONDITIONS}
    for ck in a.checkpoint:
        model, _ = load_model(ck)
        for cond in CONDITIONS:
            t0 = time.perf_counter()
            r = evaluate_mlm(
                model,
                data,
                a.split,
                max_chains=a.max_chains,
                hide_coords=cond,
                progress=False,
                device=a.device,
            )
            results[cond][ck] = r
            h, o = r["hidden"], r["outside"]
            print(
                f"{ck:>20} {cond:>5}: perplexity {r['perplexity']:6.2f}, "
                f"recovery {r['recovery']:6.1%}"
                + (
                    f"; without coordinates ({h['n_masked']:,}) {h['perplexity']:6.2f}, "
                    f"{h['recovery']:6.1%}"
                    if h
                    else ""
                )
                + (
                    f"; outside the stretch ({o['n_masked']:,}) {o['perplexity']:6.2f}, "
                    f"{o['recovery']:6.1%}"
                    if o
                    else ""
                )
                + f"  [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )

    ref = a.checkpoint[-1]
    print(
        f"\n| condition | model | perplexity | recovery | perplexity / {ref} (95% CI) "
        "| perplexity, residues without coordinates | recovery, residues without coordinates "
        "| perplexity, outside the stretch | recovery, outside the stretch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for cond in CONDITIONS:
        for ck in a.checkpoint:
            r = results[cond][ck]
            bs = paired_bootstrap(r, results[cond][ref]) if ck != ref else None
            h, o = r["hidden"] or {}, r["outside"] or {}
            row = {
                "condition": cond,
                "model": ck,
                "perplexity": r["perplexity"],
                "recovery": r["recovery"],
                "n_masked": r["n_masked"],
                "hidden": h or None,
                "outside": o or None,
                "vs_reference": bs,
            }
            summary.append(row)
            ci = (
                f"{bs['perplexity_ratio']:.3f} ({bs['perplexity_ratio_ci95'][0]:.3f}-"
                f"{bs['perplexity_ratio_ci95'][1]:.3f})"
                if bs
                else ""
            )
            print(
                f"| {cond} | {ck} | {r['perplexity']:.2f} | {r['recovery']:.1%} | {ci} | "
                + (f"{h['perplexity']:.2f} | {h['recovery']:.1%} |" if h else "| |")
                + (f" {o['perplexity']:.2f} | {o['recovery']:.1%} |" if o else " | |")
            )

    # the residues outside the stretch, paired across conditions: does putting a loop back (span)
    # help the rest of the chain more than leaving it out (cut)? (--seqres gaps vs --seqres off)
    print(
        "\n| model | outside the stretch: perplexity none / span / cut | span / none (95% CI) "
        "| cut / none (95% CI) | span / cut (95% CI) | recovery span - cut, points (95% CI) |"
    )
    print("|---|---|---|---|---|---|")

    def ci(p):
        return (
            f"{p['perplexity_ratio']:.4f} ({p['perplexity_ratio_ci95'][0]:.4f}-"
            f"{p['perplexity_ratio_ci95'][1]:.4f})"
        )

    outside = []
    for ck in a.checkpoint:
        o = {c: {"per_chain": results[c][ck]["per_chain_outside"]} for c in ("none", "span", "cut")}
        pairs = {
            f"{x}/{y}": paired_bootstrap(o[x], o[y])
            for x, y in (("span", "none"), ("cut", "none"), ("span", "cut"))
        }
        outside.append(
            {
                "model": ck,
                **{c: results[c][ck]["outside"] for c in ("none", "span", "cut")},
                "paired": pairs,
            }
        )
        sc = pairs["span/cut"]
        print(
            f"| {ck} | "
            + " / ".join(
                f"{results[c][ck]['outside']['perplexity']:.2f}" for c in ("none", "span", "cut")
            )
            + f" | {ci(pairs['span/none'])} | {ci(pairs['cut/none'])} | {ci(sc)} | "
            f"{sc['recovery_diff_pt']:+.2f} "
            f"({sc['recovery_diff_pt_ci95'][0]:+.2f} to {sc['recovery_diff_pt_ci95'][1]:+.2f}) |"
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        slim = {
            c: {
                ck: {k: v for k, v in r.items() if not k.startswith("per_chain")}
                for ck, r in rs.items()
            }
            for c, rs in results.items()
        }
        a.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "outside": outside,
                    "results": slim,
                    "data": a.data,
                    "split": a.split,
                },
                indent=2,
            )
        )
        # per-condition files in the `coordformer evaluate --json` layout, for
        # scripts/ship_models.py --eval
        for cond, rs in results.items():
            out = a.json.with_name(f"{a.json.stem}_{cond}.json")
            out.write_text(
                json.dumps({"models": {_checkpoint_label(ck): r for ck, r in rs.items()}}, indent=2)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
