"""Explicit (untrained) weights for attention that is a Gaussian of Euclidean distance.

A one-layer model reads coordinates through a linear embedding, produces |x|^2 inside the network
with a feed-forward block, and has one attention head whose weights are written down by hand:

* head dimension n + 1: softmax attention equals the *normalised* Gaussian kernel
  exp(-|x_i - x_j|^2 / (2 sigma^2)) / sum_j (...), because q_i = [x_i / sigma^2, 1] and
  k_j = [x_j, -|x_j|^2 / (2 sigma^2)] give logits
  -|x_i - x_j|^2 / (2 sigma^2) + |x_i|^2 / (2 sigma^2), and the second term is the same for every
  key j of query i, which softmax cancels;
* head dimension n + 2: the raw logits equal -|x_i - x_j|^2 / (2 sigma^2) exactly
  (q_i = [x_i, |x_i|^2, 1], k_j = [2 x_j, -1, -|x_j|^2], scaled by 1 / (2 sigma^2)), so exp(logit)
  is the unnormalised kernel;
* head dimension n: impossible. As a bilinear form on the features f = [x, |x|^2, 1] the logits
  need the block diag(I / sigma^2, -1 / (2 sigma^2)) on (x_i, 1_i) x (x_j, |x_j|^2), which has
  rank n + 1, and q_i . k_j with d_head = n has rank at most n. ``best_fit_attention`` measures how
  far the best rank-n head stays from the kernel.

Everything here is float64 torch; the residual stream is laid out as [x (n), |x|^2, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import CONSTRUCT_SIGMA, SEED


def features(x: torch.Tensor, square: torch.Tensor | None = None) -> torch.Tensor:
    """Residual-stream features [x, |x|^2, 1]. x: [..., L, n] -> [..., L, n + 2]."""
    sq = (x * x).sum(-1, keepdim=True) if square is None else square.unsqueeze(-1)
    return torch.cat([x, sq, torch.ones_like(sq)], dim=-1)


def gaussian_kernel(x: torch.Tensor, sigma: float, normalised: bool) -> torch.Tensor:
    """exp(-|x_i - x_j|^2 / (2 sigma^2)), optionally divided by its row sum.
    x: [..., L, n] -> [..., L, L]."""
    d2 = (x.unsqueeze(-2) - x.unsqueeze(-3)).pow(2).sum(-1)
    k = torch.exp(-d2 / (2 * sigma**2))
    return k / k.sum(-1, keepdim=True) if normalised else k


@dataclass(frozen=True)
class Head:
    """Query/key projections from the residual stream [x, |x|^2, 1] (n + 2 channels) to d_head.

    w_q, w_k: [d_head, n + 2]. Logits are (W_q f_i) . (W_k f_j) / sqrt(d_head), as in
    scaled_dot_product_attention, so the constructions absorb sqrt(d_head) into W_q.
    """

    w_q: torch.Tensor
    w_k: torch.Tensor

    @property
    def d_head(self) -> int:
        return self.w_q.shape[0]

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """f: [..., L, n + 2] -> [..., L, L]."""
        q, k = f @ self.w_q.T, f @ self.w_k.T
        return q @ k.transpose(-1, -2) / math.sqrt(self.d_head)

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        return self.logits(f).softmax(-1)


def normalised_head(n: int, sigma: float) -> Head:
    """Head dimension n + 1 whose softmax attention is the normalised Gaussian kernel."""
    d = n + 1
    w_q = torch.zeros(d, n + 2, dtype=torch.float64)
    w_k = torch.zeros(d, n + 2, dtype=torch.float64)
    scale = math.sqrt(d)
    w_q[:n, :n] = torch.eye(n, dtype=torch.float64) * scale / sigma**2  # x_i / sigma^2
    w_q[n, n + 1] = scale  # the constant 1
    w_k[:n, :n] = torch.eye(n, dtype=torch.float64)  # x_j
    w_k[n, n] = -1.0 / (2 * sigma**2)  # -|x_j|^2 / (2 sigma^2)
    return Head(w_q, w_k)


def unnormalised_head(n: int, sigma: float) -> Head:
    """Head dimension n + 2 whose raw logits equal -|x_i - x_j|^2 / (2 sigma^2)."""
    d = n + 2
    scale = math.sqrt(d) / (2 * sigma**2)
    w_q = torch.eye(d, n + 2, dtype=torch.float64) * scale  # [x_i, |x_i|^2, 1]
    w_k = torch.zeros(d, n + 2, dtype=torch.float64)
    w_k[:n, :n] = 2 * torch.eye(n, dtype=torch.float64)  # 2 x_j
    w_k[n, n + 1] = -1.0  # -1
    w_k[n + 1, n] = -1.0  # -|x_j|^2
    return Head(w_q, w_k)


def best_fit_attention(
    n: int,
    d_head: int,
    sigma: float,
    n_points: int = 5,
    steps: int = 3000,
    restarts: int = 3,
    seed: int = SEED,
) -> tuple[Head, float]:
    """Best head of dimension ``d_head`` found by Adam for the normalised kernel on random clouds.

    Points are uniform in [-1, 1]^n (a fresh batch of 64 clouds per step). Returns the head and its
    mean absolute attention error on 512 held-out clouds (lower is better; the exact n + 1
    construction scores ~1e-16).
    """
    g = torch.Generator().manual_seed(seed)
    test_x = torch.rand(512, n_points, n, generator=g, dtype=torch.float64) * 2 - 1
    test_f, test_t = features(test_x), gaussian_kernel(test_x, sigma, normalised=True)
    best: tuple[Head, float] | None = None
    for r in range(restarts):
        w_q = (torch.randn(d_head, n + 2, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
        w_k = (torch.randn(d_head, n + 2, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
        opt = torch.optim.Adam([w_q, w_k], lr=0.02)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            x = torch.rand(64, n_points, n, generator=g, dtype=torch.float64) * 2 - 1
            loss = (
                (Head(w_q, w_k).attention(features(x)) - gaussian_kernel(x, sigma, True))
                .abs()
                .mean()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head = Head(w_q.detach(), w_k.detach())
        err = float((head.attention(test_f) - test_t).abs().mean())
        if best is None or err < best[1]:
            best = (head, err)
    assert best is not None
    return best


# --- producing |x|^2 inside the network -------------------------------------------------------


def square_ffn_exact(x: torch.Tensor) -> torch.Tensor:
    """A feed-forward block with a squaring activation: W2 (W1 x)^2 with W1 = I, W2 = 1^T. Exact."""
    return (x @ torch.eye(x.shape[-1], dtype=x.dtype)).pow(2).sum(-1)


@dataclass(frozen=True)
class ApproxSquareFFN:
    """|x|^2 from a standard feed-forward block: sum over axes of sum_k c_k act(s_k * t - b_k).

    Hidden units per axis: ``width // n`` units act(+t - b) and act(-t - b) on knots b spread over
    [0, radius); output weights c fitted by least squares on a dense 1D grid (the same weights serve
    every axis). ReLU gives the piecewise-linear interpolant of t^2; GELU a smooth version.
    """

    activation: str
    width: int
    n: int
    radius: float
    knots: torch.Tensor
    c: torch.Tensor
    bias: float

    @classmethod
    def fit(cls, activation: str, width: int, n: int, radius: float = 1.0) -> "ApproxSquareFFN":
        per_axis = max(width // n, 2)
        half = per_axis // 2
        knots = torch.linspace(0, radius, half + 1, dtype=torch.float64)[:-1]
        grid = torch.linspace(-radius, radius, 4001, dtype=torch.float64)
        a = torch.cat(
            [
                cls._act(activation, grid[:, None] - knots),
                cls._act(activation, -grid[:, None] - knots),
                torch.ones(len(grid), 1, dtype=torch.float64),
            ],
            dim=1,
        )
        sol = torch.linalg.lstsq(a, (grid**2)[:, None]).solution[:, 0]
        return cls(activation, 2 * half * n, n, radius, knots, sol[:-1], float(sol[-1]))

    @staticmethod
    def _act(name: str, z: torch.Tensor) -> torch.Tensor:
        if name == "relu":
            return torch.relu(z)
        if name == "gelu":
            # Scaled so the smooth corner is narrow relative to the knot spacing at these widths.
            return torch.nn.functional.gelu(z * 50) / 50
        raise ValueError(f"activation must be relu or gelu, not {name!r}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., n] -> [...] approximate |x|^2 (valid for |x_d| <= radius)."""
        t = x.unsqueeze(-1)
        h = torch.cat(
            [
                self._act(self.activation, t - self.knots),
                self._act(self.activation, -t - self.knots),
            ],
            dim=-1,
        )
        return (h @ self.c).sum(-1) + self.n * self.bias


def one_layer_attention(
    x: torch.Tensor, head: Head, square: str | ApproxSquareFFN = "exact"
) -> torch.Tensor:
    """The whole one-layer model: linear coordinate embedding -> FFN adds |x|^2 -> attention head.

    x: [..., L, n] coordinates (already divided by the embedding scale). Returns [..., L, L] softmax
    attention.
    """
    sq = square_ffn_exact(x) if square == "exact" else square(x)
    return head.attention(features(x, sq))


def construction_report(
    out_dir, sigma: float = CONSTRUCT_SIGMA, seed: int = SEED, steps: int = 1500, command: str = ""
) -> dict:
    """Measure every variant and write construction_attention.csv, construction_ffn.csv,
    construction.png and config.json to ``out_dir``.

    Attention errors are mean absolute differences from the normalised kernel on 512 random clouds
    of 5 points in [-1, 1]^n; feed-forward errors are max |error| of |x|^2 over 4,000 random points.
    config.json records the settings (``sigma`` in coordinate units, ``seed``, ``steps`` of each
    best fit), ``command`` (the command line; "" from Python) and the coordformer version.
    """
    import csv
    import json
    from pathlib import Path

    from .. import __version__
    from ..analysis.plots import construction_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    attn_rows, ffn_rows = [], []
    for n in (1, 2, 3):
        x = torch.rand(512, 5, n, generator=g, dtype=torch.float64) * 2 - 1
        target = gaussian_kernel(x, sigma, normalised=True)
        exact = float((one_layer_attention(x, normalised_head(n, sigma)) - target).abs().mean())
        attn_rows.append(
            {"n": n, "d_head": n + 1, "method": "constructed", "mean_abs_error": exact}
        )
        attn_rows.append(
            {
                "n": n,
                "d_head": n + 2,
                "method": "constructed",
                "mean_abs_error": float(
                    (one_layer_attention(x, unnormalised_head(n, sigma)) - target).abs().mean()
                ),
            }
        )
        for d in (n, n + 1):
            _, err = best_fit_attention(n, d, sigma, steps=steps, restarts=2, seed=seed)
            attn_rows.append(
                {"n": n, "d_head": d, "method": "best fit (Adam)", "mean_abs_error": err}
            )
    x = torch.rand(4000, 3, generator=g, dtype=torch.float64) * 2 - 1
    truth = (x * x).sum(-1)
    for act in ("relu", "gelu"):
        for w in (6, 12, 24, 48, 96, 192, 384):
            f = ApproxSquareFFN.fit(act, w, 3)
            ffn_rows.append(
                {
                    "activation": act,
                    "width": f.width,
                    "max_abs_error": float((f(x) - truth).abs().max()),
                }
            )
    for name, rows in (
        ("construction_attention.csv", attn_rows),
        ("construction_ffn.csv", ffn_rows),
    ):
        with open(out / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    construction_figure(attn_rows, ffn_rows, out / "construction.png")
    (out / "config.json").write_text(
        json.dumps(
            {
                "construct": {"sigma": sigma, "seed": seed, "steps": steps},
                "command": command,
                "coordformer_version": __version__,
            },
            indent=2,
        )
    )
    return {"attention": attn_rows, "ffn": ffn_rows}
