"""Does a chain's output depend on what else is in its batch? float32 vs bf16 autocast, side
by side.

    python benchmarks/batch_invariance.py --model small-coords --chains 8 [--device cuda]

Runs each of the first ``--chains`` bundled held-out chains alone and inside one padded batch with
the others, and prints the largest logit and probability differences over the chain's residues and
the fraction of residues whose argmax agrees. float32 differences are rounding (the padded batch
changes matrix shapes, hence summation order); bf16 autocast rounds every product input to ~3
significant digits, so the same reordering shows up much larger.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="small-coords")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)

    from coordformer.data.batching import chains_to_batch
    from coordformer.demo import bundled_chains
    from coordformer.io import iter_chain_set
    from coordformer.model.checkpoints import load_model

    model, _ = load_model(a.model)
    model = model.to(a.device)
    chains = [c for c, _ in zip(iter_chain_set(bundled_chains()), range(a.chains))]
    together = [t.to(a.device) for t in chains_to_batch(chains)]
    for bf16 in (False, True):
        logit_diff = prob_diff = 0.0
        agree = 1.0
        for i, c in enumerate(chains):
            alone = [t.to(a.device) for t in chains_to_batch([c])]
            with (
                torch.no_grad(),
                torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16, enabled=bf16),
            ):
                x = model(*alone).logits.float()[0]
                y = model(*together).logits.float()[i, : len(c.sequence)]
            logit_diff = max(logit_diff, (x - y).abs().max().item())
            prob_diff = max(prob_diff, (x.softmax(-1) - y.softmax(-1)).abs().max().item())
            agree = min(agree, (x.argmax(-1) == y.argmax(-1)).float().mean().item())
        print(
            f"{'bf16 autocast' if bf16 else 'float32':>13}: max |logit diff| {logit_diff:.2e}, "
            f"max |probability diff| {prob_diff:.2e}, argmax agreement >= {agree:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
