"""Checks of `coordformer score` on held-out chains (issue 19, part 3).

1. ``agreement``: fast mode against exact mode (the same chains, the same model): Pearson r and mean
   absolute difference of log p(native), of all 20 log-probabilities and of the 19 substitution
   scores per position; forward passes and seconds of each.
2. ``burial``: masked-marginal substitution scores (log p(aa) - log p(wt), the 19 non-native
   amino acids) at buried positions (top third of CA neighbour counts within 10 A) against exposed
   ones (bottom third), per model; also the same gap within each native amino acid (the mean over
   the 20 of buried - exposed, so composition does not make the gap), and the Spearman correlation
   of the per-position mean substitution score with the neighbour count. Intervals: 95% bootstrap
   over chains (2,000 draws); the model difference is paired (same residues, same draws).
3. ``glypro``: substitutions to proline and to glycine in helices (H), strands (E) and elsewhere
   (-), by the DSSP-like assignment of ``coordformer.score.structure``; raw, and relative to the
   mean of all 19 substitutions at the same position.

    python benchmarks/score_checks.py --out work/score_checks -c small-coords -c small-nocoords \
        --mode fast --agreement 60

Chains: the bundled held-out demo chains by default (400 test-split chains neither model saw), or
``--data DIR --split test`` (a prepared dataset). Masked marginals are cached per model and mode in
OUT/marginals_<model>_<mode>_n<chains>.npz (the agreement's exact and fast runs on the first N
chains too), so a re-run only redoes the analysis, and ``--max-chains N --mode exact`` after
``--agreement N`` reuses the exact marginals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

AAS = "ACDEFGHIKLMNPQRSTVWY"


def load_chains(a):
    from coordformer.demo import bundled_chains
    from coordformer.score import read_chains

    if a.data:
        chains, _ = read_chains([a.data], split=a.split)
    else:
        chains, _ = read_chains([str(bundled_chains())])
    return chains[: a.max_chains] if a.max_chains else chains


def marginals(model_name, chains, cfg, out: Path, tag: str):
    """[sum L, 20] log-probs (chains concatenated) and seconds, cached in OUT."""
    import torch

    from coordformer.model.checkpoints import load_model
    from coordformer.score import masked_marginals

    f = out / f"marginals_{Path(model_name).name}_{tag}.npz"
    ids = np.array([c.id for c in chains])
    if f.exists():
        z = np.load(f)
        if np.array_equal(z["ids"], ids):
            return z["log_probs"], float(z["seconds"]), int(z["passes"])
    model, _ = load_model(model_name)
    t = time.time()
    with torch.no_grad():
        scores = masked_marginals(model, chains, cfg, progress=sys.stderr.isatty())
    sec = time.time() - t
    lp = np.concatenate([s.log_probs for s in scores])
    passes = sum(s.n_passes for s in scores)
    np.savez(f, ids=ids, log_probs=lp, seconds=sec, passes=passes)
    return lp, sec, passes


def features(chains):
    from coordformer.score.structure import ca_neighbour_counts, secondary_structure

    nb, ss, wt, chain_of = [], [], [], []
    for k, c in enumerate(chains):
        nb.append(ca_neighbour_counts(c.coords))
        ss.append(np.array(list(secondary_structure(c.coords, c.sequence))))
        wt.append(np.array([AAS.find(x) for x in c.sequence]))
        chain_of.append(np.full(len(c.sequence), k))
    return np.concatenate(nb), np.concatenate(ss), np.concatenate(wt), np.concatenate(chain_of)


def sub_scores(lp, wt):
    """[N, 20] log p(aa) - log p(wt), NaN in the native column and for X."""
    lp = lp.astype(np.float64)
    out = np.full(lp.shape, np.nan)
    ok = wt >= 0
    out[ok] = lp[ok] - lp[np.flatnonzero(ok), wt[ok]][:, None]
    out[np.flatnonzero(ok), wt[ok]] = np.nan
    return out


def boot(values_by_group, chain_of, n_chains, stat, draws=2000, seed=0):
    """Point estimate and 95% interval of stat(per-chain sums, counts) under resampling chains."""
    rng = np.random.default_rng(seed)
    sums = {
        g: np.bincount(chain_of[m], weights=v, minlength=n_chains)
        for g, (v, m) in values_by_group.items()
    }
    cnts = {
        g: np.bincount(chain_of[m], minlength=n_chains).astype(float)
        for g, (v, m) in values_by_group.items()
    }
    point = stat({g: sums[g].sum() for g in sums}, {g: cnts[g].sum() for g in cnts})
    w = rng.multinomial(n_chains, np.full(n_chains, 1 / n_chains), size=draws).astype(float)
    bs = stat({g: w @ sums[g] for g in sums}, {g: w @ cnts[g] for g in cnts})
    lo, hi = np.nanpercentile(bs, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "-c",
        "--checkpoint",
        action="append",
        required=True,
        help="model; repeat (the first is the structure model)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--data", default=None, help="prepared dataset (default: the bundled held-out demo chains)"
    )
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-chains", type=int, default=None)
    ap.add_argument(
        "--mode",
        default="fast",
        choices=("exact", "fast"),
        help="masked marginals for the burial / Gly-Pro checks",
    )
    ap.add_argument("--min-sep", type=int, default=8)
    ap.add_argument("--min-dist", type=float, default=12.0)
    ap.add_argument(
        "--agreement", type=int, default=0, help="fast vs exact on the first N chains (0 = skip)"
    )
    ap.add_argument(
        "--agreement-settings",
        default="8:12,8:0,16:16",
        help="fast settings to compare, MIN_SEP:MIN_DIST comma-separated",
    )
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch

    from coordformer.score import ScoreConfig

    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    chains = load_chains(a)
    n_res = sum(len(c.sequence) for c in chains)
    print(f"{len(chains)} chains, {n_res} residues", flush=True)
    report: dict = {"chains": len(chains), "residues": n_res, "argv": sys.argv[1:]}

    if a.agreement:
        sub = chains[: a.agreement]
        nb, ss, wt, cof = features(sub)
        report["agreement"] = {"chains": len(sub), "residues": int(len(wt)), "models": {}}
        for name in a.checkpoint:
            ex, ex_s, ex_p = marginals(
                name, sub, ScoreConfig(mode="exact"), a.out, f"exact_n{len(sub)}"
            )
            rows = {"exact": {"passes": ex_p, "seconds": round(ex_s, 1)}}
            for setting in a.agreement_settings.split(","):
                sep, dist = setting.split(":")
                cfg = ScoreConfig(mode="fast", min_sep=int(sep), min_dist=float(dist))
                fa, fa_s, fa_p = marginals(
                    name, sub, cfg, a.out, f"fast{sep}-{float(dist):g}_n{len(sub)}"
                )
                ok = wt >= 0
                lw_e, lw_f = ex[np.flatnonzero(ok), wt[ok]], fa[np.flatnonzero(ok), wt[ok]]
                se, sf = sub_scores(ex, wt), sub_scores(fa, wt)
                m = np.isfinite(se)
                rows[f"fast min_sep {sep} min_dist {dist}"] = {
                    "passes": fa_p,
                    "seconds": round(fa_s, 1),
                    "r_logp_wt": float(np.corrcoef(lw_e, lw_f)[0, 1]),
                    "mad_logp_wt": float(np.abs(lw_e - lw_f).mean()),
                    "mad_all20": float(np.abs(ex - fa).mean()),
                    "r_substitution": float(np.corrcoef(se[m], sf[m])[0, 1]),
                    "mad_substitution": float(np.abs(se[m] - sf[m]).mean()),
                    "pppl_exact": float(np.exp(-lw_e.mean())),
                    "pppl_fast": float(np.exp(-lw_f.mean())),
                }
            report["agreement"]["models"][name] = rows
            print(json.dumps({name: rows}, indent=1), flush=True)

    cfg = ScoreConfig(mode=a.mode, min_sep=a.min_sep, min_dist=a.min_dist)
    tag = (a.mode if a.mode == "exact" else f"fast{a.min_sep}-{a.min_dist:g}") + f"_n{len(chains)}"
    nb, ss, wt, cof = features(chains)
    ok = wt >= 0
    t1, t2 = np.nanpercentile(nb[ok], [100 / 3, 200 / 3])
    buried, exposed = ok & (nb >= t2), ok & (nb <= t1)
    report["burial_thresholds"] = {
        "exposed_max_neighbours": float(t1),
        "buried_min_neighbours": float(t2),
        "n_buried": int(buried.sum()),
        "n_exposed": int(exposed.sum()),
    }
    report["ss_counts"] = {k: int(((ss == k) & ok).sum()) for k in "HE-"}
    per_model = {}
    n_chains = len(chains)
    for name in a.checkpoint:
        lp, sec, passes = marginals(name, chains, cfg, a.out, tag)
        s = sub_scores(lp, wt)
        mean_sub = np.nanmean(s, axis=1)  # per position, NaN for X
        lw = np.full(len(wt), np.nan)
        lw[ok] = lp[np.flatnonzero(ok), wt[ok]]
        per_model[name] = {"mean_sub": mean_sub, "s": s}
        from scipy.stats import spearmanr

        res = {
            "passes": passes,
            "seconds": round(sec, 1),
            "pseudo_perplexity": float(np.exp(-np.nanmean(lw))),
        }
        res["mean_sub_buried"] = float(mean_sub[buried].mean())
        res["mean_sub_exposed"] = float(mean_sub[exposed].mean())
        res["gap_buried_minus_exposed"] = boot(
            {"b": (mean_sub[buried], buried), "e": (mean_sub[exposed], exposed)},
            cof,
            n_chains,
            lambda S, C: S["b"] / C["b"] - S["e"] / C["e"],
        )
        # within each native amino acid: mean over the 20 of (buried - exposed)
        groups = {}
        for k in range(20):
            groups[f"b{k}"] = (mean_sub[buried & (wt == k)], buried & (wt == k))
            groups[f"e{k}"] = (mean_sub[exposed & (wt == k)], exposed & (wt == k))

        def within(S, C):
            return np.nanmean(
                [S[f"b{k}"] / C[f"b{k}"] - S[f"e{k}"] / C[f"e{k}"] for k in range(20)], axis=0
            )

        with np.errstate(invalid="ignore", divide="ignore"):
            res["gap_within_native_aa"] = boot(groups, cof, n_chains, within)
        res["spearman_neighbours_vs_mean_sub"] = float(spearmanr(nb[ok], mean_sub[ok]).statistic)
        res["mean_logp_wt_buried"] = float(np.nanmean(lw[buried]))
        res["mean_logp_wt_exposed"] = float(np.nanmean(lw[exposed]))
        gp = {}
        for target in "PG":
            col = AAS.index(target)
            sc = s[:, col]
            rel = sc - mean_sub
            for k, lab in (("H", "helix"), ("E", "strand"), ("-", "other")):
                m = ok & (wt != col) & (ss == k)
                gp[f"to_{target}_{lab}"] = float(np.nanmean(sc[m]))
                gp[f"to_{target}_{lab}_rel"] = float(np.nanmean(rel[m]))
            struct = ok & (wt != col) & np.isin(ss, ["H", "E"])
            other = ok & (wt != col) & (ss == "-")
            gp[f"to_{target}_structured_minus_other"] = boot(
                {"s": (sc[struct], struct), "o": (sc[other], other)},
                cof,
                n_chains,
                lambda S, C: S["s"] / C["s"] - S["o"] / C["o"],
            )
            gp[f"to_{target}_structured_minus_other_rel"] = boot(
                {"s": (rel[struct], struct), "o": (rel[other], other)},
                cof,
                n_chains,
                lambda S, C: S["s"] / C["s"] - S["o"] / C["o"],
            )
        res["glypro"] = gp
        report.setdefault("models", {})[name] = res
        print(json.dumps({name: res}, indent=1), flush=True)

    if len(a.checkpoint) >= 2:  # paired differences: structure model (first) minus the second
        m1, m2 = per_model[a.checkpoint[0]], per_model[a.checkpoint[1]]
        d = m1["mean_sub"] - m2["mean_sub"]
        diff = {
            "gap_difference": boot(
                {"b": (d[buried], buried), "e": (d[exposed], exposed)},
                cof,
                n_chains,
                lambda S, C: S["b"] / C["b"] - S["e"] / C["e"],
            )
        }
        for target in "PG":
            col = AAS.index(target)
            dd = m1["s"][:, col] - m2["s"][:, col]
            rel = dd - d
            struct = ok & (wt != col) & np.isin(ss, ["H", "E"])
            other = ok & (wt != col) & (ss == "-")
            diff[f"to_{target}_structured_minus_other_difference"] = boot(
                {"s": (dd[struct], struct), "o": (dd[other], other)},
                cof,
                n_chains,
                lambda S, C: S["s"] / C["s"] - S["o"] / C["o"],
            )
            diff[f"to_{target}_structured_minus_other_rel_difference"] = boot(
                {"s": (rel[struct], struct), "o": (rel[other], other)},
                cof,
                n_chains,
                lambda S, C: S["s"] / C["s"] - S["o"] / C["o"],
            )
        report["difference_first_minus_second"] = diff
        print(json.dumps({"difference": diff}, indent=1), flush=True)
    (a.out / "score_checks.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.out / 'score_checks.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
