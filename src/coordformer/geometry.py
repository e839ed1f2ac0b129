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


def principal_frame(coords: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Each row centred on its present reference points (CA) and turned onto their principal axes,
    so that the result does not depend on the frame the coordinates came in (a PDB entry and the
    same structure superposed elsewhere give the same numbers).

    A model trained on randomly rotated inputs is not rotation-invariant, so inference in the
    input's own frame gives numbers that change with an arbitrary choice of the file's author
    (a rotation moved small-coords' per-residue log-probabilities by up to 0.9 nats). The principal
    frame is a deterministic function of the structure alone: axes by decreasing variance of the
    reference points, the first two signed so that the third moment of the points along them is
    positive, the third their cross product (a proper rotation). Rows whose points are (nearly)
    symmetric along an axis, or have fewer than three points, get a valid but not an invariant
    frame.

    Args:
        coords: [B, L, A, 3] Angstrom (NaN where missing); A = 4 (N, CA, C, O) or 1 (CA).
        present: [B, L] bool, True where the reference atom exists (and the residue is real);
            None = where it is not NaN (padding must then be NaN).
    Returns:
        [B, L, A, 3] of ``coords``' dtype, NaN preserved.
    """
    ref = (coords[..., 1, :] if coords.shape[-2] > 1 else coords[..., 0, :]).double()
    if present is None:
        present = ~torch.isnan(ref).any(-1)
    w = present.double().unsqueeze(-1)  # [B, L, 1]
    n = w.sum(1, keepdim=True).clamp(min=1.0)
    mean = (torch.nan_to_num(ref) * w).sum(1, keepdim=True) / n  # [B, 1, 3]
    x = (torch.nan_to_num(ref) - mean) * w
    axes = torch.linalg.eigh(x.transpose(1, 2) @ x / n).eigenvectors.flip(-1)  # [B, 3, 3] columns
    skew = ((x @ axes) ** 3).sum(1)  # [B, 3]
    sign = torch.where(skew[:, :2] < 0, -1.0, 1.0).to(axes.dtype)
    first, second = axes[:, :, 0] * sign[:, :1], axes[:, :, 1] * sign[:, 1:]
    rot = torch.stack([first, second, torch.linalg.cross(first, second)], dim=-1)
    out = torch.einsum("blac,bck->blak", coords.double() - mean.unsqueeze(-2), rot)
    return out.to(coords.dtype)


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix. x: [..., L, 3] -> [..., L, L] (same unit as x)."""
    # The matmul shortcut loses precision for near-identical points (self-distances ~1e-3 A).
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
