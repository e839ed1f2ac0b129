"""Model FLOPs and utilisation (MFU): what a training step of a CoordFormer costs in matrix
arithmetic, counted the way PaLM's appendix B does (Chowdhery et al. 2022): 6 FLOPs per matrix
parameter per token for forward + backward, plus the attention products.

Per token of a sequence of length L, per layer, the forward pass multiplies q k^T (L x d_model
multiply-adds) and attn v (the same): 4 L d_model FLOPs; backward doubles it, so training costs
12 L d_model per layer per token, non-causal. The token-embedding lookup costs no FLOPs; LayerNorm,
GELU and softmax are left out (they are not matrix work), as usual for MFU.
"""

from __future__ import annotations

import time

import numpy as np

from ..config import ModelConfig


def matrix_params(config: ModelConfig) -> int:
    """Weights that multiply activations per token: the encoder's q/k/v/out and feed-forward
    matrices, the coordinate embedding, the language-model connector of a conditioned model
    (lm_dim x d), and the MLM head (its d x d transform, unless the head is linear, and d x vocab
    output). A conditioning
    language model's own forward pass is not counted: it is frozen, and its size is not in the
    config."""
    d = config.d_model
    per_layer = 4 * d * d + 2 * d * config.d_ff
    coords = config.n_coord_features * d if config.use_coords else 0
    connector = config.lm_dim * d if config.condition_on else 0
    return config.n_layers * per_layer + coords + connector + head_params(config)


def head_params(config: ModelConfig) -> int:
    """The MLM head's matrix weights: its d x d transform (unless linear) and d x vocab output."""
    d = config.d_model
    return (0 if config.lm_head == "linear" else d * d) + d * config.vocab_size


def training_flops(config: ModelConfig, lengths, head_positions: int | None = None) -> float:
    """FLOPs of one forward + backward over sequences of the given lengths (residues, no padding):
    sum over sequences of 6 N n + 12 n_layers d_model n^2. ``head_positions``: the positions the
    MLM head runs on when that is fewer than every residue (the masked targets, with
    ``logits_at_targets``), which then alone pay for its matrices."""
    n = np.asarray(lengths, dtype=np.float64)
    total = float(
        6.0 * matrix_params(config) * n.sum()
        + 12.0 * config.n_layers * config.d_model * (n * n).sum()
    )
    if head_positions is not None:
        total -= 6.0 * head_params(config) * float(n.sum() - head_positions)
    return total  # a Python float: it is summed into checkpoints, which load weights-only


def flops_per_token(config: ModelConfig, length: int) -> float:
    """Training FLOPs per token for sequences of ``length`` residues."""
    return training_flops(config, [length]) / max(length, 1)


def measured_matmul_rate(
    device: str = "cpu",
    dtype=None,
    n: int = 4096,
    trials: int = 5,
    min_seconds: float | None = None,
    warmup_seconds: float | None = None,
) -> float:
    """FLOP/s of an n x n x n matrix product on ``device`` (bf16 on CUDA by default, float32 on
    CPU): the denominator of a utilisation that this machine can actually reach, measured not
    quoted. The best of ``trials`` timings of at least ``min_seconds`` each (CUDA 0.2 s, CPU
    0.05 s), after ``warmup_seconds`` of products (CUDA 0.5 s, CPU 0.05 s): a GPU still raising
    its clocks, or a single few-millisecond timing, gives a low rate and every utilisation
    divided by it too high."""
    import torch

    cuda = device.startswith("cuda")
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    if not cuda:
        n = min(n, 1024)
    min_seconds = (0.2 if cuda else 0.05) if min_seconds is None else min_seconds
    warmup_seconds = (0.5 if cuda else 0.05) if warmup_seconds is None else warmup_seconds
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def timed(repeats: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    end = time.perf_counter() + warmup_seconds
    while time.perf_counter() < end:
        timed(1)
    # products per timing: doubled until one timing lasts min_seconds (an estimate from a first,
    # cold product would be too few)
    repeats = 1
    while timed(repeats) < min_seconds:
        repeats *= 2
    best = min(timed(repeats) for _ in range(max(1, trials)))
    return 2.0 * n**3 * repeats / best
