"""Pure geometric helpers on torch tensors. Coordinates are in Angstrom unless stated.

Imports nothing from the package.
"""

from __future__ import annotations

import torch


def random_rotation(
    n: int, generator: torch.Generator | None = None, dtype=torch.float32, dim: int = 3
) -> torch.Tensor:
    """Uniformly distributed proper rotations (Haar measure on SO(dim)).

    Returns: [n, dim, dim] rotation matrices (det = +1), from ``rotation_from_gaussian`` of an
    [n, dim, dim] float64 standard normal draw.
    """
    return rotation_from_gaussian(
        torch.randn(n, dim, dim, generator=generator, dtype=torch.float64), dtype
    )


def rotation_from_gaussian(g: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[n, dim, dim] float64 standard normal matrices -> [n, dim, dim] uniform proper rotations.

    QR with the sign correction of Mezzadri (2007), which is what makes the distribution uniform (a
    plain QR is biased), then one column flipped where det = -1. Split from the draw so a batch of
    per-chain draws (each from its own generator) is factorised in one batched call.
    """
    q, r = torch.linalg.qr(g)
    d = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    d[d == 0] = 1.0
    q = q * d.unsqueeze(-2)
    det = torch.linalg.det(q)
    q[..., :, 0] *= det.sign().unsqueeze(-1)
    return q.to(dtype)


def centre(coords: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Subtract the mean of the present reference points from every atom.

    Args:
        coords: [..., L, A, 3] Angstrom (NaN allowed where missing).
        present: [..., L] bool, True where the reference atom (usually CA) exists.
    Returns:
        [..., L, A, 3] centred coordinates (NaN preserved).
    """
    ref = coords[..., 1, :] if coords.shape[-2] > 1 else coords[..., 0, :]
    w = present.to(coords.dtype).unsqueeze(-1)
    n = w.sum(dim=-2, keepdim=True).clamp(min=1.0)
    mean = (torch.nan_to_num(ref) * w).sum(dim=-2, keepdim=True) / n  # [..., 1, 3]
    return coords - mean.unsqueeze(-2)


def centre_segments(
    coords: torch.Tensor, present: torch.Tensor, segments: torch.Tensor
) -> torch.Tensor:
    """``centre`` for packed rows: each segment (chain) of a row on the mean of its own present
    reference points, so a packed chain gets the coordinates it would get alone.

    Args:
        coords: [B, L, A, 3] Angstrom (NaN allowed where missing).
        present: [B, L] bool, True where the reference atom exists.
        segments: [B, L] long, the segment of each position (0, 1, ...), -1 at padding.
    Returns:
        [B, L, A, 3] centred coordinates (NaN preserved; padding unchanged but for its mean).
    """
    ref = coords[..., 1, :] if coords.shape[-2] > 1 else coords[..., 0, :]
    # A row of L positions holds at most L segments, so sums over L slots need no count of the
    # segments (reading one would wait for the device).
    seg = segments.clamp(min=0)
    w = (present & (segments >= 0)).to(coords.dtype)  # [B, L]
    slots = seg.unsqueeze(-1).expand(-1, -1, 3)
    sums = torch.zeros_like(ref).scatter_add_(1, slots, torch.nan_to_num(ref) * w.unsqueeze(-1))
    counts = torch.zeros_like(w).scatter_add_(1, seg, w)  # [B, L]: present points per segment
    mean = sums / counts.clamp(min=1.0).unsqueeze(-1)
    per_pos = torch.gather(mean, 1, slots)  # [B, L, 3]
    return coords - per_pos.unsqueeze(-2)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix. x: [..., L, 3] -> [..., L, L] (same unit as x)."""
    # The matmul shortcut loses precision for near-identical points (self-distances ~1e-3 A).
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
