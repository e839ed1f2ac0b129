r"""Which scaled_dot_product_attention kernel does a CoordFormer training step actually run?

    python benchmarks/sdpa_backend.py --device cuda --preset large-43m \
        --json work/perf/sdpa_cuda.json

Profiles one forward + backward (bf16 autocast on CUDA) of the coords model for a batch without
padding and one with padding, and reports the aten SDPA ops that ran: on GPU the flash kernel
(``_scaled_dot_product_flash_attention``) needs no mask, the memory-efficient one
(``_scaled_dot_product_efficient_attention``) or cuDNN takes the padding mask; the unfused math
fallback (``_scaled_dot_product_attention_math``, O(L^2) memory) must not appear. A second check
runs the same step with the math backend disabled (``torch.nn.attention.sdpa_kernel``), which raises
if no fused kernel accepts the inputs. Exit status 1 when the math fallback ran.
"""

from __future__ import annotations

import argparse
import json
import sys


def attention_ops(model, batch, device: str) -> list[str]:
    """Names of the aten SDPA ops a forward + backward of ``model`` on ``batch`` ran."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    tokens, coords, mask = batch
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast(
            device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda")
        ):
            out = model(tokens, coords, mask)
        out.logits.float().sum().backward()
    names = {e.key for e in prof.key_averages()}
    return sorted(
        n for n in names if "scaled_dot_product" in n and n != "aten::scaled_dot_product_attention"
    )


def make_batch(batch: int, length: int, padded: bool, device: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 25, (batch, length), generator=g)
    step = torch.randn(batch, length, 3, generator=g)
    ca = 3.8 * torch.cumsum(step / step.norm(dim=-1, keepdim=True), dim=1)
    coords = ca.unsqueeze(2).repeat(1, 1, 4, 1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    if padded:  # the second half of the batch is shorter, as length bucketing leaves it
        mask[batch // 2 :, length * 3 // 4 :] = False
        tokens[~mask] = 0
    return tokens.to(device), coords.to(device), mask.to(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="small-3m")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from coordformer.config import preset
    from coordformer.model import CoordFormer

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible; run with --device cpu", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = CoordFormer(preset(a.preset)).to(a.device)
    rows = []
    for padded in (False, True):
        batch = make_batch(a.batch, a.length, padded, a.device)
        ops = attention_ops(model, batch, a.device)
        try:
            with sdpa_kernel(
                [
                    SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.CUDNN_ATTENTION,
                ]
            ):
                attention_ops(model, batch, a.device)
            fused_only = "ok"
        except RuntimeError as e:
            fused_only = f"failed: {str(e).splitlines()[0][:120]}"
        math = any("math" in op for op in ops)
        rows.append(
            {"padding": padded, "ops": ops, "math_fallback": math, "math_disabled_run": fused_only}
        )
        print(
            f"padding={'yes' if padded else 'no ':<3}  kernels: {', '.join(ops) or '-'}  "
            f"math fallback: {'YES' if math else 'no'}  with math disabled: {fused_only}"
        )
    meta = {
        "device": a.device,
        "preset": a.preset,
        "length": a.length,
        "batch": a.batch,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
    }
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    return 1 if any(r["math_fallback"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
