#!/usr/bin/env python
"""Package trained runs as the shipped models: half-precision weights + a record of how they were made.

For each NAME=RUN_DIR pair: exports RUN_DIR's last checkpoint to
src/coordformer/resources/models/NAME.pt (float16), writes NAME.json (description, the exact
`coordformer pretrain` command, the data manifest, training summary, held-out metrics if given)
and copies the training log to NAME.train_log.csv.

    python scripts/ship_models.py small-coords=work/ship/coords small-nocoords=work/ship/nocoords \
        --eval work/ship/eval_test.json --description-from work/ship
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coordformer.model.checkpoints import export_model, load_model, shipped_models_dir

DESCRIPTIONS = {
    "small-coords": ("small-3m masked-LM with a linear embedding of CA coordinates and |x|^2, four first-layer "
                     "heads initialised as Gaussians of 3D distance (structure model)"),
    "small-nocoords": "small-3m masked-LM, sequence only (same size, data and budget)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--eval", type=Path, help="`coordformer evaluate --json` output with both models, keyed by run folder name")
    args = ap.parse_args()
    out = shipped_models_dir()
    out.mkdir(parents=True, exist_ok=True)
    evals = json.loads(args.eval.read_text()).get("models", {}) if args.eval else {}
    cards = []
    for pair in args.pairs:
        name, run = pair.split("=", 1)
        run = Path(run)
        model, meta = load_model(run / "checkpoints" / "last.ckpt")
        summary = json.loads((run / "summary.json").read_text())
        logs = sorted((run / "logs").glob("version_*/metrics.csv"))
        card = {
            "name": name,
            "description": DESCRIPTIONS.get(name, ""),
            "n_parameters": model.num_parameters(),
            "model_config": model.config.to_dict(),
            "train_config": summary["train_config"],
            "command": summary.get("command"),
            "data": {k: summary["data"]["manifest"].get(k) for k in ("n_chains", "n_residues", "splits", "config", "counts", "created")},
            "training": {"global_step": summary["global_step"], "train_minutes": summary["train_minutes"], "final_val": summary["final_val"]},
            "heldout_eval": {k: v for k, v in evals.get(run.name, {}).items() if k not in ("checkpoint", "per_chain")},
            "train_log": f"{name}.train_log.csv",
        }
        export_model(model, out / f"{name}.pt", meta={"name": name, "global_step": summary["global_step"]})
        (out / f"{name}.json").write_text(json.dumps(card, indent=2))
        if logs:
            with open(out / f"{name}.train_log.csv", "w") as f:
                for i, log in enumerate(logs):
                    lines = log.read_text().splitlines(keepends=True)
                    f.writelines(lines if i == 0 else lines[1:])
        size = (out / f"{name}.pt").stat().st_size / 1e6
        print(f"{name}: {size:.1f} MB, step {summary['global_step']}, {summary['train_minutes']:.1f} min")
        if size >= 8:
            print(f"{name} is over 8 MB", file=sys.stderr)
            return 1
        cards.append(card)
    (out / "README.md").write_text(readme(cards, " ".join(sys.argv)))
    return 0


def readme(cards: list[dict], ship_command: str) -> str:
    lines = ["# Shipped models", "",
             "Made by `coordformer pretrain` on this project's machine; packaged with",
             f"`python {ship_command}`.", ""]
    for c in cards:
        t, d, ev = c["training"], c["data"], c.get("heldout_eval") or {}
        lines += [f"## {c['name']}", "", c["description"], "",
                  f"- Parameters: {c['n_parameters']:,} (stored as float16)",
                  f"- Command: `{c['command']}`",
                  f"- Data: prepared dataset with {d['n_chains']:,} chains / {d['n_residues']:,} residues, splits {d['splits']} "
                  f"(prepare config: split {d['config']['split']} at {d['config']['split_identity']} identity, "
                  f"exclusions {len(d['config']['exclude_files'])} DeepFRI id files); trained on train only",
                  f"- Training: {t['global_step']} steps, {t['train_minutes']:.1f} min of training time; "
                  f"final validation {json.dumps({k: round(v, 4) for k, v in t['final_val'].items()})}",
                  f"- Training log: `{c['train_log']}`; full record: `{c['name']}.json`"]
        if ev:
            lines.append(f"- Held-out test split: perplexity {ev['perplexity']:.2f}, recovery {ev['recovery']:.1%} "
                         f"({ev['n_masked']:,} masked residues of {ev['n_chains']:,} chains)")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
