"""Training-step throughput with and without sequence packing, side by side on real batches.

    python benchmarks/packing.py --data work/pdb_chains_x --preset small-3m --tokens 8192 \\
        --batches 12 --rounds 3 --device cpu --json work/packing.json

The same batches (the training stream's first ``--batches``, with their crops and masks) run as
padded rows and as packed rows (``data.batching.pack_batch``), arms interleaved round by round so
that drift in machine load hits both alike. One step = forward, backward and an AdamW update.
Reports real residues per second (padding not counted), the padding share of each layout, and the
ratio packed / padded (medians over rounds). Timings are noisy on shared machines: read the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from coordformer.config import preset
from coordformer.data.batching import BatchSettings, MaskedBatches, pack_batch
from coordformer.data.store import PreparedDataset
from coordformer.model.core import CoordFormer
from coordformer.train.mlm import masked_lm_loss


def step_time(model, opt, batches, device) -> float:
    # bf16 on a GPU, as training runs there (float32 matmuls would set another ratio)
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    for b in batches:
        b = b.to(device)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            logits = model(**b.inputs()).logits
        loss, _, _ = masked_lm_loss(logits.float(), b.targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (coordformer prepare)")
    ap.add_argument("--preset", default="small-3m")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per batch (padded budget)")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = PreparedDataset(args.data)
    settings = BatchSettings(tokens_per_batch=args.tokens, crop_length=args.crop)
    stream = MaskedBatches(data, data.split_indices("train"), settings, seed=0)
    padded = [stream[i] for i in range(min(args.batches, len(stream)))]
    # indexed, as training's packed batches are: without the host fields the model reads the
    # positions' range from the device, a wait the padded arm does not have
    packed = [pack_batch(b).indexed() for b in padded]
    residues = sum(int(b.padding_mask.sum()) for b in padded)
    share = {
        name: 1 - residues / sum(b.tokens.numel() for b in bs)
        for name, bs in (("padded", padded), ("packed", packed))
    }
    torch.manual_seed(0)
    model = CoordFormer(preset(args.preset)).to(args.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step_time(model, opt, padded[:2], args.device)  # warm-up
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    for r in range(args.rounds):
        for name, bs in (("padded", padded), ("packed", packed)):
            dt = step_time(model, opt, bs, args.device)
            times[name].append(dt)
            print(f"round {r + 1} {name:>6}: {residues / dt:10.0f} residues/s")
    rate = {k: residues / statistics.median(v) for k, v in times.items()}
    ratio = rate["packed"] / rate["padded"]
    print(
        f"\n{len(padded)} batches, {residues:,} residues; padding share: padded "
        f"{share['padded']:.1%}, packed {share['packed']:.1%}"
    )
    print(
        f"residues/s (median of {args.rounds}): padded {rate['padded']:.0f}, packed "
        f"{rate['packed']:.0f}; packed / padded {ratio:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "residues": residues,
                    "padding_share": share,
                    "residues_per_s": rate,
                    "ratio_packed_padded": ratio,
                    "machine": platform.platform(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
