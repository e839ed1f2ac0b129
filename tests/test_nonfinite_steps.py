"""Non-finite training steps (issue 16): the model's masked attention never runs cuDNN's fused
kernel, whose backward returns NaN dQ on H100/H200 when a mask is given, L % 128 == 64 and a query
row's log-sum-exp is below -88.7 (pytorch/pytorch#196678). That caused the Gaussian-recipe
divergence and the skipped steps at paper size; docs/RESULTS.md has the replay."""

import math

import pytest
import torch
import torch.nn.functional as F

from coordformer.config import preset
from coordformer.model import core
from coordformer.model.core import CoordFormer, attention


def _record_sdpa(monkeypatch):
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((attn_mask is not None, torch.backends.cuda.cudnn_sdp_enabled()))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def test_masked_attention_excludes_the_cudnn_kernel_and_unmasked_keeps_the_default(monkeypatch):
    model = CoordFormer(preset("tiny-0.1m", recipe="fast")).train()
    seen = _record_sdpa(monkeypatch)
    tokens = torch.randint(5, 25, (2, 64))
    coords = torch.randn(2, 64, 4, 3) * 10
    model(tokens, coords)  # no padding: no mask
    tokens[1, 40:] = 0  # padding: a mask
    model(tokens, coords).logits.sum().backward()
    masked = [cudnn for has_mask, cudnn in seen if has_mask]
    unmasked = [cudnn for has_mask, cudnn in seen if not has_mask]
    assert len(masked) == len(unmasked) == len(model.layers)
    assert not any(masked), "cuDNN attention was allowed for a masked call"
    assert (
        all(unmasked) and torch.backends.cuda.cudnn_sdp_enabled()
    )  # default restored after each call


def test_attention_matches_the_explicit_softmax_with_padding():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 70, 16, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 70, dtype=torch.bool)
    mask[1, ..., 50:] = False
    ref = ((q @ k.transpose(-1, -2)) / 4.0).masked_fill(~mask, -math.inf).softmax(-1) @ v
    torch.testing.assert_close(attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        attention(q, k, v), (q @ k.transpose(-1, -2) / 4.0).softmax(-1) @ v, rtol=1e-5, atol=1e-5
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the cuDNN kernel exists on CUDA only")
def test_low_logsumexp_rows_at_length_64_mod_128_give_finite_gradients_on_cuda():
    d, length = 64, 704
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, length, d, device="cuda", generator=g, dtype=torch.bfloat16) * 0.1
    k = torch.randn(2, 4, length, d, device="cuda", generator=g, dtype=torch.bfloat16) * 0.1
    v = torch.randn(2, 4, length, d, device="cuda", generator=g, dtype=torch.bfloat16)
    q[..., 0], k[..., 0] = 1.0, -120 * math.sqrt(d)  # every logit ~ -120
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    mask = torch.ones(2, 1, 1, length, dtype=torch.bool, device="cuda")
    mask[1, ..., 650:] = False
    attention(q, k, v, mask).backward(torch.randn_like(q))
    assert all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))


def test_replay_script_scans_a_fresh_model_on_cpu(tmp_path, prepared):
    import json
    import subprocess
    import sys

    out = tmp_path / "r.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/nonfinite_replay.py",
            "--data",
            str(prepared.path),
            "--preset",
            "tiny-0.1m",
            "--batches",
            "3",
            "--tokens",
            "1024",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=core.__file__.rsplit("/src/", 1)[0],
    )
    scan = json.loads(out.read_text())["scan"]
    assert scan["batches"] == 3 and len(scan["real_min"]) == 2
    # a query row with coordinates sees itself: its log-sum-exp is never far below zero at init
    assert min(scan["real_min"]) > -88.7
