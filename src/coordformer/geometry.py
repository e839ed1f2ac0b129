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


def canonical_frame(coords: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Each row centred on its present reference points (CA) and turned into a frame fixed by the
    structure and its residue order, so that the result does not depend on the frame the
    coordinates came in (a PDB entry and the same structure superposed elsewhere give the same
    numbers).

    A model trained on randomly rotated inputs is not rotation-invariant, so inference in the
    input's own frame gives numbers that change with an arbitrary choice of the file's author
    (another frame moved small-coords' per-residue log-probabilities by 0.13 nats on average, up to
    1.9: benchmarks/score_frame.py). The axes come
    from two moments of the centred points x_i over their row positions t_i (present points only):
    the first along u1 = sum (t_i - mean t) x_i (the N-to-C direction), the second along
    u2 = sum (s_i - mean s) x_i with s_i = (t_i - mean t)^2, made orthogonal to the first, the third
    their cross product (a proper rotation). Unlike principal axes, these need no sign rule and
    no distinct eigenvalues: a symmetric homodimer (its chains one after another in the row) gets an
    invariant frame too. A row whose two moments vanish or are parallel (fewer than three points)
    keeps its own orientation, centred.

    The frame is computed on the CPU in float64 (MPS has neither) and applied where ``coords`` are.

    Args:
        coords: [B, L, A, 3] Angstrom (NaN where missing); A = 4 (N, CA, C, O) or 1 (CA).
        present: [B, L] bool, True where the reference atom exists (and the residue is real);
            None = where it is not NaN (padding must then be NaN).
    Returns:
        [B, L, A, 3] of ``coords``' dtype and device, NaN preserved.
    """
    ref = (coords[..., 1, :] if coords.shape[-2] > 1 else coords[..., 0, :]).detach()
    ref = ref.to("cpu", torch.float64)
    if present is None:
        present = ~torch.isnan(ref).any(-1)
    w = present.detach().to("cpu", torch.float64)  # [B, L]
    n = w.sum(1, keepdim=True).clamp(min=1.0)  # [B, 1]
    mean = (torch.nan_to_num(ref) * w.unsqueeze(-1)).sum(1) / n  # [B, 3]
    x = (torch.nan_to_num(ref) - mean.unsqueeze(1)) * w.unsqueeze(-1)  # [B, L, 3], 0 if absent
    t = torch.arange(ref.shape[1], dtype=torch.float64)
    t = (t - (t * w).sum(1, keepdim=True) / n) * w  # [B, L] centred positions
    sq = t * t
    sq = (sq - (sq * w).sum(1, keepdim=True) / n) * w
    u1 = (t.unsqueeze(-1) * x).sum(1)  # [B, 3]
    u2 = (sq.unsqueeze(-1) * x).sum(1)
    e1 = u1 / u1.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    u2 = u2 - (u2 * e1).sum(-1, keepdim=True) * e1
    e2 = u2 / u2.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    rot = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-1)  # [B, 3, 3] columns
    # degenerate rows (moments of ~0 Angstrom * residues, or parallel): keep their orientation
    scale = (x.norm(dim=-1) * t.abs()).sum(1).clamp(min=1e-12)  # [B]
    bad = (u1.norm(dim=-1) < 1e-6 * scale) | (u2.norm(dim=-1) < 1e-6 * scale) | (n[:, 0] < 3)
    rot[bad] = torch.eye(3, dtype=torch.float64)
    dev, dt = coords.device, coords.dtype
    return torch.einsum("blac,bck->blak", coords - mean.to(dev, dt)[:, None, None], rot.to(dev, dt))


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix. x: [..., L, 3] -> [..., L, L] (same unit as x)."""
    # The matmul shortcut loses precision for near-identical points (self-distances ~1e-3 A).
    return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
