#!/usr/bin/env python
"""Learning efficiency at equal CPU budget: coords vs no-coords (and ablations) side by side.

Every arm is a `coordformer pretrain` run with the same size, data, seed and wall-clock budget.
Arms run concurrently with the same number of torch threads each, so they share the machine
(and any background load) equally; then all are evaluated with `coordformer evaluate` on the
same held-out split with the same masking seed. Prints a table and ratios versus no-coords and
writes OUT/results.json and OUT/results.md.

Example (the issue's benchmark, two arms at once on a 2-core machine):
    python benchmarks/learning_efficiency.py --data work/pdb_chains --out work/bench25 \
        --minutes 25 --arms nocoords,best
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from coordformer.eval.stats import paired_bootstrap

ARMS = {
    "nocoords": ["--no-coords"],
    "paper-ca": [],
    "ca-norm": ["--norm-feature"],
    "ca-norm-gauss": ["--norm-feature", "--gaussian-heads", "4"],
    "bb-norm": ["--coord-mode", "backbone", "--norm-feature"],
    "bb-norm-gauss": ["--coord-mode", "backbone", "--norm-feature", "--gaussian-heads", "4"],
    "ca-norm-gaussvo": ["--norm-feature", "--gaussian-heads", "4", "--gaussian-values"],
    "bb-norm-gaussvo": [
        "--coord-mode",
        "backbone",
        "--norm-feature",
        "--gaussian-heads",
        "4",
        "--gaussian-values",
    ],
}


def _row(res: dict, run: Path, command: str) -> dict:
    summ = json.loads((run / "summary.json").read_text())
    return {
        "perplexity": res["perplexity"],
        "recovery": res["recovery"],
        "n_masked": res["n_masked"],
        "n_chains": res["n_chains"],
        "steps": summ["global_step"],
        "train_minutes": summ["train_minutes"],
        "per_residue_recovery": res["per_residue_recovery"],
        "command": command,
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--arms", default="nocoords,paper-ca")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--preset", default="small-3m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--eval-max-chains", type=int, default=None)
    ap.add_argument("--extra", default="", help="extra pretrain arguments for every arm")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="skip training; evaluate (if needed) and report existing runs",
    )
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "coordformer.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    procs, cmds = {}, {}
    t0 = time.time()
    for arm in [] if args.report_only else arms:
        run = args.out / arm
        cmd = [
            *exe,
            "pretrain",
            "--data",
            str(args.data),
            "--out",
            str(run),
            "--preset",
            args.preset,
            "--max-minutes",
            str(args.minutes),
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
            "--lr",
            str(args.lr),
            "--tokens-per-batch",
            str(args.tokens_per_batch),
            "--warmup-steps",
            str(args.warmup),
            "--val-every",
            str(args.val_every),
            "--val-max-chains",
            "256",
            "--quiet",
            *ARMS[arm],
            *args.extra.split(),
        ]
        cmds[arm] = " ".join(cmd[2:]).replace("coordformer.cli", "coordformer")
        run.mkdir(parents=True, exist_ok=True)
        procs[arm] = subprocess.Popen(
            cmd, env=env, stdout=open(run / "stdout.log", "w"), stderr=subprocess.STDOUT
        )
    for arm, p in procs.items():
        if p.wait() != 0:
            print(f"arm {arm} failed; see {args.out / arm / 'stdout.log'}", file=sys.stderr)
            return 1
    train_wall = time.time() - t0
    results, evals = {}, {}
    for arm in arms:
        js = args.out / f"eval_{arm}.json"
        if args.report_only and js.exists() and "per_chain" in json.loads(js.read_text()):
            evals[arm] = json.loads(js.read_text())
            cmds[arm] = json.loads((args.out / arm / "summary.json").read_text()).get("command", "")
            results[arm] = _row(evals[arm], args.out / arm, cmds[arm])
            continue
        cmd = [
            *exe,
            "evaluate",
            "--checkpoint",
            str(args.out / arm / "checkpoints" / "last.ckpt"),
            "--data",
            str(args.data),
            "--split",
            args.eval_split,
            "--json",
            str(js),
            "--quiet",
        ]
        if args.eval_max_chains:
            cmd += ["--max-chains", str(args.eval_max_chains)]
        subprocess.run(
            cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=True, stdout=subprocess.DEVNULL
        )
        evals[arm] = json.loads(js.read_text())
        cmds.setdefault(
            arm, json.loads((args.out / arm / "summary.json").read_text()).get("command", "")
        )
        results[arm] = _row(evals[arm], args.out / arm, cmds[arm])
    base = "nocoords" if "nocoords" in results else None
    lines = [
        "| arm | steps | train min | perplexity | recovery | ppl ratio vs nocoords (95% CI) "
        "| recovery diff (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        ratio = diff = "-"
        if base and arm != base:
            bs = paired_bootstrap(evals[arm], evals[base])
            r["vs_nocoords"] = bs
            lo, hi = bs["perplexity_ratio_ci95"]
            ratio = f"{bs['perplexity_ratio']:.3f} ({lo:.3f}-{hi:.3f})"
            lo, hi = bs["recovery_diff_pt_ci95"]
            diff = f"{bs['recovery_diff_pt']:+.1f} pt ({lo:+.1f} to {hi:+.1f})"
        lines.append(
            f"| {arm} | {r['steps']} | {r['train_minutes']:.1f} | {r['perplexity']:.2f} "
            f"| {r['recovery']:.1%} | {ratio} | {diff} |"
        )
    table = "\n".join(lines)
    if args.report_only and (args.out / "results.json").exists():
        train_wall = (
            json.loads((args.out / "results.json").read_text())["meta"]["wall_minutes_total"] * 60
        )
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "arms_concurrent": len(arms),
        "threads_per_arm": args.threads,
        "minutes": args.minutes,
        "wall_minutes_total": train_wall / 60,
        "data": str(args.data),
        "eval_split": args.eval_split,
        "argv": sys.argv,
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    (args.out / "results.md").write_text(table + "\n")
    from coordformer.analysis.plots import per_residue_recovery_figure

    per_residue_recovery_figure(
        {a: evals[a] for a in reversed(arms)},
        args.out / "per_residue_recovery.png",
        title=f"{args.preset}, {args.minutes:g} min each, test split of {args.data.name}",
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
