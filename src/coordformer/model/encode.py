"""Hidden states and mean-pooled embeddings of a :class:`~coordformer.batch.Batch`: the one forward
pass that embedding, fine-tuning and analysis share (``model`` must not import ``data``, so this
lives here and takes a batch whatever built it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from ..batch import Batch
from ..geometry import canonical_frame

if TYPE_CHECKING:
    from .core import CoordFormer


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a module without parameters)."""
    weight = next(iter(model.parameters()), None)
    return torch.device("cpu") if weight is None else weight.device


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def auto_device() -> str:
    """The device "auto" means everywhere: CUDA, then Apple MPS, then the CPU."""
    return "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def masked_mean(hidden: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """[B, D]: the mean of ``hidden`` [B, L, D] over the real residues of ``padding_mask`` [B, L]
    (True = residue); 0 for a row without any."""
    m = padding_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def in_canonical_frame(batch: Batch) -> Batch:
    """``batch`` with each row's coordinates in the canonical frame of its present CAs
    (:func:`coordformer.geometry.canonical_frame`): embeddings and scores then do not depend on the
    frame the structure file came in. Unchanged without coordinates."""
    if batch.coords is None:
        return batch
    present = ~torch.isnan(batch.coords[..., 1 if batch.coords.shape[-2] > 1 else 0, :]).any(-1)
    return batch.replace(coords=canonical_frame(batch.coords, present & batch.padding_mask))


def encode(
    model: CoordFormer, batch: Batch, layer: int | None = None, use_coords: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` (a CoordFormer) on ``batch`` (already on the model's device).

    Returns (hidden [B, L, D], pooled [B, D]): ``hidden`` the final states after the last LayerNorm
    (``layer`` None) or the residual stream after layer ``layer`` (0 = the embeddings); ``pooled``
    their mean over each row's real residues. ``use_coords`` False feeds no coordinates (every
    residue flagged missing).
    """
    out = model(**batch.inputs(use_coords), repr_layers=() if layer is None else (layer,))
    hidden = out.hidden if layer is None else out.representations[layer]
    return hidden, masked_mean(hidden, batch.padding_mask)
