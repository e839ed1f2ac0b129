"""How Gaussian the Gaussian-initialised heads are at initialisation.

A freshly built model with `--recipe fast` has its first-layer heads 0..K-1 set to attend by a
Gaussian of CA-CA distance (sigma 4, 6, 8, 12 Angstrom, `ModelConfig.gaussian_init_sigmas`). The
construction reads the coordinate channels after the first LayerNorm and divides by one typical
LayerNorm scale; each residue's own scale differs, so the kernel is approximate. Per structure and
head this prints the total-variation distance between each query's attention (over keys with a CA)
and the normalised Gaussian softmax(-d^2 / 2 sigma^2) over the same keys: its maximum and mean over
queries (0: exact, 1: disjoint), next to the structure's radius of gyration.

    python benchmarks/gaussian_init_fidelity.py --preset small-3m tests/data/1orc.pdb \
        tests/data/1lzh.pdb.gz
"""

import argparse

import torch

from coordformer.config import preset
from coordformer.constants import CA_INDEX
from coordformer.data.batching import chains_to_batch
from coordformer.geometry import pairwise_distances
from coordformer.io import read_structure
from coordformer.model import CoordFormer

ap = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
)
ap.add_argument("structures", nargs="+")
ap.add_argument("--preset", default="small-3m")
ap.add_argument("--seed", type=int, default=0, help="the model's initialisation")
a = ap.parse_args()

torch.manual_seed(a.seed)
model = CoordFormer(preset(a.preset, recipe="fast")).eval()
c = model.config
sigmas = [
    c.gaussian_init_sigmas[h % len(c.gaussian_init_sigmas)] for h in range(c.gaussian_init_heads)
]
heads = f"{c.gaussian_init_heads} Gaussian heads, sigma {sigmas} A"
print(f"{a.preset}, recipe fast, seed {a.seed}: {heads}")
print(
    "| chain | residues | Rg (A) | "
    + " | ".join(f"sigma {s:g} A: max / mean TV" for s in sigmas)
    + " |"
)
print("|---|---|---|" + "---|" * len(sigmas))
for path in a.structures:
    chain = read_structure(path)[0]
    tokens, coords, mask = chains_to_batch([chain])
    ca = coords[0, :, CA_INDEX]
    ok = ~torch.isnan(ca).any(-1)
    with torch.no_grad():
        att = model(tokens, coords, mask, need_attention=True).attentions[0][0]  # [H, L, L]
    centred = ca - ca[ok].mean(0)
    d = pairwise_distances(torch.nan_to_num(centred))
    rg = centred[ok].pow(2).sum(-1).mean().sqrt().item()
    cells = []
    for h, sigma in enumerate(sigmas):
        logits = -(d**2) / (2 * sigma**2)
        logits[:, ~ok] = float("-inf")
        tv = 0.5 * (att[h] - logits.softmax(-1))[ok].abs().sum(-1)
        cells.append(f"{tv.max().item():.2f} / {tv.mean().item():.2f}")
    print(f"| {chain.id} | {int(ok.sum())} | {rg:.1f} | " + " | ".join(cells) + " |")
