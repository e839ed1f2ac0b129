"""How much a chain's frame moves `score`'s numbers, and whether averaging over rotations would pay.

The models are trained on randomly rotated inputs and are not rotation-invariant, so each frame is
one draw of the model's answer. `score` and `embed` feed each chain in the canonical frame of its
CAs (`geometry.canonical_frame`); before, they fed the file's own frame. On held-out chains
(the bundled demo chains, test split) this prints, per frame: the pseudo-perplexity (fast mode) and
the mean / 99th-percentile / largest |difference| of log p(native) per residue against the
canonical frame. The frames are: the file's own, and K seeded random rotations of the canonical
frame. Last, the pseudo-perplexity of the average of the K+1 probability tables (canonical frame
and the K rotations), and what `score --rotations K+1` gives (its own fixed rotations).

    python benchmarks/score_frame.py --chains 60 --rotations 4 -c small-coords
"""

import argparse
import time

import numpy as np
import torch

import coordformer.score.marginals as marginals
from coordformer.demo import bundled_chains
from coordformer.geometry import canonical_frame, random_rotation
from coordformer.io import iter_chain_set
from coordformer.model.checkpoints import load_model
from coordformer.score import ScoreConfig, masked_marginals

ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument("-c", "--checkpoint", default="small-coords", help="model name or file")
ap.add_argument("--chains", type=int, default=60, help="first N demo chains")
ap.add_argument("--rotations", type=int, default=4, help="random rotations of the canonical frame")
ap.add_argument("--mode", default="fast", choices=("fast", "exact"))
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
chains = list(iter_chain_set(bundled_chains()))[: a.chains]
model = load_model(a.checkpoint)[0]
cfg = ScoreConfig(mode=a.mode)
rots = random_rotation(a.rotations, torch.Generator().manual_seed(a.seed))


def run(frame):
    marginals.canonical_frame = frame  # what run_passes feeds the model
    t = time.perf_counter()
    out = masked_marginals(model, chains, cfg)
    lp = np.concatenate([s.log_probs for s in out])  # [N, 20]
    wt = np.concatenate([s.wt_index for s in out])
    return lp, wt, time.perf_counter() - t


base, wt, secs = run(canonical_frame)
ok = wt >= 0
tables = {"canonical": base}
tables["file frame"] = run(lambda co: co)[0]
for k in range(a.rotations):
    tables[f"rotation {k}"] = run(
        lambda co, r=rots[k]: torch.einsum("blac,dc->blad", canonical_frame(co), r)
    )[0]
marginals.canonical_frame = canonical_frame


def lp_wt(lp):
    return lp[np.flatnonzero(ok), wt[ok]].astype(np.float64)


ref = lp_wt(base)
print(
    f"{a.checkpoint}, {len(chains)} chains, {int(ok.sum()):,} residues, {a.mode} mode "
    f"({secs:.0f} s per frame)"
)
print(f"{'frame':<14} {'pseudo-ppl':>10} {'mean |d|':>9} {'p99 |d|':>8} {'max |d|':>8}")
for name, lp in tables.items():
    d = np.abs(lp_wt(lp) - ref)
    print(
        f"{name:<14} {np.exp(-lp_wt(lp).mean()):>10.3f} {d.mean():>9.4f} "
        f"{np.quantile(d, 0.99):>8.3f} {d.max():>8.3f}"
    )
avg = [tables["canonical"]] + [tables[f"rotation {k}"] for k in range(a.rotations)]
mix = np.log(np.mean([np.exp(t.astype(np.float64)) for t in avg], axis=0))
print(
    f"average of canonical + {a.rotations} rotations (probabilities): "
    f"pseudo-ppl {np.exp(-lp_wt(mix).mean()):.3f}"
)
opt = masked_marginals(model, chains, ScoreConfig(mode=a.mode, rotations=a.rotations + 1))
lp = np.concatenate([s.log_probs for s in opt])
print(
    f"score --rotations {a.rotations + 1} (the canonical frame and {a.rotations} fixed rotations, "
    f"SCORE_ROTATION_SEED): pseudo-ppl {np.exp(-lp_wt(lp).mean()):.3f}"
)
