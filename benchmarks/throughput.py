"""Training-step throughput and peak memory: no coordinates vs linear coordinate embedding vs a
distance pair-bias baseline, side by side, across sequence lengths at a fixed token budget.

    python benchmarks/throughput.py --preset small-3m --lengths 128 256 512 1024 2048 \
        --tokens 8192 --device cpu --json work/throughput.json

Arms (same width and depth, same MLM head and AdamW step):
  nocoords  CoordFormer(use_coords=False)
  coords    CoordFormer (coordformer's linear CA embedding; attention stays fused SDPA)
  pairbias  the benchmark's Graphormer/Uni-Mol-style baseline: Gaussian radial-basis features of all
            pairwise CA distances [B, L, L, K] projected to an additive per-layer, per-head bias
            [B, H, L, L] on every attention logit (so SDPA must take a dense float mask).
  coords-ckpt, pairbias-ckpt (opt-in, --arms)  the same with activation checkpointing of every
            layer (coordformer's --activation-checkpointing; for the baseline the same
            torch.utils.checkpoint per layer, its bias computed once as before), so memory is
            compared with and without it on both sides.
  coords-compile (opt-in, --arms)  coords compiled in place with torch.compile (pretrain --compile);
            compilation happens in the warm-up steps, which are not timed.

Every (arm, length) is measured in its own subprocess (clean peak-memory figures: CUDA
max_memory_allocated on GPU, peak RSS growth on CPU), arms interleaved round by round so drift in
machine load hits them alike; medians over rounds. Prints ratios coords/nocoords and
coords/pairbias. Timings are noisy on shared machines: read the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

ARMS = ("nocoords", "coords", "pairbias")
CKPT_ARMS = ("coords-ckpt", "pairbias-ckpt")
EXTRA_ARMS = (*CKPT_ARMS, "coords-compile")


def _build(arm: str, preset: str, max_len: int):
    import torch
    import torch.utils.checkpoint
    from torch import nn

    from coordformer.config import preset as model_preset
    from coordformer.model.core import CoordFormer, SelfAttention

    cfg = model_preset(preset, max_len=max(max_len, 64))
    if arm == "nocoords":
        return CoordFormer(cfg.replace(use_coords=False))
    if arm in ("coords", "coords-ckpt", "coords-compile"):
        model = CoordFormer(cfg)
        model.gradient_checkpointing = arm == "coords-ckpt"
        if arm == "coords-compile":
            model.compile()
        return model
    checkpointed = arm == "pairbias-ckpt"

    class BiasedSelfAttention(SelfAttention):
        """SelfAttention whose mask argument is an additive float bias [B, H, L, L]."""

        def forward(self, x, bias, need_attention=False):
            b, l, _ = x.shape
            q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            return self.out(y.transpose(1, 2).reshape(b, l, -1)), None

    class PairBiasFormer(nn.Module):
        def __init__(self, n_rbf: int = 16, max_dist: float = 32.0):
            super().__init__()
            self.base = CoordFormer(cfg.replace(use_coords=False))
            for layer in self.base.layers:
                layer.attn = BiasedSelfAttention(cfg)
            self.register_buffer("centres", torch.linspace(0.0, max_dist, n_rbf))
            self.width = max_dist / n_rbf
            self.proj = nn.Linear(n_rbf, cfg.n_heads * cfg.n_layers)
            self.h = cfg.n_heads

        def forward(self, tokens, coords, padding_mask):
            ca = coords[:, :, 1]
            ok = ~torch.isnan(ca).any(-1) & padding_mask
            ca = torch.nan_to_num(ca)
            d = torch.cdist(ca, ca)
            rbf = torch.exp(-(((d.unsqueeze(-1) - self.centres) / self.width) ** 2))  # [B, L, L, K]
            bias = self.proj(rbf).permute(0, 3, 1, 2)  # [B, H * layers, L, L]
            bias = bias.masked_fill(~ok[:, None, None, :], float("-inf"))
            x = self.base.embed(tokens, None, padding_mask)
            for i, layer in enumerate(self.base.layers):
                b_i = bias[:, i * self.h : (i + 1) * self.h]
                if checkpointed:
                    x, _ = torch.utils.checkpoint.checkpoint(layer, x, b_i, use_reentrant=False)
                else:
                    x, _ = layer(x, b_i)
            return self.base.lm_head(self.base.final_ln(x))

    return PairBiasFormer()


def measure(
    arm: str,
    preset: str,
    length: int,
    tokens: int,
    steps: int,
    warmup: int,
    device: str,
    threads: int,
) -> dict:
    """One (arm, length) point, run in a fresh process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = max(1, tokens // length)
    model = _build(arm, preset, length).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(5, 25, (batch, length), generator=g).to(device)
    # a random-walk CA trace per chain (3.8 A steps), N/C/O offset
    steps_xyz = torch.randn(batch, length, 3, generator=g)
    ca = 3.8 * torch.cumsum(steps_xyz / steps_xyz.norm(dim=-1, keepdim=True), dim=1)
    coords = ca.unsqueeze(2).repeat(1, 1, 4, 1).to(device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    targets = torch.where(
        torch.rand(batch, length, generator=g).to(device) < 0.15, tok, torch.full_like(tok, -100)
    )
    use_amp = device.startswith("cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            # padded=False: every row is full, said without the model's device-side check (a
            # host sync per step that the pair-bias baseline does not have)
            out = model(
                tok, coords, mask, **({} if arm.startswith("pairbias") else {"padded": False})
            )
            logits = out if torch.is_tensor(out) else out.logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # CPU: peak RSS growth from here (model and inputs already built) covers activations, gradients
    # and optimizer state; the allocator keeps warm-up memory, so the baseline must precede it.
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(warmup):
        step()
    if use_amp:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if use_amp:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated()
        if use_amp
        else max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0, 0) * 1024
    )
    flops = None
    if arm != "pairbias" and not arm.startswith("pairbias"):
        from coordformer.model.flops import training_flops

        core_model = getattr(model, "_orig_mod", model)
        # checkpointing recomputes the forward: that is extra work, not model FLOPs
        flops = training_flops(core_model.config, [length] * batch) * steps / dt
    return {
        "arm": arm,
        "length": length,
        "batch": batch,
        "tokens_per_s": batch * length * steps / dt,
        "model_flops_per_s": flops,
        "peak_mb": peak / 2**20,
        "peak_kind": "cuda max_memory_allocated"
        if use_amp
        else "CPU peak RSS growth during warm-up + timed steps",
    }


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="small-3m")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    ap.add_argument(
        "--tokens", type=int, default=8192, help="tokens per batch (batch = tokens // length)"
    )
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS + EXTRA_ARMS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--_one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._one:  # child process: one measurement, printed as JSON
        arm, length = a._one.split(":")
        print(
            json.dumps(
                measure(
                    arm, a.preset, int(length), a.tokens, a.steps, a.warmup, a.device, a.threads
                )
            )
        )
        return 0
    results: dict = {}
    for r in range(a.rounds):
        for length in a.lengths:
            for arm in a.arms:
                cmd = [
                    sys.executable,
                    __file__,
                    "--_one",
                    f"{arm}:{length}",
                    "--preset",
                    a.preset,
                    "--tokens",
                    str(a.tokens),
                    "--steps",
                    str(a.steps),
                    "--warmup",
                    str(a.warmup),
                    "--device",
                    a.device,
                    "--threads",
                    str(a.threads),
                ]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    last = (p.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"round {r + 1} {arm} L={length}: failed ({last})", file=sys.stderr)
                    results.setdefault((arm, length), []).append(None)
                    continue
                m = json.loads(p.stdout.strip().splitlines()[-1])
                results.setdefault((arm, length), []).append(m)
                if a.json:  # what a cut-short run (a lease's timeout) measured, kept as it goes
                    with open(a.json, "w") as fh:
                        json.dump(
                            {
                                "complete": False,
                                "args": vars(a),
                                "measurements": [
                                    {"arm": k[0], "length": k[1], "round": i + 1, **x}
                                    for k, xs in results.items()
                                    for i, x in enumerate(xs)
                                    if x
                                ],
                            },
                            fh,
                            indent=2,
                        )
                print(
                    f"round {r + 1} {arm:>13} L={length:>5}: {m['tokens_per_s']:9.0f} tok/s, "
                    f"peak {m['peak_mb']:8.1f} MB",
                    flush=True,
                )

    def med(arm, length, key):
        xs = [m[key] for m in results.get((arm, length), []) if m]
        return statistics.median(xs) if xs else math.nan

    from coordformer.model.flops import measured_matmul_rate

    peak = measured_matmul_rate(a.device)
    print(
        f"\nmeasured matrix-product rate on {a.device}: {peak / 1e12:.3f} TFLOP/s "
        f"({'bf16' if a.device.startswith('cuda') else 'float32'}): the MFU denominator"
    )
    rows = []
    print(
        f"\n{'L':>5} "
        + " ".join(f"{arm + ' tok/s':>15} {arm + ' MB':>12}" for arm in a.arms)
        + "   coords/nocoords tok/s   coords/pairbias tok/s   pairbias/coords memory"
    )
    for length in a.lengths:
        row = {"length": length}
        for arm in a.arms:
            row[f"{arm}_tokens_per_s"] = med(arm, length, "tokens_per_s")
            row[f"{arm}_peak_mb"] = med(arm, length, "peak_mb")
        for arm in a.arms:
            if not arm.startswith("pairbias"):
                row[f"{arm}_mfu"] = med(arm, length, "model_flops_per_s") / peak
        row["coords_over_nocoords"] = row.get("coords_tokens_per_s", math.nan) / row.get(
            "nocoords_tokens_per_s", math.nan
        )
        row["coords_over_pairbias"] = row.get("coords_tokens_per_s", math.nan) / row.get(
            "pairbias_tokens_per_s", math.nan
        )
        row["pairbias_over_coords_memory"] = row.get("pairbias_peak_mb", math.nan) / max(
            row.get("coords_peak_mb", math.nan), 1e-9
        )
        if (
            "coords-ckpt" in a.arms
        ):  # each side with checkpointing, and the baseline as published (without)
            ck = max(row.get("coords-ckpt_peak_mb", math.nan), 1e-9)
            row["pairbias_ckpt_over_coords_ckpt_memory"] = (
                row.get("pairbias-ckpt_peak_mb", math.nan) / ck
            )
            row["pairbias_over_coords_ckpt_memory"] = row.get("pairbias_peak_mb", math.nan) / ck
            row["coords_ckpt_over_coords_tok_s"] = row.get(
                "coords-ckpt_tokens_per_s", math.nan
            ) / row.get("coords_tokens_per_s", math.nan)
        if "coords-compile" in a.arms:
            row["coords_compile_over_coords_tok_s"] = row.get(
                "coords-compile_tokens_per_s", math.nan
            ) / row.get("coords_tokens_per_s", math.nan)
        rows.append(row)
        print(
            f"{length:>5} "
            + " ".join(
                f"{row[f'{arm}_tokens_per_s']:>15.0f} {row[f'{arm}_peak_mb']:>12.1f}"
                for arm in a.arms
            )
            + f"   {row['coords_over_nocoords']:>21.3f}   {row['coords_over_pairbias']:>21.3f}"
            f"   {row['pairbias_over_coords_memory']:>22.2f}"
        )
    print(
        "\nmodel FLOPs utilisation (PaLM-style count, coordformer.model.flops) "
        "against the measured rate:"
    )
    for row in rows:
        print(
            f"{row['length']:>5} "
            + "  ".join(
                f"{arm} {100 * row[f'{arm}_mfu']:.1f}%" for arm in a.arms if f"{arm}_mfu" in row
            )
        )
    if "coords-ckpt" in a.arms:
        print(
            "\nwith activation checkpointing:   pairbias-ckpt/coords-ckpt memory   "
            "pairbias/coords-ckpt memory   coords-ckpt/coords tok/s"
        )
        for row in rows:
            print(
                f"{row['length']:>5} {row['pairbias_ckpt_over_coords_ckpt_memory']:>45.2f} "
                f"{row['pairbias_over_coords_ckpt_memory']:>29.2f} "
                f"{row['coords_ckpt_over_coords_tok_s']:>26.3f}"
            )
    if "coords-compile" in a.arms:
        print("\ntorch.compile:   coords-compile/coords tok/s")
        for row in rows:
            print(f"{row['length']:>5} {row['coords_compile_over_coords_tok_s']:>32.3f}")
    if a.json:
        import platform

        import torch

        meta = {
            "preset": a.preset,
            "tokens": a.tokens,
            "matmul_flops_per_s": peak,
            "steps": a.steps,
            "rounds": a.rounds,
            "device": a.device,
            "torch": torch.__version__,
            "machine": platform.platform(),
            "date": time.strftime("%Y-%m-%d"),
            "gpu": torch.cuda.get_device_name(0)
            if a.device.startswith("cuda") and torch.cuda.is_available()
            else None,
        }
        with open(a.json, "w") as fh:
            json.dump({"complete": True, "meta": meta, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
