"""How held out is a prepared dataset's held-out split, and what do models score on its strictly
held-out part? Finds, with MMseqs2, the chains of ``--split`` that have a homologue in the train
split (sequence identity >= ``--identity`` over an alignment covering >= ``--coverage`` of the
shorter sequence: a fragment or domain of a train chain counts), writes them to ``--out`` (TSV:
chain, train homologue, identity, coverage of the shorter), and with ``--json`` (``coordformer
evaluate --json`` files of that split, which keep per-chain sums) prints each model's perplexity
and recovery on the whole split, on the chains without a train homologue and on those with one.

    .venv/bin/python scripts/strict_heldout.py work/pdb_chains_x --out work/strict/test_hits.tsv \\
        --json work/strict/small-coords.json work/strict/small-nocoords.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from coordformer.data.splits import find_homologues
from coordformer.data.store import PreparedDataset


def _scores(per_chain: dict, ids) -> tuple[int, int, float, float]:
    rows = [per_chain[i] for i in ids if i in per_chain]
    n = sum(r[0] for r in rows)
    if not n:
        return len(rows), 0, math.nan, math.nan
    return len(rows), n, math.exp(sum(r[1] for r in rows) / n), sum(r[2] for r in rows) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--identity", type=float, default=0.3)
    ap.add_argument("--coverage", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path, nargs="*", default=[])
    args = ap.parse_args()
    data = PreparedDataset(args.data)
    held = data.split_indices(args.split)
    train = data.split_indices("train")
    hits = find_homologues(
        [data.sequence(int(i)) for i in held],
        [data.sequence(int(i)) for i in train],
        args.identity,
        args.coverage,
        threads=args.threads,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        f.write("chain\ttrain_homologue\tidentity\tshorter_coverage\n")
        for q, h in sorted(hits.items()):
            f.write(
                f"{data.ids[held[q]]}\t{data.ids[train[h.target]]}\t{h.identity:.3f}\t"
                f"{h.shorter_coverage:.3f}\n"
            )
    leaky = {data.ids[held[q]] for q in hits}
    strict = [data.ids[i] for i in held if data.ids[i] not in leaky]
    print(
        f"{args.split}: {len(held)} chains; {len(leaky)} ({len(leaky) / max(len(held), 1):.1%}) "
        f"have a train homologue at >= {args.identity:.0%} identity over >= {args.coverage:.0%} "
        f"of the shorter sequence; {len(strict)} have none (list: {args.out})"
    )
    if args.json:
        print(
            "\n| model | chains scored (all / strict / with homologue) | perplexity all | strict "
            "| with homologue | recovery all | strict | with homologue |"
        )
        print("|---|---|---|---|---|---|---|---|")
    results = {}
    for path in args.json:
        doc = json.loads(path.read_text())
        results.update(doc["models"] if "models" in doc else {path.stem: doc})
    for label, res in results.items():
        per_chain = res["per_chain"]
        cols = [_scores(per_chain, ids) for ids in (list(per_chain), strict, sorted(leaky))]
        print(
            f"| {label} | {' / '.join(str(c[0]) for c in cols)} | "
            + " | ".join(f"{c[2]:.2f}" for c in cols)
            + " | "
            + " | ".join(f"{100 * c[3]:.1f}%" for c in cols)
            + " |"
        )


if __name__ == "__main__":
    main()
