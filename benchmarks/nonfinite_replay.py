"""Replay of the non-finite training steps (issue 16): which query rows could trip cuDNN's attention
backward, and does the model's attention path stay finite where the default kernel choice does not?

Three parts, each printed and written to --json:

1. kernel: q, k, v [1, H, L, 64] with one padded row and every logit near -120 (log-sum-exp below
   ln(FLT_MAX) ~ -88.7), at L = 640, 704, 768; non-finite dQ from plain SDPA (the default kernel
   choice: cuDNN on H100/H200) against ``coordformer.model.core.attention``. CUDA only.
2. scan: real training batches (the run's data stream, bf16 autocast on CUDA) through a model (a
   checkpoint, or a fresh one of --preset/--recipe). For each layer: the lowest log-sum-exp over
   real query rows and over padding rows, and how many rows fall below -88.7; how many batches have
   L % 128 == 64. A batch with both is one the cuDNN bug NaNs.
3. steps: forward + backward of those batches padded to L % 128 == 64, with the default kernel
   choice and with the model's; steps with a non-finite gradient in each. CUDA only.

    python benchmarks/nonfinite_replay.py --data work/pdb_chains_x --checkpoint RUN --device cuda
    python benchmarks/nonfinite_replay.py --data work/pdb_chains_x --preset paper-33m \\
        --batches 20  # CPU scan
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from coordformer.config import preset
from coordformer.data.batching import BatchSettings, MaskedBatches
from coordformer.data.store import PreparedDataset
from coordformer.model import core
from coordformer.model.checkpoints import load_model

LSE_LIMIT = -math.log(torch.finfo(torch.float32).max)  # -88.72


def kernel_part(device: str) -> dict:
    out = {}
    for length in (640, 704, 768):
        g = torch.Generator(device=device).manual_seed(0)
        d = 64
        q = torch.randn(2, 4, length, d, device=device, generator=g, dtype=torch.bfloat16) * 0.1
        k = torch.randn(2, 4, length, d, device=device, generator=g, dtype=torch.bfloat16) * 0.1
        v = torch.randn(2, 4, length, d, device=device, generator=g, dtype=torch.bfloat16)
        q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)
        mask = torch.ones(2, 1, 1, length, dtype=torch.bool, device=device)
        mask[1, ..., length - 37 :] = False  # the second row is padded
        dout = torch.randn(2, 4, length, d, device=device, generator=g, dtype=torch.bfloat16)
        res = {}
        for name, fn in (
            ("default", lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask)),
            ("coordformer", lambda a, b, c: core.attention(a, b, c, mask)),
        ):
            a, b, c = (t.detach().clone().requires_grad_() for t in (q, k, v))
            fn(a, b, c).backward(dout)
            res[name] = {
                "nonfinite_dq": int((~torch.isfinite(a.grad)).sum()),
                "nonfinite_dk": int((~torch.isfinite(b.grad)).sum()),
            }
        out[str(length)] = res
        print(
            f"kernel L={length}: non-finite dQ default {res['default']['nonfinite_dq']}, "
            f"coordformer.attention {res['coordformer']['nonfinite_dq']}"
        )
    return out


def _batches(data: PreparedDataset, n: int, tokens: int, seed: int):
    idx = data.split_indices("train")
    ds = MaskedBatches(
        data, idx, BatchSettings(tokens_per_batch=tokens), seed=seed, train=True, epochs=100
    )
    for i in range(min(n, len(ds))):
        yield ds[i]


def scan_part(model, data, n_batches, tokens, device, autocast_dtype) -> dict:
    """Per-layer log-sum-exp of every query row (fp32 from the layer's q, k), real vs padding
    rows."""
    caught = {}

    def hook(i):
        def fn(mod, args):
            caught[i] = args[0].detach()

        return fn

    handles = [
        layer.attn.register_forward_pre_hook(hook(i)) for i, layer in enumerate(model.layers)
    ]
    n_layers = len(model.layers)
    stats = {
        "real_min": [math.inf] * n_layers,
        "pad_min": [math.inf] * n_layers,
        "real_below": [0] * n_layers,
        "pad_below": [0] * n_layers,
    }
    n_mod64 = n_trip = 0
    try:
        for batch in _batches(data, n_batches, tokens, 0):
            pm = batch.padding_mask.to(device)
            with (
                torch.no_grad(),
                torch.autocast(
                    device_type=device.split(":")[0],
                    dtype=autocast_dtype,
                    enabled=autocast_dtype != torch.float32,
                ),
            ):
                model(batch.tokens.to(device), batch.coords.to(device), pm)
            trip = False
            for i, layer in enumerate(model.layers):
                x = caught[i]
                b, length, _ = x.shape
                a = layer.attn
                with torch.no_grad():
                    qkv = F.linear(x.float(), a.qkv.weight.float(), a.qkv.bias.float())
                q, k, _ = qkv.view(b, length, 3, a.n_heads, a.d_head).permute(2, 0, 3, 1, 4)
                logits = (q @ k.transpose(-1, -2)) / math.sqrt(a.d_head)
                logits = logits.masked_fill(~pm[:, None, None, :], -math.inf)
                lse = logits.logsumexp(-1)  # [B, H, L]
                real = pm[:, None, :].expand_as(lse)
                for key, sel in (("real", real), ("pad", ~real)):
                    v = lse[sel]
                    if v.numel():
                        stats[f"{key}_min"][i] = min(stats[f"{key}_min"][i], float(v.min()))
                        stats[f"{key}_below"][i] += int((v < LSE_LIMIT).sum())
                trip |= bool((lse < LSE_LIMIT).any())
            if pm.shape[1] % 128 == 64:
                n_mod64 += 1
                n_trip += int(trip)
    finally:
        for h in handles:
            h.remove()
    stats.update(batches=n_batches, batches_len_mod128_eq64=n_mod64, batches_that_trip_cudnn=n_trip)
    for i in range(n_layers):
        print(
            f"layer {i + 1}: min log-sum-exp real rows {stats['real_min'][i]:9.1f} "
            f"({stats['real_below'][i]} below -88.7), padding rows {stats['pad_min'][i]:9.1f} "
            f"({stats['pad_below'][i]} below)"
        )
    print(
        f"{n_mod64} of {n_batches} batches have L % 128 == 64; "
        f"{n_trip} of those also have a row below -88.7"
    )
    return stats


def steps_part(model, data, n_batches, tokens, device) -> dict:
    """Backward through the model on batches right-padded to L % 128 == 64, default kernels vs
    ours."""
    plain = lambda q, k, v, mask=None, dropout_p=0.0: F.scaled_dot_product_attention(  # noqa: E731
        q, k, v, attn_mask=mask, dropout_p=dropout_p
    )
    ours = core.attention
    res = {}
    model.train()
    for name, fn in (("default", plain), ("coordformer", ours)):
        core.attention = fn
        bad = 0
        try:
            for batch in _batches(data, n_batches, tokens, 0):
                b, length = batch.tokens.shape
                extra = (64 - length % 128) % 128 or 0
                tok = F.pad(batch.tokens, (0, extra)).to(device)
                co = F.pad(batch.coords, (0, 0, 0, 0, 0, extra), value=float("nan")).to(device)
                tg = F.pad(batch.targets, (0, extra), value=-100).to(device)
                model.zero_grad(set_to_none=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    out = model(tok, co, tok != 0)
                F.cross_entropy(
                    out.logits.float().flatten(0, 1), tg.flatten(), ignore_index=-100
                ).backward()
                norms = torch.stack(
                    [p.grad.norm() for p in model.parameters() if p.grad is not None]
                )
                bad += int(not bool(torch.isfinite(norms).all()))
        finally:
            core.attention = ours
        res[name] = {"steps": n_batches, "nonfinite_steps": bad}
        print(
            f"steps ({name} kernels): {bad} of {n_batches} backward passes "
            "with a non-finite gradient"
        )
    model.eval()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--checkpoint", help="model to scan (default: a fresh --preset/--recipe model)")
    ap.add_argument("--preset", default="paper-33m")
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint)
    else:
        model = core.CoordFormer(preset(args.preset, recipe=args.recipe))
    model = model.to(args.device).eval()
    cuda = args.device.startswith("cuda")
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "model": args.checkpoint or f"fresh {args.preset} ({args.recipe} recipe)",
    }

    def save():  # after every part: a run stopped by a deadline keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))

    if cuda:
        result["kernel"] = kernel_part(args.device)
        save()
    data = PreparedDataset(args.data)
    result["scan"] = scan_part(
        model,
        data,
        args.batches,
        args.tokens,
        args.device,
        torch.bfloat16 if cuda else torch.float32,
    )
    save()
    if cuda:
        result["steps"] = steps_part(model, data, args.batches, args.tokens, args.device)
        save()


if __name__ == "__main__":
    main()
