"""Does the data path keep up? Collation tokens/s of the training batch pipeline vs the tokens/s a
training step consumes, measured side by side in one run on the same batches.

    python benchmarks/data_path.py --data work/pdb_chains_x --preset small-3m --batches 20

The pipeline part is what a DataLoader worker does per batch: read memory-mapped chains, crop,
centre, rotate, BERT-mask, pad (``MaskedBatches.__getitem__``). The model part is one training step
(forward, backward, AdamW; bf16 autocast on CUDA) on those batches. Prints both rates and their
ratio (goal: >= 10x). ``--workers 4 8`` also times a DataLoader with that many worker processes
(pinned memory on CUDA), which is how `coordformer pretrain --num-workers` feeds a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--preset", default="small-3m")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[],
        help="also time DataLoaders with these worker counts",
    )
    a = ap.parse_args(argv)

    import torch

    from coordformer.config import preset
    from coordformer.data.batching import BatchSettings, MaskedBatches
    from coordformer.data.store import PreparedDataset
    from coordformer.model import CoordFormer
    from coordformer.train.mlm import target_loss

    if a.threads:
        torch.set_num_threads(a.threads)
    data = PreparedDataset(a.data)
    idx = data.split_indices("train")
    ds = MaskedBatches(
        data, idx, BatchSettings(crop_length=a.crop, tokens_per_batch=a.tokens), seed=0, train=True
    )
    n = min(a.batches, len(ds))
    t0 = time.perf_counter()
    batches = [ds[k] for k in range(n)]
    t_data = time.perf_counter() - t0
    tokens = sum(int(b.padding_mask.sum()) for b in batches)

    cuda = a.device.startswith("cuda")
    torch.manual_seed(0)
    model = CoordFormer(preset(a.preset)).to(a.device)
    # the training step as pretrain runs it (LM head on the targets, no host syncs, fused AdamW
    # on a GPU): an older, slower step would overstate how far the data path is ahead of it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    batches = [b.to(a.device) for b in batches]

    def step(b):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model(**b.inputs(), logits_at=b.target_index)
            loss, _, _ = target_loss(out.logits.float(), b.targets.flatten()[b.target_index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:3]:  # warm-up (CUDA kernels, allocator)
        step(b)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    if cuda:
        torch.cuda.synchronize()
    t_model = time.perf_counter() - t0
    data_rate, model_rate = tokens / t_data, tokens / t_model
    print(
        f"{n} batches, {tokens} real tokens (crop {a.crop}, budget {a.tokens}), device {a.device}"
    )
    print(f"data pipeline (1 process): {data_rate:10.0f} tokens/s")
    print(f"training step ({a.preset}): {model_rate:10.0f} tokens/s")
    print(f"ratio pipeline / model: {data_rate / model_rate:.1f}x (goal >= 10x)")
    for w in a.workers:
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, num_workers=w, pin_memory=cuda, persistent_workers=w > 0
        )
        it = iter(loader)
        for _ in range(min(2 * max(w, 1), len(ds) - n)):  # workers started and their queues filled
            next(it)
        t0, got = time.perf_counter(), 0
        for _ in range(n):
            got += int(next(it).padding_mask.sum())
        rate = got / (time.perf_counter() - t0)
        print(
            f"DataLoader, {w:2d} workers: {rate:10.0f} tokens/s = "
            f"{rate / model_rate:.1f}x the model"
        )
        del it, loader
    return 0


if __name__ == "__main__":
    sys.exit(main())
